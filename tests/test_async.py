"""The asynchronous mode: its parameter service (no Spark), and AsyncSGD on local[2] against the single-process
trainer."""
import socket
import threading
import time

import numpy as np
import pytest

from mnist_lenet_spark import models
from mnist_lenet_spark.async_sgd import AsyncSGD
from mnist_lenet_spark.cluster import async_service
from mnist_lenet_spark.wire import common, parameters
from mnist_lenet_spark.config import ConfigError, SGDConfig
from mnist_lenet_spark.executor import inference
from mnist_lenet_spark import local

LR_RESNET, STEPS_RESNET = 0.05, 150  # 2.5 -> 0.8 in a probe (seed 0)


# -- the service, without Spark -----------------------------------------------------------------------------
def received(conn):
    """Every byte the service sends on ``conn`` until it closes it (a reset, when it closed with our bytes unread,
    is a close)."""
    data = b""
    try:
        while chunk := conn.recv(1 << 16):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def adding_server(budget=10, partitions=2, **kwargs):
    """A service over 4 parameters whose update adds the pushed gradient sum; it records each staleness."""
    seen = []

    def apply(grad, loss_sum, count, staleness, shard, params):
        seen.append((staleness, shard))
        return params + grad
    server = async_service.ParameterServer(np.zeros(4, np.float32), apply, budget, partitions, **kwargs)
    return server, seen


def test_pull_push_apply_and_staleness():
    server, seen = adding_server(budget=3)
    try:
        a = parameters.AsyncClient(server.endpoint, 0, 0)
        b = parameters.AsyncClient(server.endpoint, 1, 0)
        assert a.accepted and b.accepted and a.size == 4 and a.position == 0
        go, va, pa = a.pull()
        go_b, vb, _ = b.pull()
        assert go and go_b and va == vb == 0 and pa.dtype == np.float32
        assert a.push(va, np.ones(4, np.float32), 1.0, 1) == (parameters.APPLIED, 1)
        assert b.push(vb, np.full(4, 2, np.float32), 1.0, 1) == (parameters.APPLIED, 2)  # one version behind
        go, version, params = a.pull()
        assert go and version == 2 and params.tolist() == [3, 3, 3, 3]
        assert a.push(version, np.ones(4, np.float32), 1.0, 1)[0] == parameters.APPLIED
        assert server.done.is_set() and seen == [(0, 0), (1, 1), (0, 0)]
        assert b.pull()[0] is False  # the budget is spent: the service says stop
        assert b.push(2, np.ones(4, np.float32), 1.0, 1)[0] == parameters.BUDGET
        a.close()
        b.close()
    finally:
        server.shutdown()


def test_a_client_without_the_token_gets_nothing():
    server, seen = adding_server()
    server.AUTH_SECONDS = 0.3
    try:
        with socket.create_connection(server.endpoint[:2], timeout=5) as conn:
            conn.sendall(b"x" * common.TOKEN_BYTES + parameters.HELLO.pack(0, 0) + b"P")
            assert received(conn) == b""  # closed, no welcome, no parameters
        with socket.create_connection(server.endpoint[:2], timeout=5) as conn:  # no token at all: dropped in time
            t0 = time.monotonic()
            assert received(conn) == b""
            assert time.monotonic() - t0 < server.AUTH_SECONDS + 2
        wrong = common.Endpoint(*server.endpoint[:2], b"y" * common.TOKEN_BYTES)
        with pytest.raises(OSError):
            parameters.AsyncClient(wrong, 0, 0)
        assert server.dropped == 3 and server.applied == 0 and not seen
    finally:
        server.shutdown()


def test_only_the_newest_attempt_of_a_partition_may_push():
    server, seen = adding_server()
    try:
        old = parameters.AsyncClient(server.endpoint, 0, 0)
        _, version, _ = old.pull()
        assert old.push(version, np.ones(4, np.float32), 1.0, 1)[0] == parameters.APPLIED
        _, version, _ = old.pull()
        new = parameters.AsyncClient(server.endpoint, 0, 1)  # Spark's retry of the same partition
        assert new.accepted and new.position == 1  # goes on after the mini-batch the old attempt pushed
        assert old.push(version, np.ones(4, np.float32), 1.0, 1)[0] == parameters.OLD_ATTEMPT
        assert server.applied == 1 and server.refused["old attempt"] == 1
        assert not parameters.AsyncClient(server.endpoint, 0, 0).accepted  # an older hello is refused too
        _, version, _ = new.pull()
        assert new.push(version, np.ones(4, np.float32), 1.0, 1)[0] == parameters.APPLIED
        old.close()
        new.close()
    finally:
        server.shutdown()


