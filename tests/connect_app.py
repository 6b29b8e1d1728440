"""The two programs of the namespace cluster's Spark Connect tests (tests/test_netns_connect.py):

    python tests/connect_app.py server MASTER_URL STORAGE BIND_ADDRESS PORT EXECUTORS MAX_FAILURES SECONDS

on the driver's host: a Spark Connect server (a classic session on the cluster's master with Spark's Connect plugin,
listening on BIND_ADDRESS:PORT; the token is SPARK_CONNECT_AUTHENTICATE_TOKEN's; the executors' Python is
PYSPARK_PYTHON's), which prints one JSON line ({"app_id": ...}) once EXECUTORS executors have registered, then
serves until its stdin closes, at most SECONDS;

    python tests/connect_app.py client SCENARIO SERVER_ADDRESS PORT STORAGE CLIENT_ADDRESS

on the client's host, which reaches SERVER_ADDRESS and nothing else: a relay from 127.0.0.1 to the server (pyspark
sends a token without TLS only to "localhost"; the server checks it on every call), a Spark Connect session
through it, this checkout's package added to the session as a Python file (Connect's way: a session's tasks do not
see the zip that session() adds to the server's SparkContext), and one fit of NetworkClassifier on STORAGE's rows.
It prints one JSON line with what it saw; a failed fit is one line on stderr, ``connect_app: error: ...``, and
status 1. The package logs (INFO) to stderr.
"""
import json
import logging
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RELAY_SECONDS = 900  # the relay stops accepting and forwarding after this (the tests bound each run far below)


def serve(master: str, storage: Path, bind: str, port: int, executors: int, max_failures: int, seconds: float):
    from mnist_lenet_spark import session
    from tests.netns_cluster import wait_for_executors
    assert os.environ.get("SPARK_CONNECT_AUTHENTICATE_TOKEN"), "the server needs its token"
    spark = session.session(master, conf={
        "spark.executor.memory": "512m", "spark.ui.enabled": "false", "spark.task.maxFailures": str(max_failures),
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.address": bind, "spark.connect.grpc.binding.port": str(port),
        "spark.sql.artifact.isolation.enabled": "true",  # as session.local_connect's server (Connect's default)
        "spark.sql.artifact.isolation.alwaysApplyClassloader": "true"})
    spark.sparkContext.setLogLevel("WARN")
    try:
        wait_for_executors(spark, executors)
        print(json.dumps({"app_id": spark.sparkContext.applicationId}), flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # until the test closes our stdin (or the deadline)
            ready, _, _ = select.select([sys.stdin], [], [], 1.0)
            if ready and not sys.stdin.buffer.read1(4096):
                break
    finally:
        spark.stop()


def _pump(source: socket.socket, sink: socket.socket, deadline: float) -> None:
    """Copy ``source``'s bytes to ``sink`` until either side ends or the deadline passes; then end both."""
    source.settimeout(1.0)
    try:
        while time.monotonic() < deadline:
            try:
                data = source.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def start_relay(target: tuple[str, int], seconds: float = RELAY_SECONDS) -> int:
    """Forward each connection to 127.0.0.1:(the port returned) to ``target``, for at most ``seconds``: only this
    host's processes reach it; it passes bytes and checks nothing (the server authenticates every call)."""
    deadline = time.monotonic() + seconds
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(1.0)

    def accept():
        with listener:
            while time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except socket.timeout:
                    continue
                try:
                    upstream = socket.create_connection(target, timeout=10)
                except OSError:
                    conn.close()
                    continue
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=_pump, args=(a, b, deadline), daemon=True).start()
    threading.Thread(target=accept, name="relay", daemon=True).start()
    return listener.getsockname()[1]


def refused_without_the_token(port: int) -> str | None:
    """The gRPC status (and its details) a session with a wrong token gets from the server (None: it was let in)."""
    import re
    from pyspark.sql.connect.session import SparkSession
    bad = SparkSession.builder.remote(f"sc://localhost:{port}/;token=not-the-token").create()
    try:
        bad.range(1).collect()
        return None
    except Exception as e:
        status = re.search(r"status = StatusCode\.(\w+)", str(e))
        details = re.search(r'details = "([^"]*)"', str(e))
        return f"{status.group(1) if status else type(e).__name__}: {details.group(1) if details else e}"
    finally:
        try:
            bad.stop()
        except Exception:
            pass


def client(scenario: str, server: str, port: int, storage: Path, address: str):
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mnist_lenet_spark").setLevel(logging.INFO)
    local = start_relay((server, port))
    out = {}
    if scenario == "fit":
        out["wrong_token"] = refused_without_the_token(local)
    from pyspark.sql.connect.session import SparkSession
    spark = SparkSession.builder.remote(f"sc://localhost:{local}").getOrCreate()  # the token: the environment's
    from mnist_lenet_spark.cluster import one_job
    from mnist_lenet_spark.ml import NetworkClassifier
    from mnist_lenet_spark.session import build_zip
    spark.addArtifacts(str(build_zip("/tmp/mnist_lenet_spark.zip")), pyfile=True)  # this checkout's package
    spark.conf.set(one_job.COORDINATOR_HOST_CONF, address)  # where the executors would find this process
    train = spark.read.parquet(str(storage / "rows.parquet"))
    model_path = storage / f"model-{scenario}"
    steps = 40 if scenario == "fit" else 150
    clf = NetworkClassifier(workers=2, backupWorkers=1, batchSize=16, epochs=20, maxSteps=steps, seed=3)
    t0 = time.perf_counter()
    try:
        model = clf.fit(train)
    except Exception as e:
        print(f"connect_app: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    out["fit_seconds"] = time.perf_counter() - t0
    out["steps"] = len(model.summary.history)
    out["kept"] = sorted({len(h["kept"]) for h in model.summary.history})
    test = spark.read.parquet(str(storage / "test.parquet"))
    rows = model.transform(test).select("label", "prediction").collect()
    out["accuracy"] = sum(int(r["label"]) == int(r["prediction"]) for r in rows) / len(rows)
    out["test_rows"] = len(rows)
    model.write().save(str(model_path))  # a new path: overwrite() needs the JVM on Connect (pyspark MLWriter)
    out["saved"] = model_path.is_dir()
    spark.stop()
    print(json.dumps(out), flush=True)


def main():
    if sys.argv[1] == "server":
        master, storage, bind, port, executors, max_failures, seconds = sys.argv[2:9]
        serve(master, Path(storage), bind, int(port), int(executors), int(max_failures), float(seconds))
    else:
        scenario, server, port, storage, address = sys.argv[2:7]
        client(scenario, server, int(port), Path(storage), address)


if __name__ == "__main__":
    main()
