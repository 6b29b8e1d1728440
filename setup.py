from pathlib import Path

from setuptools import find_packages, setup

# what the executors import (the packed environment of `make pack`); the driver needs the rest too
EXECUTOR_REQUIRES = [line.strip() for line in (Path(__file__).parent / "requirements-executor.txt").read_text()
                     .splitlines() if line.strip() and not line.startswith("#")]

setup(
    name="mnist_lenet_spark",
    version="0.1.0",
    description="Distributed synchronous SGD with backup workers on Apache Spark: LeNet on MNIST in NumPy",
    packages=find_packages(include=["mnist_lenet_spark", "mnist_lenet_spark.*"]),
    python_requires=">=3.10",
    install_requires=EXECUTOR_REQUIRES + ["pyspark>=3.5", "findspark", "tqdm", "matplotlib"],
    extras_require={
        # moto's S3 server stands for a cluster's object store in the staging-URL tests; PyTorch (its CPU build) is
        # the reference the ResNet is tested against, and the peer the benchmarks measure against; Keras (on the
        # PyTorch backend) writes the model JSON the Keras import is tested with
        "dev": ["pytest>=7", "pytest-timeout", "nbformat", "nbclient", "ipykernel", "venv-pack", "moto[server]",
                "torch==2.13.0", "keras>=3,<4"],
        "bench": [],
    },
)
