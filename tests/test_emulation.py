"""Emulated compute (benchmarks at the paper's scale): seeded task times, and a backup step that keeps exactly the
N tasks whose drawn times are shortest, with gradients of the real size."""
import numpy as np
import pytest

from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.executor.emulation import EmulatedCompute
from mnist_lenet_spark.loop.sharding import TaskKey
from mnist_lenet_spark import models

lenet = models.network_from("lenet")  # the preset, as a model object

SPARK_MASTER = "local[8]"  # a slot per task: 6 + 2 emulated tasks sleep side by side on 2 cores


@pytest.mark.parametrize("distribution", ["exponential", "lognormal", "pareto"])
def test_task_times_are_seeded_by_the_task_key_and_have_the_asked_mean(distribution):
    e = EmulatedCompute(shift=0.5, tail_mean=0.2, distribution=distribution)
    keys = [TaskKey(3, 0, s, k) for s in range(4000) for k in range(5)]
    times = np.array([e.seconds(key) for key in keys])
    assert times.min() >= 0.5 and list(times[:50]) == [e.seconds(key) for key in keys[:50]]
    assert np.mean(times - 0.5) == pytest.approx(0.2, rel=0.06 if distribution == "pareto" else 0.03)
    assert e.seconds(TaskKey(4, 0, 0, 0)) != e.seconds(TaskKey(3, 0, 0, 0))


@pytest.mark.parametrize("field, value, message", [("distribution", "uniform", "must be one of"),
                                                   ("shift", -1.0, "must be >= 0"), ("alpha", 1.0, "must be > 1")])
def test_bad_emulation_settings_are_config_errors(spark, field, value, message):
    with pytest.raises(ConfigError, match=f"emulated compute: {field} {message}"):
        msp.SyncSGD(spark, 2, emulation=EmulatedCompute()._replace(**{field: value}))


def test_a_backup_step_keeps_the_n_tasks_with_the_shortest_drawn_times(spark, mnist):
    emulation = EmulatedCompute(shift=0.3, tail_mean=0.6)
    images, labels = mnist.train.images[:8 * 16 * 6], mnist.train.labels[:8 * 16 * 6]  # 6 steps in epoch 0
    sgd = msp.SyncSGD(spark, 6, batch_size=16, backup_workers=2, seed=9, emulation=emulation)
    result = sgd.fit(images, labels, max_steps=6)
    checked = 0
    for s, h in enumerate(result.history):
        times = sorted((emulation.seconds(TaskKey(9, 0, s, k)), k) for k in range(8))
        assert h["examples"] == 6 * 16 and h["seconds"] >= times[5][0]  # the 6th shortest: the step's floor
        if times[6][0] - times[5][0] > 0.25:  # a clear gap: scheduling noise cannot reorder them
            assert h["kept"] == sorted(k for _, k in times[:6])
            checked += 1
    assert checked >= 4, "no step had a clear gap between its 6th and 7th task: pick another seed"
    assert result.params["fc2.W"].shape == lenet.init_params(0)["fc2.W"].shape
