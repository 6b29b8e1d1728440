"""The Spark side on the driver: backup-worker steps (``backup``) and the step signal that closes them
(``step_signal``, both ends), staging a DataFrame as shards on the executors (``staging``), and the checks
that paths and stores are shared where they must be (``paths``) and that the executors can import the package
(``probe``)."""
