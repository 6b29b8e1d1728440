"""What runs inside Spark's Python workers (and, for the single-process trainer, in its own process): the
training tasks (``tasks``), predictions (``inference``), DataFrame rows to arrays (``rows``), shard files
(``shards``), emulated compute (``emulation``) and injected stragglers (``straggler``). No pyspark import here."""
