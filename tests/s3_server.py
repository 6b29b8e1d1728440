"""moto's S3 server, standing for a cluster's object store in tests: started by the test on an address it owns
(the loopback, or a namespace cluster's host), stopped by process group."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: what the store's clients need to reach it (the executors get these through spark.executorEnv.*)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def client_env(address: str, port: int) -> dict[str, str]:
    return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": f"http://{address}:{port}"}


def start(run, address: str, port: int, log: Path, seconds: float = 60) -> subprocess.Popen:
    """Start the server with ``run(argv, **popen)`` (``subprocess.Popen``-like, in a process group of its own)
    and wait until its log says it listens (at most ``seconds``)."""
    with open(log, "ab") as out:
        proc = run([sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)], stdout=out,
                   stderr=subprocess.STDOUT)
    deadline = time.time() + seconds
    while f"Running on http://{address}:{port}" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            stop(proc)
            raise RuntimeError(f"moto's S3 server did not start on {address}:{port}: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
