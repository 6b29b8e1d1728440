"""The driver's loop, with no Spark in it: shards, batches and the keys every random draw comes from
(``sharding``), the sums every trainer adds (``sums``), and synchronous SGD from summed gradients and
checkpoints (``training``). The trainers that drive it (``spark``, ``async_sgd``, ``local``) live above."""
