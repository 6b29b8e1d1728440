"""The asynchronous mode when Spark retries a task (local[2,2]: two attempts per task): the retried attempt says
hello with its attempt number and goes on at its shard's position."""
import numpy as np

from mnist_lenet_spark.async_sgd import AsyncSGD
from mnist_lenet_spark.config import SGDConfig
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark import local

SPARK_MASTER = "local[2,2]"


def test_a_retried_task_goes_on_where_its_shard_was_and_equals_an_undisturbed_run(spark, mnist):
    """Seed 4, p = 0.1: attempt 0 fails at the fifth mini-batch (after its pull, before its push); attempt 1 draws
    no failure. It resumes at that mini-batch, so the run is the single-process trainer's, bit for bit."""
    from threadpoolctl import threadpool_limits
    images, labels = mnist.train.images[:96], mnist.train.labels[:96]
    failing = StragglerModel(failure_prob=0.1)
    result = AsyncSGD(spark, workers=1, batch_size=16, seed=4, straggler=failing).fit(images, labels, epochs=2,
                                                                                      max_steps=9)
    with threadpool_limits(limits=1):
        single = local.fit_local(images, labels, SGDConfig(batch_size=16, seed=4, epochs=2, max_steps=9))
    assert [(r.shard, r.attempt, r.pushes, r.ended) for r in result.tasks] == [(0, 1, 5, "budget")]
    assert result.staleness == [0] * 9
    for k in single.params:
        np.testing.assert_array_equal(result.params[k], single.params[k], err_msg=k)
