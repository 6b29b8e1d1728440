"""The driver's pieces without Spark: the sum type, sum -> (loss, gradient), keys, atomic files, checkpoints."""
import numpy as np
import pytest

from mnist_lenet_spark import files
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark import local
from mnist_lenet_spark.loop import checkpoint, sharding, update
from mnist_lenet_spark import models
from mnist_lenet_spark.models import base
from mnist_lenet_spark.loop.sums import GradientSum
from tests.conftest import tiny_problem
from tests.reference import rel_error

lenet = models.network_from("lenet")  # the preset, as a model object


def test_gradient_sums_add_field_by_field():
    a = GradientSum(np.array([1.0, 2.0]), 0.5, 2)
    b = GradientSum(np.array([0.5, -1.0]), 1.5, 3)
    total = a + b
    assert np.array_equal(total.grad_sum, [1.5, 1.0]) and total.loss_sum == 2.0 and total.count == 5
    report = tasks.TaskReport(a, (11,)) + tasks.TaskReport(b, (12,))
    assert report.sums.count == 5 and report.pids == (11, 12)


def test_sums_of_uneven_parts_give_the_large_batch_loss_and_gradient():
    params, X, y = tiny_problem(7, dtype=np.float64)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    parts = [tasks.gradient_sum(lenet, spec, flat, X[a:b], y[a:b], rng=None) for a, b in [(0, 2), (2, 7)]]
    loss, grad = update.loss_and_gradient(parts[0] + parts[1], flat, spec, lenet, SGDConfig.l2)
    loss0, grads0 = lenet.loss_and_grads(params, X, y, train=False, l2=SGDConfig.l2)
    assert loss == pytest.approx(loss0, rel=1e-12)
    assert rel_error(grad, base.flatten(grads0, spec)) < 1e-12


def test_no_examples_gives_nan_loss_and_the_l2_gradient_only():
    params, _, _ = tiny_problem(1)
    spec = base.param_spec(params)
    flat = base.flatten(params, spec)
    loss, grad = update.loss_and_gradient(GradientSum(np.zeros_like(flat), 0.0, 0), flat, spec, lenet, 0.1)
    assert np.isnan(loss)
    g = base.unflatten(grad, spec)
    assert np.allclose(g["fc1.W"], 0.1 * params["fc1.W"]) and not g["fc1.b"].any()


def test_batch_keys_carry_the_global_step_and_the_shuffle_is_per_epoch():
    epoch0 = sharding.epoch_batches(100, 3, 10, seed=1, epoch=0)
    epoch1 = sharding.epoch_batches(100, 3, 10, seed=1, epoch=1)
    steps = len(epoch0)
    assert steps == 4  # shards of 33, 34 and 33 examples
    assert [b[0].key.step for b in epoch1] == list(range(steps, 2 * steps))
    assert [b.key.shard for b in epoch0[0]] == [0, 1, 2]
    shard0 = np.concatenate([b[0].index for b in epoch0])
    assert sorted(shard0) == list(range(33))  # every example of the shard once
    assert not np.array_equal(shard0, np.concatenate([b[0].index for b in epoch1]))
    assert [len(b.index) for b in epoch0[3]] == [3, 4, 3]  # the last batches are short


def test_write_atomically_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = files.write_atomically(tmp_path / "sub" / "out.json", "text")
    assert path.read_text() == "text"
    files.write_atomically(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    with pytest.raises(TypeError):
        files.write_atomically(path, 12)  # neither bytes nor text: nothing written
    assert path.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_checkpoint_round_trip_and_a_bad_file(tmp_path, mnist):
    config = SGDConfig(batch_size=8, max_steps=2)
    result = local.fit_local(mnist.train.images[:32], mnist.train.labels[:32], config)
    path = tmp_path / "ck.npz"
    checkpoint.save_checkpoint(path, result.state, config, {"workers": 1})
    state, meta = checkpoint.load_checkpoint(path)
    assert state.step == 2 and meta["workers"] == 1 and meta["config"]["batch_size"] == 8
    assert np.array_equal(state.params, result.state.params)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a checkpoint of this tool"):
        checkpoint.load_checkpoint(path)


def test_the_math_and_the_executor_side_import_no_pyspark():
    import subprocess
    import sys
    modules = ["executor", "executor.tasks", "executor.inference", "executor.rows", "executor.shards",
               "executor.emulation", "executor.straggler", "executor.async_task", "wire.step_signal", "wire.parameters",
               "cluster.step_signal", "config", "loop", "loop.sharding",
               "loop.training", "local", "models", "models.definitions", "nn", "nn.network"]
    code = "; ".join(f"import mnist_lenet_spark.{m}" for m in modules) + "; import sys; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