def test_connections_are_bounded_and_bad_pushes_dropped():
    server, _ = adding_server(max_clients=2)
    try:
        first = parameters.AsyncClient(server.endpoint, 0, 0)
        second = parameters.AsyncClient(server.endpoint, 1, 0)
        with pytest.raises(OSError):
            parameters.AsyncClient(server.endpoint, 1, 0)  # a third: closed at once
        _, version, _ = first.pull()
        with pytest.raises(OSError):  # a gradient of the wrong size: the connection is dropped
            first.push(version, np.ones(5, np.float32), 1.0, 1)
            first.pull()
        assert server.applied == 0
        second.close()
    finally:
        server.shutdown()


def test_bounded_staleness_refuses_old_gradients_and_a_failed_update_stops_the_run():
    server, _ = adding_server(max_staleness=0)
    try:
        a = parameters.AsyncClient(server.endpoint, 0, 0)
        b = parameters.AsyncClient(server.endpoint, 1, 0)
        _, va, _ = a.pull()
        _, vb, _ = b.pull()
        assert a.push(va, np.ones(4, np.float32), 1.0, 1)[0] == parameters.APPLIED
        assert b.push(vb, np.ones(4, np.float32), 1.0, 1)[0] == parameters.STALE
        assert server.refused["too stale"] == 1
    finally:
        server.shutdown()

    def failing(*args):
        raise ValueError("diverged")
    server = async_service.ParameterServer(np.zeros(4, np.float32), failing, 5, 1)
    try:
        c = parameters.AsyncClient(server.endpoint, 0, 0)
        _, version, _ = c.pull()
        assert c.push(version, np.ones(4, np.float32), 1.0, 1)[0] == parameters.FAILED
        assert isinstance(server.error, ValueError) and c.pull()[0] is False
    finally:
        server.shutdown()


def test_shutdown_leaves_no_threads():
    before = threading.active_count()
    server, _ = adding_server()
    client = parameters.AsyncClient(server.endpoint, 0, 0)
    client.pull()
    server.shutdown()
    client.close()
    time.sleep(0.1)
    assert threading.active_count() <= before


# -- AsyncSGD on Spark --------------------------------------------------------------------------------------
def test_one_worker_equals_the_single_process_trainer(spark, mnist):
    """One task: every gradient is computed at the newest parameters (staleness 0) on sync's batches, with its
    dropout masks, so the run is the single-process trainer's, update for update."""
    from threadpoolctl import threadpool_limits
    images, labels = mnist.train.images[:96], mnist.train.labels[:96]
    result = AsyncSGD(spark, workers=1, batch_size=16, seed=3).fit(images, labels, epochs=2, max_steps=9)
    with threadpool_limits(limits=1):  # one BLAS thread, as the task computes
        single = local.fit_local(images, labels, SGDConfig(batch_size=16, seed=3, epochs=2, max_steps=9))
    assert result.staleness == [0] * 9
    assert [h["examples"] for h in result.history] == [h["examples"] for h in single.history]
    assert [h["lr"] for h in result.history] == [h["lr"] for h in single.history]
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in single.history], rel=1e-6)
    for k in single.params:
        np.testing.assert_array_equal(result.params[k], single.params[k], err_msg=k)


