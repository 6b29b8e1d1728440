"""Label rows with a saved model and write them as Parquet; --evaluate reports accuracy and the
confusion matrix.

--output holds ``label`` (the input's labels, when it has them), ``prediction`` and ``probability``.

    python jobs/predict.py --model out/lenet-model --input data/mnist --output out/predictions.parquet --evaluate
    mnist-lenet-predict ...      (the installed package's command; same flags)
"""
from __future__ import annotations

import logging
import os
import sys

from mnist_lenet_spark import data, readers
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import task_errors
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.executor.rows import PIXEL_RANGES
from mnist_lenet_spark.jobs.cli import Parser


def parse_args(argv=None):
    p = Parser(prog="predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model directory written by --save-model or model.save")
    p.add_argument("--input", required=True, help="rows to label (idx: a folder; csv, parquet: files)")
    p.add_argument("--format", choices=readers.FORMATS, default="idx")
    p.add_argument("--split", choices=["train", "test"], default="test", help="which IDX files of the folder")
    p.add_argument("--features-col", default=None, help="with --format parquet: the images' column (default features)")
    p.add_argument("--label-col", default=None, help="with --format parquet: the labels' column (default label)")
    p.add_argument("--pixel-range", choices=PIXEL_RANGES, default=None,
                   help="with --format parquet: numeric features hold whole numbers 0..255 or values 0..1 "
                        "(multiples of 1/255; never rounded); default: the model's (what it was trained on)")
    p.add_argument("--output", default=None, help="write label (when the input has one), prediction and probability "
                                                  "here as Parquet")
    p.add_argument("--evaluate", action="store_true", help="print accuracy and the confusion matrix (needs the labels)")
    p.add_argument("--master", default=None, help="Spark master for plain python runs (default local[*])")
    args = p.parse_args(argv)
    if not args.output and not args.evaluate:
        p.error("nothing to do: give --output, --evaluate or both")
    for flag in ("features_col", "label_col", "pixel_range"):
        if getattr(args, flag) and args.format != "parquet":
            p.error(f"--{flag.replace('_', '-')} needs --format parquet (IDX and CSV have fixed columns of bytes "
                    f"0..255)")
    return args


def labelled(rows, model, label_col: str):
    """(``model``'s predictions of ``rows``, whether ``rows`` has the ``label_col`` column): the label as
    ``label``, ``prediction`` and ``probability``, nothing else."""
    from pyspark.sql import functions as F
    has_label = label_col in rows.columns
    predictions = model.transform(rows)
    columns = [F.col(label_col).alias("label")] if has_label else []
    columns += [F.col(model.getPredictionCol()).alias("prediction"),
                F.col(model.getProbabilityCol()).alias("probability")]
    return predictions.select(*columns), has_label


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    spark = msp.session(args.master or (None if "PYSPARK_GATEWAY_PORT" in os.environ else "local[*]"))
    from pyspark.errors import PythonException
    try:
        from mnist_lenet_spark.ml import NetworkClassificationModel
        model = NetworkClassificationModel.load(args.model)  # DataError naming the folder if it holds no model
        model.setFeaturesCol(args.features_col or "features")
        if args.pixel_range:
            model.setPixelRange(args.pixel_range)
        rows = readers.read_mnist(spark, args.input, args.format, args.split)
        label_col = args.label_col or "label"
        predictions, has_label = labelled(rows, model, label_col)
        if args.evaluate and not has_label:
            raise data.DataError(f"--evaluate needs labels: {args.input} has no column '{label_col}' (--label-col); "
                                 f"it has {', '.join(rows.columns)}")
        if args.output:
            predictions.write.mode("overwrite").parquet(args.output)
            print(f"wrote {args.output}")
        if args.evaluate:
            print(f"accuracy: {readers.accuracy(predictions):.4f}")
            matrix = readers.confusion_matrix(predictions, classes=model.numClasses)  # (K, K)
            width = max(6, len(str(matrix.max())) + 2)
            print("confusion matrix (rows: true label, columns: predicted class)")
            print("     " + "".join(f"{c:{width}d}" for c in range(len(matrix))))
            for label, counts in enumerate(matrix):
                print(f"{label:4d} " + "".join(f"{n:{width}d}" for n in counts))
    except (data.DataError, ConfigError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    except PythonException as e:  # a row the model cannot read (rows.predict_pixels), found by an executor
        found = task_errors.task_error(e)
        if not found.startswith("ValueError: features "):
            raise
        print(f"predict: error: column '{args.features_col or 'features'}' {found[len('ValueError: features '):]} "
              f"(--pixel-range)", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
