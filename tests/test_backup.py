"""Backup workers: the kept results are exact, stragglers are dropped and not waited for."""
import time

import numpy as np
import pytest

from mnist_lenet_spark import data
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import backup
from mnist_lenet_spark.config import BackupConfig, ConfigError, SGDConfig
from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import sharding, update
from mnist_lenet_spark.loop.sharding import TaskKey
from mnist_lenet_spark import models
from mnist_lenet_spark.models import base
from mnist_lenet_spark.loop.sums import GradientSum
from tests.reference import rel_error

lenet = models.network_from("lenet")  # the preset, as a model object

# One task slot per task, as on a cluster where each worker is its own executor. On local[2] a
# cancelled straggler keeps one of the two slots until PySpark's executor kills its Python worker
# (it checks every 2 s), which the README's benchmark shows; the logic under test is the same.
SPARK_MASTER = "local[3]"


def kept_batch_gradient(mnist_images, mnist_labels, record, batches, params_flat, spec, dtype):
    """Large-batch gradient (mean + L2) over exactly the kept shards' batches, in one process."""
    index = np.concatenate([batches[k].index for k in record["kept"]])
    params = base.unflatten(params_flat, spec)
    return lenet.loss_and_grads(params, data.scale_batch(mnist_images[index], dtype), mnist_labels[index],
                                train=False, l2=SGDConfig.l2)


@pytest.mark.parametrize("combine", ["driver", "executors"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_step_gradient_equals_large_batch_over_the_kept_batches(spark, mnist, dtype, tol, combine):
    images, labels = mnist.train.images[:200], mnist.train.labels[:200]
    spec, state = update.new_state(lenet, 5)
    flat = state.params.astype(dtype)
    sc = spark.sparkContext
    data_bc = sc.broadcast((images, labels))
    ctx = tasks.TaskContext(lenet, spec, threads=1, dropout=False)
    step = backup.BackupStep(sc, ctx, tasks.BroadcastData(data_bc), workers=3,
                             backup=BackupConfig(workers=2, combine=combine), describe=str)
    try:
        batches = sharding.epoch_batches(200, 5, 8, 5, 0)[0]
        sums, info = step(flat, batches)
    finally:
        step.close()
        data_bc.destroy()
    assert len(info["kept"]) == 3 and sorted(info["kept"] + info["dropped"]) == [0, 1, 2, 3, 4]
    assert sums.count == 24 and sums.grad_sum.dtype == dtype
    loss, grads = kept_batch_gradient(images, labels, info, batches, flat, spec, dtype)
    ours = sums.grad_sum / sums.count
    for name, part in zip([n for n, _ in spec], np.split(ours, np.cumsum([np.prod(s) for _, s in spec])[:-1])):
        expected = grads[name] - (SGDConfig.l2 * base.unflatten(flat, spec)[name] if name in lenet.REGULARIZED else 0)
        assert rel_error(part.reshape(expected.shape), expected) < tol, name


def test_an_always_slow_partition_is_never_kept_and_not_waited_for(spark, mnist):
    images, labels = mnist.train.images[:600], mnist.train.labels[:600]
    slow = StragglerModel(prob=0.0, delay=10.0, slow_partitions=(1,))
    sgd = msp.SyncSGD(spark, workers=2, batch_size=16, backup_workers=1, straggler=slow, seed=2, lr=0.05)
    t0 = time.perf_counter()
    result = sgd.fit(images, labels, epochs=4, max_steps=16)
    elapsed = time.perf_counter() - t0
    assert all(1 not in h["kept"] and 1 in h["dropped"] for h in result.history)
    step_times = [h["seconds"] for h in result.history]
    assert np.median(step_times) < 2.5  # far below the 10 s delay
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-4:]) < 0.75 * np.mean(losses[:4])  # still trains
    assert elapsed < 16 * 2.5


