"""Helpers shared by the benchmarks: timing with medians, and BLAS set-up."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mnist_lenet_spark import files

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PACKED_ENV = ROOT / "dist" / "mnist_lenet_spark_env.tar.gz"  # the executors' Python on the namespace cluster


def namespace_cluster_missing() -> str | None:
    """Why the namespace cluster of tests/netns_cluster.py cannot run here (no namespaces, no packed
    environment), or None."""
    sys.path.insert(0, str(ROOT))
    from tests.netns_cluster import can_create_namespaces
    return can_create_namespaces() or (None if PACKED_ENV.is_file() else f"{PACKED_ENV} is missing (make pack)")


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_of(runs: list[dict]) -> dict:
    """Key by key, the median over runs that report the same keys."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def in_fresh_process(script: str, *args: str):
    """Run ``script`` again with ``args`` in a new Python process - so a new JVM, started with its own options,
    and a first fit that really is one - and return the JSON value the child printed on its last line."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu() -> str:
    """The CPU model (lscpu): machines here differ ~2x in seconds, so every result names its CPU."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def save(name: str, payload: dict) -> Path:
    """Write (merge into) benchmarks/results/NAME.json: keys of this run replace those of earlier runs."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update(payload)
    merged["cpu"] = cpu()
    return files.write_atomically(path, json.dumps(merged, indent=2) + "\n")
