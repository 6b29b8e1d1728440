"""The driver's Spark side: backup-worker steps (``backup``), the driver's servers of the step signal
(``step_signal``) and of the asynchronous mode's parameters (``async_service``; their task-side clients are in
``wire``), staging a DataFrame as shards on the executors (``staging``), the checks that paths and stores are shared
where they must be (``paths``) and that the executors can import the package (``probe``), and the task errors Spark
reports (``task_errors``)."""