def test_summed_on_the_executors_the_fit_equals_summed_on_the_driver_and_leaves_nothing_cached(spark, mnist):
    """combine="executors": the kept tasks' cached sums are tree-summed by a job over their partitions only
    (the 10 s straggler's partition is not waited for), the same gradients as the driver's running sum."""
    images, labels = mnist.train.images[:600], mnist.train.labels[:600]
    slow = StragglerModel(prob=0.0, delay=10.0, slow_partitions=(1,))
    persisted_before = spark.sparkContext._jsc.getPersistentRDDs().size()
    fits = {}
    for combine in ("driver", "executors"):
        sgd = msp.SyncSGD(spark, workers=2, batch_size=16, backup_workers=1, straggler=slow, seed=3,
                          backup_combine=combine)
        t0 = time.perf_counter()
        fits[combine] = sgd.fit(images, labels, max_steps=4)
        assert time.perf_counter() - t0 < 4 * 2.5, combine  # far below four 10 s delays
    ours, theirs = fits["executors"], fits["driver"]
    assert [h["kept"] for h in ours.history] == [[0, 2]] * 4 == [h["kept"] for h in theirs.history]
    assert [h["examples"] for h in ours.history] == [32] * 4
    for name in theirs.params:  # float32 sums in another order: equal to rounding
        assert rel_error(ours.params[name], theirs.params[name]) < 1e-5, name
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == persisted_before  # every step's cache released
    assert not spark.sparkContext.statusTracker().getActiveJobsIds()


def test_late_tasks_stop_by_themselves_when_their_step_closes(spark, mnist):
    # Spark's cancel is off, so only the step signal can end the 30 s straggler of each step:
    # without it, every step's job (and fit's close) would wait for it.
    slow = StragglerModel(delay=30.0, slow_partitions=(0,))
    sgd = msp.SyncSGD(spark, workers=2, batch_size=8, backup_workers=1, straggler=slow, backup_cancel=False)
    t0 = time.perf_counter()
    result = sgd.fit(mnist.train.images[:120], mnist.train.labels[:120], max_steps=3)
    assert time.perf_counter() - t0 < 15
    assert all(h["dropped"] == [0] for h in result.history)
    assert not spark.sparkContext.statusTracker().getActiveJobsIds()
    assert result.late_tasks == {"stopped_by_signal": 3, "killed_by_spark": 0}
    assert all(h["pushed"] == 2 for h in result.history)  # the kept gradients came over the step signal


def test_late_tasks_killed_by_spark_are_counted_when_the_signal_is_off(spark, mnist):
    """Without the step signal Spark's cancel ends each step's straggler: the fit says so."""
    slow = StragglerModel(delay=30.0, slow_partitions=(0,))
    sgd = msp.SyncSGD(spark, workers=2, batch_size=8, backup_workers=1, straggler=slow, backup_signal=False,
                      backup_grace=0.1)
    result = sgd.fit(mnist.train.images[:120], mnist.train.labels[:120], max_steps=2)
    assert result.late_tasks == {"stopped_by_signal": 0, "killed_by_spark": 2}
    assert all(h["pushed"] == 0 for h in result.history)  # no signal: the gradients travel in the notes


def test_a_bad_step_signal_port_is_a_config_error(spark, mnist):
    from mnist_lenet_spark.cluster import step_signal
    spark.sparkContext._conf.set(step_signal.PORT_CONF, "9-1")
    try:
        with pytest.raises(ConfigError, match=step_signal.PORT_CONF):
            msp.SyncSGD(spark, workers=2, batch_size=8, backup_workers=1).fit(
                mnist.train.images[:64], mnist.train.labels[:64], max_steps=1)
    finally:
        spark.sparkContext._conf.set(step_signal.PORT_CONF, "0")


def test_without_stragglers_every_partition_can_be_kept_and_history_records_it(spark, mnist):
    images, labels = mnist.train.images[:300], mnist.train.labels[:300]
    result = msp.SyncSGD(spark, workers=2, batch_size=16, backup_workers=1).fit(images, labels, max_steps=6)
    assert len(result.history) == 6
    for h in result.history:
        assert len(h["kept"]) == 2 and len(h["dropped"]) == 1 and h["examples"] == 32


