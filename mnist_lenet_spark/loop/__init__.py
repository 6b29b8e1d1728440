"""The driver's loop, with no Spark in it: shards, batches and the keys every random draw comes from
(``sharding``), synchronous SGD from summed gradients and checkpoints (``training``), and the single-process
trainer that runs the same loop and task functions in one process (``local``)."""
