"""The driver's closed-step signal and the straggler delay that listens to it (no Spark needed)."""
import logging
import socket
import threading
import time

import pytest

from mnist_lenet_spark.cluster import step_signal
from mnist_lenet_spark.wire import common
from mnist_lenet_spark.wire import step_signal as signal_client
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop.sharding import TaskKey


def test_tasks_see_a_step_closed_only_after_the_driver_closes_it():
    server = step_signal.StepServer()
    try:
        assert not signal_client.is_closed(server.endpoint, 0)
        server.close_step(0)
        assert signal_client.is_closed(server.endpoint, 0) and not signal_client.is_closed(server.endpoint, 1)
        server.close_step(3)
        server.close_step(2)  # never goes back
        assert signal_client.is_closed(server.endpoint, 3)
    finally:
        server.shutdown()


def test_a_task_that_cannot_reach_the_driver_answers_not_closed_and_backs_off(caplog, monkeypatch):
    monkeypatch.setattr(signal_client, "RETRIES", 2)
    monkeypatch.setattr(signal_client, "FIRST_BACKOFF_SECONDS", 0.05)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = common.Endpoint(*s.getsockname(), b"t" * common.TOKEN_BYTES)
    with caplog.at_level(logging.WARNING, logger="mnist_lenet_spark.cluster.step_signal"):
        assert not signal_client.is_closed(address, 0)
        assert not signal_client.is_closed(address, 0)  # within the back-off: not tried
        time.sleep(0.1)
        assert not signal_client.is_closed(address, 0)  # tried again: the last of RETRIES
        time.sleep(0.2)
        assert not signal_client.is_closed(address, 0)  # given up
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 2
    assert not signal_client.is_closed(None, 0)


def test_a_task_reconnects_once_the_driver_is_reachable_again(monkeypatch):
    """A network blip: the driver's port refuses for a while, then answers on the same port."""
    monkeypatch.setattr(signal_client, "FIRST_BACKOFF_SECONDS", 0.2)
    first = step_signal.StepServer()
    endpoint = first.endpoint
    first.shutdown()
    assert not signal_client.is_closed(endpoint, 0)  # refused: back off
    second = step_signal.StepServer(ports=range(endpoint.port, endpoint.port + 1), token=endpoint.token)
    try:
        second.close_step(3)
        assert not signal_client.is_closed(endpoint, 3)  # still backing off
        time.sleep(0.3)
        assert signal_client.is_closed(endpoint, 3)
    finally:
        second.shutdown()


