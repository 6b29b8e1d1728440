"""Injected task failures: Spark's retries give the same result; with backup workers a task that fails for
good is a result that did not arrive; a step that cannot finish is one clear error."""
import numpy as np
import pytest

from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.cluster import task_errors

SPARK_MASTER = "local[3,4]"  # 3 slots, 4 attempts per task


@pytest.fixture(scope="module")
def data(mnist):
    return mnist.train.images[:300], mnist.train.labels[:300]


def test_retried_failures_give_the_failure_free_result(spark, data):
    flaky = StragglerModel(failure_prob=0.3)  # per attempt: a task fails 4 times in a row with p 0.008
    clean = msp.SyncSGD(spark, 2, batch_size=16, seed=2).fit(*data, max_steps=5)
    retried = msp.SyncSGD(spark, 2, batch_size=16, seed=2, straggler=flaky).fit(*data, max_steps=5)
    for k, v in clean.params.items():
        assert np.array_equal(retried.params[k], v), k


def test_without_backups_a_task_that_fails_for_good_ends_the_run_with_its_own_error(spark, data):
    broken = StragglerModel(failing_partitions=(1,))
    with pytest.raises(task_errors.StepFailure) as e:
        msp.SyncSGD(spark, 2, batch_size=16, straggler=broken).fit(*data, max_steps=3)
    message = str(e.value)
    assert message.startswith("step 1: a gradient task failed for good: ")
    assert "InjectedFailure: injected failure of step 1, shard 1, attempt 4" in message
    assert "\n" not in message and "Py4J" not in message


def test_with_backups_a_task_that_fails_for_good_is_a_result_that_did_not_arrive(spark, data):
    broken = StragglerModel(failing_partitions=(0,))
    result = msp.SyncSGD(spark, 2, batch_size=16, backup_workers=1, straggler=broken).fit(*data, max_steps=4)
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    for h in result.history:
        assert h["kept"] == [1, 2] and h["examples"] == 32
        assert h["failed"] in ([0], [])  # the failure may arrive after the step closed


def test_with_backups_a_step_that_cannot_get_n_results_fails_clearly(spark, data):
    broken = StragglerModel(failing_partitions=(0, 1))
    with pytest.raises(task_errors.StepFailure) as e:
        msp.SyncSGD(spark, 2, batch_size=16, backup_workers=1, straggler=broken).fit(*data, max_steps=3)
    message = str(e.value)
    assert message.startswith("step 1: only 1 of the 2 gradients needed arrived, and no more can")
    assert "InjectedFailure: injected failure of step 1" in message
    assert not spark.sparkContext.statusTracker().getActiveJobsIds()
