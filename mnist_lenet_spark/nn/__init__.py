"""NumPy layers, one module per layer, each with ``forward -> (out, cache)`` and ``backward``.

No module under ``nn/`` imports pyspark: the same code runs in a notebook, in the
single-process trainer and inside Spark's Python workers.
"""