def test_no_jobs_or_threads_left_after_fit(spark, mnist):
    import threading
    before = threading.active_count()
    slow = StragglerModel(delay=3.0, slow_partitions=(0,))
    msp.SyncSGD(spark, workers=1, batch_size=8, backup_workers=1, straggler=slow).fit(
        mnist.train.images[:64], mnist.train.labels[:64], max_steps=2)
    assert not spark.sparkContext.statusTracker().getActiveJobsIds()
    assert threading.active_count() <= before
    from pyspark.accumulators import _accumulatorRegistry  # PySpark keeps every accumulator with its value
    assert not any(isinstance(a._value, backup.StepResults) for a in _accumulatorRegistry.values()), \
        "a fit left its accumulator, and a gradient sum, on the driver"


def test_the_accumulator_sums_the_first_n_gradients_of_the_open_step_and_drops_the_rest():
    param, results = backup.FirstResults(), backup.StepResults()
    on_executor = param.addInPlace(param.zero(results), [tasks.BackupResult(1, 0, 0.0, 0.0, None)])
    assert isinstance(on_executor, list) and len(on_executor) == 1  # a task's own results travel as a list
    results.open(1, 2)

    def result(step, shard, error=None):
        sums = None if error else GradientSum(np.full(3, float(shard), np.float32), float(shard), 10 + shard)
        return tasks.BackupResult(step, shard, 0.0, 0.0, sums, error)

    for r in [result(0, 9), result(1, 2), result(1, 4, error="boom"), result(2, 7), result(1, 3), result(1, 5)]:
        assert param.addInPlace(results, [r]) is results
    assert results.counts() == (2, 1)
    sums, kept, failed = results.close()
    assert [r.shard for r in kept] == [2, 3] and all(r.sums is None for r in kept)  # the sum holds them
    np.testing.assert_array_equal(sums.grad_sum, [5.0, 5.0, 5.0])
    assert (sums.loss_sum, sums.count) == (5.0, 25) and [r.shard for r in failed] == [4]
    results.add(result(1, 6))  # after close: dropped
    assert results.counts() == (0, 0)


def test_pushed_gradients_are_added_on_arrival_first_n_only_and_kept_when_their_notes_come():
    results = backup.StepResults()
    results.open(1, 2)

    def note(shard, delivery="pushed", sums=None):
        return tasks.BackupResult(1, shard, 0.0, 0.0, sums, None, 10, delivery)
    grad = lambda shard: np.full(3, float(shard), np.float32)  # noqa: E731
    assert results.push(1, 4, grad(4), 4.0, 10) and results.push(1, 2, grad(2), 2.0, 10)
    assert results.push(1, 4, grad(4), 4.0, 10)  # a retried task's second push: taken already, not added again
    assert not results.push(1, 3, grad(3), 3.0, 10) and not results.push(0, 5, grad(5), 5.0, 10)  # full; old step
    assert results.counts() == (0, 0)  # kept only once the notes come
    results.add(note(3, "unwanted"))
    results.add(note(2))
    results.add(note(2))  # a retried task's second note
    results.add(note(4))
    sums, kept, _ = results.close()
    assert [r.shard for r in kept] == [2, 4]
    np.testing.assert_array_equal(sums.grad_sum, [6.0, 6.0, 6.0])
    assert (sums.loss_sum, sums.count) == (6.0, 20)


def test_more_task_results_than_spark_driver_max_result_size_is_one_clear_error(spark):
    lenet_bytes = 1_663_370 * 4  # LeNet's float32 gradient
    with pytest.raises(ConfigError, match=r"170 tasks a step x 6\.4 MB of gradient = 1089 MB of task results per "
                                          r"step, over spark.driver.maxResultSize \(1024 MB\); raise it"):
        backup.check_result_size(spark.sparkContext, 170, lenet_bytes)
    backup.check_result_size(spark.sparkContext, 136, lenet_bytes)  # 128 + 8: fits the default 1g


