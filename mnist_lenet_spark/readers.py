"""MNIST as Spark DataFrames ``(label long, features binary)`` from IDX files, SystemML's CSV or Parquet, on any
Hadoop path. The files are read by executors; a bad file is a DataError naming it, raised on the driver."""
from __future__ import annotations

import numpy as np

from mnist_lenet_spark import data
from mnist_lenet_spark.cluster import paths
from mnist_lenet_spark.data import DataError

FORMATS = ("idx", "csv", "parquet")
SCHEMA = "label long, features binary"
_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}


hadoop_files = paths.hadoop_files  # the files a Hadoop glob matches, listed by Spark's driver


def _one_file(spark, folder: str, name: str) -> str:
    matches = hadoop_files(spark, f"{folder.rstrip('/')}/{name}{{,.gz}}")
    if len(matches) != 1:
        raise DataError(f"{folder}: expected one file {name} or {name}.gz, found {len(matches) or 'none'}")
    return matches[0]


def _parse_idx_pair(images_path: str, labels_path: str, files) -> list:
    """Executor side: [(label, 784 pixel bytes)] of one images file and its labels file, or [DataError text]."""
    content = dict(files)
    try:
        name_i, name_l = images_path.rsplit("/", 1)[-1], labels_path.rsplit("/", 1)[-1]
        images = data.parse_idx_images(data.gunzip(content[images_path], name_i), name_i)
        labels = data.parse_idx_labels(data.gunzip(content[labels_path], name_l), name_l)
        if len(images) != len(labels):
            raise DataError(f"{name_i} has {len(images)} images but {name_l} has {len(labels)} labels")
    except DataError as e:
        return [str(e)]
    return [(int(label), image.tobytes()) for image, label in zip(images, labels)]


def read_mnist(spark, path: str, format: str = "idx", split: str = "train"):
    """MNIST rows in file order as a DataFrame ``(label long, features binary)`` (784 uint8 pixels).

    ``format="idx"``: ``path`` is a folder with ``{train|t10k}-{images-idx3|labels-idx1}-ubyte`` (gzip or
    not; ``split`` picks train or test); ``"csv"``: SystemML's CSV (``label,p1..p784``, no header) at
    ``path``; ``"parquet"``: a Parquet dataset with these two columns.
    """
    if format not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    paths.check_readable(spark, path, f"{split} data")
    if format == "parquet":
        return spark.read.parquet(path)
    if format == "csv":
        return _read_csv(spark, path)
    if split not in _PREFIX:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    prefix = _PREFIX[split]
    images_path = _one_file(spark, path, f"{prefix}-images-idx3-ubyte")
    labels_path = _one_file(spark, path, f"{prefix}-labels-idx1-ubyte")
    # Both files go to one task, which parses them and yields the rows in file order; a first job only
    # checks them, so a bad file is one clear error here rather than a failed task later.
    pairs = spark.sparkContext.binaryFiles(f"{images_path},{labels_path}").coalesce(1)
    rows = pairs.mapPartitions(lambda files: _parse_idx_pair(images_path, labels_path, files))
    errors = rows.mapPartitions(lambda it: [r for r in it if isinstance(r, str)]).collect()
    if errors:
        raise DataError(errors[0])
    return spark.createDataFrame(rows, SCHEMA)


def _pixels_to_bytes(values):
    return np.asarray(values, np.uint8).tobytes()


def _read_csv(spark, path: str):
    from pyspark.sql import functions as F
    pixels = [f"p{i}" for i in range(1, 785)]
    schema = ", ".join(["label long"] + [f"{p} long" for p in pixels])
    table = spark.read.csv(path, schema=schema, header=False, mode="PERMISSIVE")
    bad = (F.col("label").isNull() | ~F.col("label").between(0, 9)
           | F.greatest(*[F.col(p).isNull() | ~F.col(p).between(0, 255) for p in pixels]))
    example = table.filter(bad).limit(1).collect()
    if example:
        row = example[0]
        raise DataError(f"{path}: a line is not label (0..9) followed by 784 pixels (0..255): "
                        f"label={row['label']}, p1..p5={[row[p] for p in pixels[:5]]}")
    to_bytes = F.udf(_pixels_to_bytes, "binary")
    return table.select("label", to_bytes(F.array(*pixels)).alias("features"))


def with_validation_flag(spark, df, first: int, column: str = "is_validation"):
    """``df`` with a boolean ``column`` that marks its first ``first`` rows (SystemML's validation split)."""
    from pyspark.sql.types import BooleanType, StructField, StructType
    schema = StructType(df.schema.fields + [StructField(column, BooleanType(), False)])
    return spark.createDataFrame(df.rdd.zipWithIndex().map(lambda pair: (*pair[0], pair[1] < first)), schema)


def with_validation_fraction(spark, df, fraction: float, seed: int = 0, column: str = "is_validation"):
    """``df`` with a boolean ``column`` that marks about ``fraction`` of its rows, spread evenly over them: row i
    is marked when ``(i * golden ratio + a seed's offset) mod 1 < fraction`` (a low-discrepancy sequence), so the
    same rows for the same seed whatever the partitioning."""
    from pyspark.sql.types import BooleanType, StructField, StructType
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    offset = (seed * 0.7548776662466927) % 1.0  # the plastic number's inverse: unrelated to the golden ratio
    golden = 0.6180339887498949
    schema = StructType(df.schema.fields + [StructField(column, BooleanType(), False)])
    return spark.createDataFrame(
        df.rdd.zipWithIndex().map(lambda pair: (*pair[0], (pair[1] * golden + offset) % 1.0 < fraction)), schema)


def accuracy(predictions, label_col: str = "label", prediction_col: str = "prediction") -> float:
    """Fraction of rows whose prediction equals the label, counted by Spark."""
    from pyspark.sql import functions as F
    return float(predictions.select(F.avg((F.col(label_col) == F.col(prediction_col)).cast("double"))).first()[0])


def confusion_matrix(predictions, label_col: str = "label", prediction_col: str = "prediction",
                     classes: int = 10) -> np.ndarray:
    """counts[true label, predicted class] (K, K), counted by Spark; K is ``classes``, or more when a label in
    the data is larger (it gets its row)."""
    cells = [(int(row[0]), int(row[1]), row["count"])
             for row in predictions.groupBy(label_col, prediction_col).count().collect()]
    size = max([classes] + [max(label, predicted) + 1 for label, predicted, _ in cells])
    counts = np.zeros((size, size), np.int64)
    for label, predicted, n in cells:
        counts[label, predicted] = n
    return counts
