"""Distributed synchronous SGD with backup workers on Apache Spark, for LeNet on MNIST, in NumPy."""
__version__ = "0.2.0"
