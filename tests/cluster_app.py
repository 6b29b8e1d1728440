"""A driver program for the namespace cluster's tests (tests/test_netns_cluster.py), run on the driver host:

    python tests/cluster_app.py SCENARIO MASTER_URL STORAGE

It prints one JSON line with what it saw. Where the test must act mid-fit (kill an executor, add a host,
pull a link), the driver writes ``STORAGE/at-step-3`` at step 3 (in the asynchronous mode: once both tasks have
pushed) and waits
(bounded) for ``STORAGE/done``; the link
scenario also waits at step 6 for ``STORAGE/plugged`` (the link is back).
"""
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_lenet_spark import data  # noqa: E402
from mnist_lenet_spark import spark as msp  # noqa: E402
from mnist_lenet_spark.config import BackupConfig, SGDConfig  # noqa: E402
from mnist_lenet_spark.executor.straggler import StragglerModel  # noqa: E402
from mnist_lenet_spark import local
from tests.netns_cluster import PACKED_ENV, wait_for_executors  # noqa: E402

SCENARIO, MASTER, STORAGE = sys.argv[1], sys.argv[2], Path(sys.argv[3])
STORE_ENV = json.loads(os.environ.get("STORE_ENV", "{}"))  # the S3 store's endpoint and credentials


def session():
    os.environ.update(STORE_ENV)  # for this driver's own look at the store
    spark = msp.session(MASTER, conf={"spark.archives": f"{PACKED_ENV}#environment", "spark.executor.memory": "1g",
                                      "spark.eventLog.enabled": "true", "spark.eventLog.compress": "false",
                                      "spark.eventLog.dir": str(STORAGE / "events"),
                                      "spark.ui.enabled": "false",
                                      **{f"spark.executorEnv.{k}": v for k, v in STORE_ENV.items()}})
    spark.sparkContext.setLogLevel("ERROR")
    wait_for_executors(spark, 3)
    return spark


def act_at_step_3(record, spark=None, executors_after=0):
    """Tell the test that step 3 is done, and wait for it to act (at most 90 s), then for ``executors_after``
    executors (at most 120 s: a new one fetches and unpacks the environment first)."""
    if record["step"] == 3:
        (STORAGE / "at-step-3").write_text("")
        deadline = time.time() + 90
        while not (STORAGE / "done").exists() and time.time() < deadline:
            time.sleep(0.2)
        if executors_after:
            wait_for_task_slots(spark, executors_after)


def link_steps(record):
    """After step 3 the test pulls a host's link while step 4's tasks sleep (asking the step signal); steps
    4-6 go on without that host; at step 6 wait (at most 60 s) until it is plugged back."""
    if record["step"] == 3:
        (STORAGE / "at-step-3").write_text("")
    if record["step"] == 6:
        deadline = time.time() + 60
        while not (STORAGE / "plugged").exists() and time.time() < deadline:
            time.sleep(0.2)


def _address(_):
    import os
    return os.environ.get("SPARK_LOCAL_IP")


def wait_for_task_slots(spark, count, seconds=120):
    """Until tasks run on ``count`` hosts (a new executor fetches and unpacks the environment before it takes
    any): probe jobs of 8 tasks, told apart from the steps' 4 in the event log."""
    sc, deadline, seen = spark.sparkContext, time.time() + seconds, set()
    while len(seen) < count and time.time() < deadline:
        seen |= set(sc.parallelize(range(8), 8).map(_address).collect())
        time.sleep(0.5)


