"""Long-run hygiene of backup workers on local[3]: many fits in one session, and training under a flood.

(1) ``--fits`` fits of ``--steps`` backup-worker steps each (N = 2, b = 1, tiny data) in one
session, as a notebook does: after each fit, the Python driver's RSS, its threads and its open
file descriptors. Target: flat (the last fit's RSS within 32 MB of the second's, threads and
descriptors back to their level). (2) 40 steps with hostile clients hammering the step-signal
service (200 idle connections, a client with a wrong token flooding bytes) against 40 steps
without, alternating; target: within a few percent. Writes benchmarks/results/soak.json.

    python benchmarks/soak.py [--fits 15] [--steps 100]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import threading
import time

from common import save

from mnist_lenet_spark import data, session
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import step_signal


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Flood:
    """Hostile clients of every step-signal server this process starts, while active."""

    def __init__(self):
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.original = step_signal.StepServer.__init__
        flood = self

        def patched(server, *args, **kwargs):
            flood.original(server, *args, **kwargs)
            threading.Thread(target=flood.attack, args=(server.endpoint,), daemon=True).start()
        step_signal.StepServer.__init__ = patched

    def attack(self, endpoint):
        for _ in range(200):
            try:
                self.sockets.append(socket.create_connection(endpoint[:2], timeout=1))
            except OSError:
                break
        while not self.stop.is_set():
            try:
                with socket.create_connection(endpoint[:2], timeout=1) as s:
                    s.sendall(b"w" * 32 + b"?" * 4096)
            except OSError:
                time.sleep(0.01)

    def close(self):
        self.stop.set()
        step_signal.StepServer.__init__ = self.original
        for s in self.sockets:
            s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fits", type=int, default=15)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    mnist = data.load_mnist()
    images, labels = mnist.train.images[:192], mnist.train.labels[:192]
    spark = session.session("local[3]")
    sgd = msp.SyncSGD(spark, 2, batch_size=16, backup_workers=1)
    fits = []
    for i in range(args.fits):
        result = sgd.fit(images, labels, epochs=args.steps, max_steps=args.steps)
        fits.append({"fit": i + 1, "steps": len(result.history), "rss_mb": rss_mb(),
                     "threads": threading.active_count(), "open_fds": open_fds(),
                     "active_jobs": len(spark.sparkContext.statusTracker().getActiveJobsIds())})
        print(fits[-1], flush=True)
    quiet, flooded = [], []
    for _ in range(2):  # alternate, so both see the same machine load
        result = sgd.fit(images, labels, epochs=40, max_steps=40)
        quiet.append(statistics.mean(h["seconds"] for h in result.history[5:]))
        flood = Flood()
        try:
            result = sgd.fit(images, labels, epochs=40, max_steps=40)
        finally:
            flood.close()
        flooded.append(statistics.mean(h["seconds"] for h in result.history[5:]))
    spark.stop()
    out = {"fits": fits, "rss_growth_mb_after_first_fit": fits[-1]["rss_mb"] - fits[1]["rss_mb"],
           "step_seconds_quiet": statistics.median(quiet), "step_seconds_flooded": statistics.median(flooded),
           "flooded_over_quiet": statistics.median(flooded) / statistics.median(quiet)}
    print(f"{args.fits} fits x {args.steps} backup steps: driver RSS {fits[1]['rss_mb']:.0f} -> "
          f"{fits[-1]['rss_mb']:.0f} MB after fits 2 and {args.fits}; threads {fits[1]['threads']} -> "
          f"{fits[-1]['threads']}; open fds {fits[1]['open_fds']} -> {fits[-1]['open_fds']}")
    print(f"step under a connection flood: {out['step_seconds_flooded'] * 1e3:.0f} ms vs "
          f"{out['step_seconds_quiet'] * 1e3:.0f} ms = {out['flooded_over_quiet']:.3f}x")
    save("soak", out)


if __name__ == "__main__":
    main()