def test_invalid_backup_settings(spark, mnist):
    with pytest.raises(ConfigError, match="backup_workers must be"):
        msp.SyncSGD(spark, workers=2, backup_workers=-1)
    with pytest.raises(ConfigError, match="backup_grace must be >= 0"):
        msp.SyncSGD(spark, workers=2, backup_workers=1, backup_grace=-1.0)
    with pytest.raises(ConfigError, match="backup_combine must be 'driver' or 'executors', got 'jvm'"):
        msp.SyncSGD(spark, workers=2, backup_workers=1, backup_combine="jvm")
    with pytest.raises(ConfigError, match="need at least 3 training examples"):
        msp.SyncSGD(spark, workers=2, backup_workers=1).fit(mnist.train.images[:2], mnist.train.labels[:2])


def test_straggler_model_is_seeded_and_reproducible():
    m = StragglerModel(prob=0.3, delay=1.0)
    draws = [m.delay_for(TaskKey(7, 0, s, p)) for s in range(50) for p in range(4)]
    assert draws == [m.delay_for(TaskKey(7, 0, s, p)) for s in range(50) for p in range(4)]
    assert draws != [m.delay_for(TaskKey(8, 0, s, p)) for s in range(50) for p in range(4)]  # the run's seed counts
    assert 0.15 < np.mean(np.array(draws) > 0) < 0.45
    assert StragglerModel(delay=1.0, slow_partitions=(2,)).delay_for(TaskKey(0, 0, 0, 2)) == 1.0
    assert not StragglerModel().active


def test_wait_all_mode_waits_for_the_straggler_but_keeps_the_first_n(spark, mnist):
    # The delay is far above scheduling noise: on a loaded 2-core CI machine a fresh Python worker
    # once started 1.5 s late, and then the "slow" task was not the last to finish.
    slow = StragglerModel(delay=4.0, slow_partitions=(0,))
    sgd = msp.SyncSGD(spark, workers=2, batch_size=8, backup_workers=1, straggler=slow, backup_mode="wait-all")
    result = sgd.fit(mnist.train.images[:120], mnist.train.labels[:120], max_steps=2)
    for h in result.history:
        assert h["kept"] == [1, 2] and h["dropped"] == [0]
        assert h["seconds"] >= 4.0  # it waited for the slow task
    with pytest.raises(ConfigError, match="backup_mode must be"):
        msp.SyncSGD(spark, backup_mode="fastest")


def jvm_live_heap_mb(sc) -> float:
    """The driver JVM's heap in use after a full GC (G1 runs System.gc() as a full collection)."""
    for _ in range(2):
        sc._jvm.java.lang.System.gc()
    return sc._jvm.java.lang.management.ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed() / 2**20


def test_the_backup_path_keeps_no_more_gradients_in_the_driver_jvm_than_the_plain_step(spark, mnist):
    """Spark's Python-worker monitor thread holds each finished task's context for up to 2 s, and with it the
    task's accumulator update; in local mode that is the driver's JVM. A gradient inside the update stays with
    it: with fast steps (batch 2), tens of gradients. Pushed over the step signal, only notes are held."""
    images, labels = mnist.train.images[:400], mnist.train.labels[:400]
    gradient_mb = sum(v.nbytes for v in lenet.init_params(0).values()) / 2**20

    def live_heap_after_step(steps=40, **options):
        """The least of three readings after the last steps: what is held all along, not a passing peak."""
        found = []
        sgd = msp.SyncSGD(spark, 2, batch_size=2, **options)
        result = sgd.fit(images, labels, max_steps=steps, on_step=lambda r: r["step"] > steps - 3 and found.append(
            jvm_live_heap_mb(spark.sparkContext)))
        return min(found), result
    plain, _ = live_heap_after_step()
    backup, result = live_heap_after_step(backup_workers=1)
    assert all(h["pushed"] == 2 for h in result.history)
    assert backup < plain + 2 * gradient_mb, (backup, plain, gradient_mb)