def max_difference(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def single_process(*args, **kwargs):
    """``local.fit_local`` with one BLAS thread, as each one-core executor computes: OpenBLAS's float32 products
    round differently with 1 and 2 threads on some CPUs (AMD EPYC: 6e-5 after one LeNet step at 4 x 16, 2e-3
    after ten), which would hide whether the distributed math is the same."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        return local.fit_local(*args, **kwargs)


def error_of(call):
    try:
        call()
    except data.DataError as e:
        return str(e)
    return None


def main():
    spark = session()
    mnist = data.load_mnist()
    images, labels = mnist.train.images[:600], mnist.train.labels[:600]
    rows_path = str(STORAGE / "rows.parquet")  # written by the test, in the cluster's storage
    out = {}
    try:
        from pyspark.ml.evaluation import MulticlassClassificationEvaluator

        from mnist_lenet_spark.ml import LeNetClassificationModel, LeNetClassifier
        if SCENARIO in ("dataframe", "kill"):
            df = spark.read.parquet(rows_path)
            steps = 6 if SCENARIO == "dataframe" else 8
            clf = LeNetClassifier(workers=2, batchSize=16, maxSteps=steps, seed=3)
            if SCENARIO == "kill":
                clf._progress = lambda: act_at_step_3
            model = clf.fit(df)
            arrays = msp.SyncSGD(spark, 2, batch_size=16, seed=3).fit(images, labels, max_steps=steps)
            out["steps"] = [h["step"] for h in model.summary.history]
            out["dataframe_vs_arrays"] = max_difference(model.weights, arrays.params)
            if SCENARIO == "dataframe":
                test = spark.read.parquet(str(STORAGE / "test.parquet"))
                predicted = model.transform(test)
                out["accuracy"] = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predicted)
                expected = model.predict(mnist.test.images[:200])
                out["driver_accuracy"] = float(np.mean(expected == mnist.test.labels[:200]))
                model.write().overwrite().save(str(STORAGE / "model"))
                loaded = LeNetClassificationModel.load(str(STORAGE / "model"))
                out["loaded_vs_saved"] = max_difference(loaded.weights, model.weights)
                out["save_driver_local"] = error_of(lambda: model.write().overwrite().save("/tmp/lenet-model"))
                out["load_no_model"] = error_of(lambda: LeNetClassificationModel.load(str(STORAGE / "events")))
                import pyarrow as pa
                import pyarrow.parquet as pq
                Path("/tmp/driver-only.parquet").mkdir()  # on the driver's host alone
                pq.write_table(pa.table({"label": labels[:20].astype("int64")}), "/tmp/driver-only.parquet/p.parquet")
                from mnist_lenet_spark import readers
                out["read_driver_local"] = error_of(
                    lambda: readers.read_mnist(spark, "/tmp/driver-only.parquet", "parquet"))
                out["staging_not_shared"] = error_of(lambda: LeNetClassifier(maxSteps=1, stagingDir="/tmp/staging-x")
                                                     .fit(df))
                import shutil
                shutil.rmtree("/tmp/driver-only.parquet")
                import s3fs
                store = s3fs.S3FileSystem(skip_instance_cache=True)
                store.mkdir("lenet")  # the user's bucket
                clf = LeNetClassifier(workers=2, batchSize=16, maxSteps=steps, seed=3, stagingDir="s3://lenet/staging")
                during = []
                clf._progress = lambda: lambda record: record["step"] == 1 and during.extend(store.find("lenet"))
                in_store = clf.fit(df)
                out["s3_objects_during"] = len(during)
                out["s3_objects_after"] = len(s3fs.S3FileSystem(skip_instance_cache=True).find("lenet"))
                out["s3_vs_arrays"] = max_difference(in_store.weights, arrays.params)
        elif SCENARIO == "join":  # broadcast arrays, 4 tasks a step: a fourth host joins after step 3
            result = msp.SyncSGD(spark, 4, batch_size=16, seed=4).fit(images, labels, max_steps=10,
                                                                       on_step=partial(act_at_step_3, spark=spark,
                                                                                       executors_after=4))
            single = single_process(images, labels, SGDConfig(batch_size=16, seed=4, max_steps=10), shards=4)
            out["steps"] = [h["step"] for h in result.history]
            out["cluster_vs_single"] = max_difference(result.params, single.params)
        elif SCENARIO == "link":  # backup workers, 2 + 1 tasks a step, each sleeping 3 s first while it asks the
            # step signal (so the late one is stopped by it); a host's link is down for 20 s from step 4
            t0 = time.perf_counter()
            result = msp.SyncSGD(spark, 2, batch_size=16, seed=6, backup=BackupConfig(workers=1),
                                 straggler=StragglerModel(prob=1.0, delay=3.0)).fit(
                images, labels, max_steps=12, on_step=link_steps)
            single = single_process(images, labels, SGDConfig(batch_size=16, seed=6, max_steps=12), shards=3,
                                     kept=[h["kept"] for h in result.history])
            out["steps"] = [h["step"] for h in result.history]
            out["kept"] = [h["kept"] for h in result.history]
            out["late_tasks"] = result.late_tasks
            out["cluster_vs_single"] = max_difference(result.params, single.params)
            out["seconds"] = time.perf_counter() - t0
        elif SCENARIO == "async_kill":  # asynchronous SGD, 2 long tasks of 0.3 s a mini-batch: once both have pushed,
            # the apply thread holds while the test SIGKILLs the executor of one (both wait for their apply then)
            from mnist_lenet_spark.async_sgd import AsyncSGD
            pushed = set()

            def once_both_pushed(record):
                pushed.add(record["shard"])
                if len(pushed) == 2 and not (STORAGE / "at-step-3").exists():
                    act_at_step_3({"step": 3})

            result = AsyncSGD(spark, 2, batch_size=16, seed=7, straggler=StragglerModel(prob=1.0, delay=0.3)).fit(
                images, labels, max_steps=30, on_step=once_both_pushed)  # 30 of an epoch's 38 mini-batches
            out["steps"] = [h["step"] for h in result.history]
            out["updates_by_shard"] = {str(s): sum(h["shard"] == s for h in result.history) for s in (0, 1)}
            out["reports"] = [{"shard": r.shard, "attempt": r.attempt, "pushes": r.pushes, "ended": r.ended}
                              for r in result.tasks]
            out["refused"] = result.refused
            out["loss"] = [result.history[0]["loss"], float(np.mean([h["loss"] for h in result.history[-10:]]))]
        out["app_id"] = spark.sparkContext.applicationId
    finally:
        spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
