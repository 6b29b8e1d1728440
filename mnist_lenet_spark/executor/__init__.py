"""What runs inside Spark's Python workers (and, for the single-process trainer, in its own process): the
training tasks (``tasks``; the asynchronous mode's long task: ``async_task``), predictions (``inference``), DataFrame
rows and arrays to pixels (``rows``), images to features (``images``), shard files (``shards``), emulated compute
(``emulation``) and injected stragglers (``straggler``). No pyspark import here."""
