"""NumPy layers, one module per layer: its ``forward -> (out, cache)`` and ``backward``, and its layer class
(``nn.layer``) for networks (``nn.network``). No module under ``nn/`` imports pyspark (or anything outside ``nn/`` but
NumPy and SciPy): the same code runs in a notebook, in the single-process trainer and inside Spark's Python workers."""
