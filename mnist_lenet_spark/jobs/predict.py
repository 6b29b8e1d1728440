"""Label rows with a saved model and write them as Parquet; --evaluate reports accuracy and the
confusion matrix.

    python jobs/predict.py --model out/lenet-model --input data/mnist --output out/predictions.parquet --evaluate
    mnist-lenet-predict ...      (the installed package's command; same flags)
"""
from __future__ import annotations

import logging
import os
import sys

from mnist_lenet_spark import data, readers
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.jobs.cli import Parser


def parse_args(argv=None):
    p = Parser(prog="predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model directory written by --save-model or model.save")
    p.add_argument("--input", required=True, help="rows to label (idx: a folder; csv, parquet: files)")
    p.add_argument("--format", choices=readers.FORMATS, default="idx")
    p.add_argument("--split", choices=["train", "test"], default="test", help="which IDX files of the folder")
    p.add_argument("--output", default=None, help="write label, prediction and probability here as Parquet")
    p.add_argument("--evaluate", action="store_true", help="print accuracy and the confusion matrix")
    p.add_argument("--master", default=None, help="Spark master for plain python runs (default local[*])")
    args = p.parse_args(argv)
    if not args.output and not args.evaluate:
        p.error("nothing to do: give --output, --evaluate or both")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    spark = msp.session(args.master or (None if "PYSPARK_GATEWAY_PORT" in os.environ else "local[*]"))
    try:
        from mnist_lenet_spark.ml import NetworkClassificationModel
        model = NetworkClassificationModel.load(args.model)  # DataError naming the folder if it holds no model
        predictions = model.transform(readers.read_mnist(spark, args.input, args.format, args.split))
        if args.output:
            predictions.drop("features", "rawPrediction").write.mode("overwrite").parquet(args.output)
            print(f"wrote {args.output}")
        if args.evaluate:
            print(f"accuracy: {readers.accuracy(predictions):.4f}")
            matrix = readers.confusion_matrix(predictions, classes=model.getNumClasses())  # (K, K)
            width = max(6, len(str(matrix.max())) + 2)
            print("confusion matrix (rows: true label, columns: predicted class)")
            print("     " + "".join(f"{c:{width}d}" for c in range(len(matrix))))
            for label, counts in enumerate(matrix):
                print(f"{label:4d} " + "".join(f"{n:{width}d}" for n in counts))
    except data.DataError as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
