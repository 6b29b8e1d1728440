from setuptools import find_packages, setup

setup(
    name="mnist_lenet_spark",
    version="0.1.0",
    description="Distributed synchronous SGD with backup workers on Apache Spark: LeNet on MNIST in NumPy",
    packages=find_packages(include=["mnist_lenet_spark", "mnist_lenet_spark.*"]),
    python_requires=">=3.10",
    install_requires=["pyspark>=3.5", "numpy>=1.24", "scipy", "findspark", "threadpoolctl", "tqdm", "matplotlib",
                      "pandas>=2,<3", "pyarrow"],
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout", "nbformat", "nbclient", "ipykernel"],
        "bench": ["torch==2.13.0"],
    },
)
