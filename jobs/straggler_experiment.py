"""spark-submit entry point; the job is mnist_lenet_spark/jobs/straggler_experiment.py (also the installed command)."""
import sys
from mnist_lenet_spark.jobs.straggler_experiment import *  # noqa: F401,F403 (its parse_args, main, ... for tests and callers)
from mnist_lenet_spark.jobs.straggler_experiment import main
if __name__ == "__main__":
    sys.exit(main())
