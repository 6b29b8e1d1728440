"""spark-submit entry point; the job is mnist_lenet_spark/jobs/train_lenet.py (also the installed command)."""
import sys
from mnist_lenet_spark.jobs.train_lenet import *  # noqa: F401,F403 (its parse_args, main, ... for tests and callers)
from mnist_lenet_spark.jobs.train_lenet import main
if __name__ == "__main__":
    sys.exit(main())