def test_batch_norm_statistics_travel_in_the_push_and_move_as_in_the_synchronous_update(spark, mnist):
    """ResNet, one task: the pushed sums carry the batch statistics in the state slots; the apply thread moves the
    running statistics as the single-process trainer does."""
    from threadpoolctl import threadpool_limits
    model = models.network_from("resnet")
    images, labels = mnist.train.images[:32], mnist.train.labels[:32]
    result = AsyncSGD(spark, workers=1, batch_size=8, seed=5, model=model).fit(images, labels, max_steps=3)
    with threadpool_limits(limits=1):
        single = local.fit_local(images, labels, SGDConfig(batch_size=8, seed=5, max_steps=3), model=model)
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in single.history], rel=1e-6)
    for k in single.params:
        np.testing.assert_allclose(result.params[k], single.params[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert np.any(result.params["stem.bn.running_mean"] != 0)  # the state moved


def test_two_workers_train_resnet_and_move_its_running_statistics(spark, mnist):
    """ResNet-8 under asynchrony (staleness about 1): the loss falls clearly from its start, and every batch norm's
    running statistics leave their initial (0, 1), staying finite with variances above 0."""
    model = models.network_from("resnet")
    images, labels = mnist.train.images[:1024], mnist.train.labels[:1024]
    result = AsyncSGD(spark, workers=2, batch_size=16, seed=0, model=model, lr=LR_RESNET).fit(
        images, labels, epochs=3, max_steps=STEPS_RESNET)
    assert len(result.history) == STEPS_RESNET and np.mean(result.staleness) > 0
    losses = [h["loss"] for h in result.history]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)
    for name in model.STATE:
        value = result.params[name]
        initial = 0.0 if name.endswith("running_mean") else 1.0
        assert np.all(np.isfinite(value)) and np.max(np.abs(value - initial)) > 1e-3, name
        if name.endswith("running_var"):
            assert np.all(value > 0), name


def test_two_workers_train_lenet_with_staleness_recorded(spark, mnist):
    images, labels = mnist.train.images[:2048], mnist.train.labels[:2048]
    sgd = AsyncSGD(spark, workers=2, batch_size=16, seed=0)  # lr 0.01: at 0.02 staleness 1 with momentum 0.9 diverges
    result = sgd.fit(images, labels, epochs=5, max_steps=300)
    assert len(result.history) == 300 and result.refused["old attempt"] == 0
    staleness = result.staleness
    assert np.mean(staleness) > 0 and min(staleness) >= 0  # two tasks push in turn
    assert {h["shard"] for h in result.history} == {0, 1}
    first, last = np.mean([h["loss"] for h in result.history[:20]]), np.mean([h["loss"] for h in result.history[-20:]])
    assert last < 0.6 * first, (first, last)
    correct, _ = inference.correct_and_loss(models.network_from("lenet"), result.params, mnist.test.images[:1000],
                                            mnist.test.labels[:1000])
    assert correct / 1000 > 0.8


def test_bad_options_raise_config_errors(spark):
    with pytest.raises(ConfigError, match="max_staleness"):
        AsyncSGD(spark, workers=2, max_staleness=-1)
    with pytest.raises(TypeError, match=r"AsyncSGD\(\) got an unexpected keyword argument 'backup_workers'"):
        AsyncSGD(spark, workers=2, backup_workers=1)  # it has none: not a setting it takes only to refuse
    with pytest.raises(ConfigError, match="finish_seconds"):
        AsyncSGD(spark, workers=2, finish_seconds=0)
    images = np.zeros((64, 28, 28), np.uint8)
    with pytest.raises(ConfigError, match="early_stopping_patience: not supported by the asynchronous mode"):
        AsyncSGD(spark, workers=2, batch_size=8, early_stopping_patience=2).fit(
            images, np.zeros(64, np.int64), validation_data=(images, np.zeros(64, np.int64)))


def test_a_lost_task_does_not_stall_the_end_and_losing_all_fails_the_fit(spark, mnist):
    from mnist_lenet_spark.executor.straggler import StragglerModel
    from mnist_lenet_spark.cluster.task_errors import StepFailure
    images, labels = mnist.train.images[:128], mnist.train.labels[:128]
    lose_one = StragglerModel(failing_partitions=(1,))  # every attempt of shard 1 fails (local[2]: one attempt)
    result = AsyncSGD(spark, workers=2, batch_size=16, straggler=lose_one).fit(images, labels, max_steps=6)
    assert len(result.history) == 6 and {h["shard"] for h in result.history} == {0}
    ended = {r.shard: r.ended for r in result.tasks}
    assert ended[0] == "budget" and ended[1].startswith("InjectedFailure"), ended
    lose_all = StragglerModel(failing_partitions=(0, 1))
    with pytest.raises(StepFailure, match="ended after 0 of 6 updates: InjectedFailure"):
        AsyncSGD(spark, workers=2, batch_size=16, straggler=lose_all).fit(images, labels, max_steps=6)


def test_the_task_side_imports_no_pyspark():
    import subprocess
    import sys
    code = ("import mnist_lenet_spark.executor.async_task, mnist_lenet_spark.cluster.async_service, sys; "
            "print('pyspark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