def test_the_port_can_be_set_as_a_range():
    assert step_signal.parse_ports(None) == range(0, 1) and step_signal.parse_ports("7100") == range(7100, 7101)
    for bad in ("x", "7110-7100", "0-5", "70000"):
        with pytest.raises(ValueError, match=step_signal.PORT_CONF):
            step_signal.parse_ports(bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = step_signal.StepServer(ports=range(port, port + 2))
        try:
            assert server.endpoint.port == port + 1  # the first free one of the range
        finally:
            server.shutdown()
        with pytest.raises(OSError, match=f"no free port in {port}-{port}"):
            step_signal.StepServer(ports=range(port, port + 1))


def test_a_connection_to_a_server_that_went_away_is_replaced():
    first = step_signal.StepServer()
    assert not signal_client.is_closed(first.endpoint, 0)  # opens and caches a connection
    first.shutdown()
    assert not signal_client.is_closed(first.endpoint, 0)  # stale connection, then refused: no exception
    second = step_signal.StepServer()
    try:
        second.close_step(5)
        assert signal_client.is_closed(second.endpoint, 5)
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
    assert not signal_client.is_closed(server.endpoint, 0)
    server.shutdown()
    assert threading.active_count() <= before


def connect(server):
    return socket.create_connection(server.endpoint[:2], timeout=2)


def answer(conn):
    reply = b""
    while len(reply) < 8:
        chunk = conn.recv(8 - len(reply))
        if not chunk:
            return None  # closed by the server
        reply += chunk
    return int.from_bytes(reply, "big", signed=True)


def test_a_client_without_the_token_gets_no_answer_and_is_dropped():
    server = step_signal.StepServer()
    try:
        server.close_step(4)
        with connect(server) as bad:
            bad.sendall(b"x" * common.TOKEN_BYTES + b"?")
            assert answer(bad) is None
        with connect(server) as good:
            good.sendall(server.token + b"?")
            assert answer(good) == 4
    finally:
        server.shutdown()


def test_silent_and_non_reading_clients_are_dropped(monkeypatch):
    monkeypatch.setattr(step_signal.StepServer, "AUTH_SECONDS", 0.3)
    server = step_signal.StepServer()
    try:
        silent = connect(server)
        flooder = socket.socket()
        flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, or TCP ignores it
        flooder.connect(server.endpoint[:2])
        flooder.sendall(server.token)
        flooder.settimeout(5)
        try:  # 2 MB of questions (~8,000 answers) whose answers it never reads
            flooder.sendall(b"?" * 2_000_000)
        except OSError:  # the server gave up on it midway
            pass
        deadline = time.monotonic() + 5
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answer(silent) is None  # it never sent the token in time
        assert server.connections == 0 and server.dropped >= 2
        assert signal_client.is_closed(server.endpoint, -1)  # a real task is still served
    finally:
        server.shutdown()


def test_a_flood_of_connections_is_bounded_and_the_service_stays_up():
    server = step_signal.StepServer(max_connections=16)
    held = []
    try:
        for _ in range(60):
            try:
                held.append(connect(server))
            except OSError:
                break
        time.sleep(0.3)
        assert server.connections <= 16
        assert threading.active_count() < 10  # one thread for all of them
        for conn in held:
            conn.close()
        time.sleep(0.3)
        server.close_step(7)
        signal_client._connections.clear()
        signal_client._failures.clear()
        assert signal_client.is_closed(server.endpoint, 7)
    finally:
        for conn in held:
            conn.close()
        server.shutdown()


def test_a_pushed_gradient_reaches_the_driver_whole_and_its_answer_says_whether_it_was_kept():
    import numpy as np
    received = []

    def on_push(step, shard, grad, loss_sum, count):
        received.append((step, shard, grad.copy(), loss_sum, count))
        return step == 4
    grad = np.random.default_rng(0).standard_normal(250_001).astype(np.float32)  # (P,), larger than a socket buffer
    server = step_signal.StepServer(on_push=on_push, push_bytes=grad.nbytes)
    try:
        assert signal_client.push(server.endpoint, 4, 2, grad, 12.5, 16) is True
        assert signal_client.push(server.endpoint, 3, 1, grad * 2, 1.0, 8) is False  # not wanted
        assert not signal_client.is_closed(server.endpoint, 0)  # questions still work on the same connection
        assert [(s, k, l, c) for s, k, _, l, c in received] == [(4, 2, 12.5, 16), (3, 1, 1.0, 8)]
        assert np.array_equal(received[0][2], grad) and np.array_equal(received[1][2], grad * 2)
        assert received[0][2].dtype == np.float32 and server.pushes == 2
        # a push of another size drops the connection and is answered with nothing: the task sends it another way
        assert signal_client.push(server.endpoint, 4, 0, grad[:-1], 1.0, 1) is None and len(received) == 2
    finally:
        server.shutdown()


def test_a_push_without_the_token_is_never_taken():
    import struct
    received = []
    server = step_signal.StepServer(on_push=lambda *a: received.append(a) or True, push_bytes=16)
    try:
        with socket.create_connection(server.endpoint[:2], timeout=2) as s:
            s.sendall(b"x" * common.TOKEN_BYTES + b"G" + struct.pack("!qiqdBQ", 0, 0, 1, 0.0, 4, 16) + b"\0" * 16)
            assert s.recv(8) == b""  # dropped, no answer
        deadline = time.monotonic() + 5
        while server.dropped < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.dropped == 1 and not received and server.pushes == 0
    finally:
        server.shutdown()
