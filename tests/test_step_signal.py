"""The driver's closed-step signal and the straggler delay that listens to it (no Spark needed)."""
import logging
import socket
import time

from mnist_lenet_spark import step_signal
from mnist_lenet_spark.sharding import TaskKey
from mnist_lenet_spark.straggler import StragglerModel


def test_tasks_see_a_step_closed_only_after_the_driver_closes_it():
    server = step_signal.StepServer()
    try:
        assert not step_signal.is_closed(server.address, 0)
        server.close_step(0)
        assert step_signal.is_closed(server.address, 0) and not step_signal.is_closed(server.address, 1)
        server.close_step(3)
        server.close_step(2)  # never goes back
        assert step_signal.is_closed(server.address, 3)
    finally:
        server.shutdown()


def test_a_task_that_cannot_reach_the_driver_answers_not_closed_and_stops_asking(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = s.getsockname()
    with caplog.at_level(logging.WARNING, logger="mnist_lenet_spark.step_signal"):
        assert not step_signal.is_closed(address, 0)
        assert not step_signal.is_closed(address, 0)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    assert not step_signal.is_closed(None, 0)


def test_a_connection_to_a_server_that_went_away_is_replaced():
    first = step_signal.StepServer()
    assert not step_signal.is_closed(first.address, 0)  # opens and caches a connection
    first.shutdown()
    assert not step_signal.is_closed(first.address, 0)  # stale connection, then refused: no exception
    second = step_signal.StepServer()
    try:
        second.close_step(5)
        assert step_signal.is_closed(second.address, 5)
    finally:
        second.shutdown()


def test_an_injected_delay_ends_when_asked_to_stop():
    slow = StragglerModel(delay=30.0, slow_partitions=(0,))
    deadline = time.monotonic() + 0.2
    t0 = time.monotonic()
    slow.sleep(TaskKey(0, 0, 0, 0), should_stop=lambda: time.monotonic() > deadline)
    assert 0.2 <= time.monotonic() - t0 < 1.0
    t0 = time.monotonic()
    StragglerModel(delay=0.3, slow_partitions=(0,)).sleep(TaskKey(0, 0, 0, 0), should_stop=lambda: False)
    assert time.monotonic() - t0 >= 0.3  # not asked to stop: the full delay


def test_shutdown_leaves_no_threads():
    import threading
    before = threading.active_count()
    server = step_signal.StepServer()
    assert not step_signal.is_closed(server.address, 0)
    server.shutdown()
    assert threading.active_count() <= before
