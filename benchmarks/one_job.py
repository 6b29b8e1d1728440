"""The one-job engine (``SyncSGD.fit_frame``: one Spark job of long-lived tasks around a coordinator) against the
per-step engine on a staged DataFrame (``staging.fit_dataframes``: one Spark job per step), side by side in one run.

The training rows are MNIST's first ``--rows`` training images (default all 55,000), written once to a Parquet file
(features: 784 bytes, label) that every session reads, classic or Spark Connect. Three measurements, each
interleaved (A, B, A, B, ... for ``--rounds`` rounds; the figure is the median over rounds):

(1) LeNet 2 workers x 64 on ``local[2]`` (``session.session``, the project's settings): the median step over steps
    2 .. steps + 1 (the first, which includes the tasks' start, excluded) of (a) the per-step engine, (b) the
    one-job engine, and the ratio one-job / per-step; TorchDistributor (``peers.run_torch``: the same LeNet, shards,
    batches and dropout) as a third arm in the same rounds, unless ``--no-torch`` (or PyTorch is missing): then
    peers.json's last 2 x 64 mean step is reported, labelled as read from that file.
(2) 4 workers x 64 with stragglers (p = 0.1, 2 s) and one backup worker: the mean step over steps 2 .. N of the
    two engines, and beside them the steps where more than b of the 5 tasks draw a delay (held up in either engine).
    The one-job engine holds N + b = 5 task slots at once, so this runs on ``local[5]`` (on a 2-core machine: 5
    slots sharing 2 cores, as peers.py's straggler row).
(3) An epoch-like run (``--epoch-steps`` steps of 2 x 64, one-job engine) on a Spark Connect session against a
    classic one, each the first fit of a fresh Python process (a Connect client and a classic session do not share
    a process reliably): the wall seconds of the ``fit_frame`` call, and Connect / classic. The Connect session is
    ``session.local_connect``: a local server with the project's settings on a free port, and its client.

Writes benchmarks/results/one_job.json (``--quick``: a smoke run of tiny sizes, to one_job_quick.json; its numbers
are not a result).

    python benchmarks/one_job.py [--steps 40] [--rounds 3] [--straggler-steps 30] [--epoch-steps 200] [--rows 55000]
                                 [--no-torch] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, cpu, save

from mnist_lenet_spark import data
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.cluster import staging
from mnist_lenet_spark.executor.straggler import StragglerModel
from mnist_lenet_spark.loop import sharding
from mnist_lenet_spark.session import local_connect

SEED = 0
BATCH = 64
STRAGGLERS = StragglerModel(prob=0.1, delay=2.0)
PEERS_ROW = "2 workers x 64 (SystemML's)"  # peers.json's 2 x 64 row


def write_rows(images: np.ndarray, labels: np.ndarray, folder: Path) -> str:
    """The rows as one Parquet file (features: the 784 uint8 pixels as binary; label: long); its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    flat = np.ascontiguousarray(images.reshape(len(images), -1))  # (n, 784) uint8
    table = pa.table({"features": pa.array([row.tobytes() for row in flat], pa.binary()),
                      "label": pa.array(labels.astype(np.int64))})
    path = folder / "mnist_train.parquet"
    pq.write_table(table, path, row_group_size=5000)
    return str(path)


def steps_of(result) -> list[float]:
    """Step seconds of steps 2 .. N (the first, which includes the tasks' start, excluded)."""
    return [h["seconds"] for h in result.history[1:]]


# -- (1) and (2): both engines in one classic session -------------------------------------------------------------

def per_step_fit(spark, df, workers: int, steps: int, **options) -> dict:
    sgd = msp.SyncSGD(spark, workers, batch_size=BATCH, seed=SEED, **options)
    t0 = time.perf_counter()
    result, staging_seconds = staging.fit_dataframes(sgd, df, None, "features", "label", max_steps=steps)
    return {"steps": steps_of(result), "wall": time.perf_counter() - t0, "staging": staging_seconds}


def one_job_fit(spark, df, workers: int, steps: int, **options) -> dict:
    sgd = msp.SyncSGD(spark, workers, batch_size=BATCH, seed=SEED, **options)
    t0 = time.perf_counter()
    result = sgd.fit_frame(df, max_steps=steps)
    return {"steps": steps_of(result), "wall": time.perf_counter() - t0,
            "refused_late": (result.late_tasks or {}).get("refused_late")}


def torch_fit(images, labels, steps: int) -> dict:
    import peers  # the same LeNet, shards, batches and dropout masks as ours
    from pyspark import cloudpickle
    cloudpickle.register_pickle_by_value(peers)  # torchrun's processes cannot import benchmarks/peers.py
    t0 = time.perf_counter()
    out = peers.run_torch(2, images, labels, BATCH, steps)
    return {"steps": [float(s) for s in out["steps"][1:]], "wall": time.perf_counter() - t0}


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        from pyspark.ml.torch.distributor import TorchDistributor  # noqa: F401
    except ImportError:
        return False
    return True


def torch_from_peers() -> dict | None:
    path = RESULTS / "peers.json"
    if not path.exists():
        return None
    peers = json.loads(path.read_text())
    row = peers.get(PEERS_ROW)
    if not row:
        return None
    return {"source": "benchmarks/results/peers.json (not measured in this run)",
            "mean_step_seconds": row["torch_mean_step_seconds"], "steps": peers.get("steps"),
            "statistic": f"mean over steps 2-{(peers.get('steps') or 40) + 1} of one TorchDistributor run",
            "cpu": peers.get("cpu")}


def lenet_2x64(data_path: str, images, labels, steps: int, rounds: int, with_torch: bool) -> dict:
    spark = msp.session("local[2]")
    df = spark.read.parquet(data_path)
    runs = {"per_step": [], "one_job": [], **({"torch": []} if with_torch else {})}
    try:
        for r in range(rounds):
            runs["per_step"].append(per_step_fit(spark, df, 2, steps + 1))
            runs["one_job"].append(one_job_fit(spark, df, 2, steps + 1))
            if with_torch:
                runs["torch"].append(torch_fit(images, labels, steps + 1))
            print(f"  (1) round {r + 1}/{rounds}: median step " + ", ".join(
                f"{k} {statistics.median(v[-1]['steps']) * 1e3:.1f} ms" for k, v in runs.items()), flush=True)
    finally:
        spark.stop()
    out = {"master": "local[2]", "workers": 2, "batch": BATCH, "measured_steps": f"2-{steps + 1}",
           "statistic": "median step seconds of each fit, then the median over rounds"}
    for name, fits in runs.items():
        medians = [statistics.median(f["steps"]) for f in fits]
        out[name] = {"median_step_seconds": statistics.median(medians), "each_round": medians,
                     "mean_step_seconds": statistics.median(statistics.mean(f["steps"]) for f in fits),
                     "fit_wall_seconds": statistics.median(f["wall"] for f in fits)}
    out["per_step"]["staging_seconds"] = statistics.median(f["staging"] for f in runs["per_step"])
    out["one_job_over_per_step"] = out["one_job"]["median_step_seconds"] / out["per_step"]["median_step_seconds"]
    out["one_job_over_per_step_each_round"] = [o / p for o, p in zip(out["one_job"]["each_round"],
                                                                    out["per_step"]["each_round"])]
    if with_torch:
        out["torch"]["source"] = "measured in this run (peers.run_torch, TorchDistributor local mode, gloo)"
        out["one_job_over_torch"] = out["one_job"]["median_step_seconds"] / out["torch"]["median_step_seconds"]
    else:
        out["torch"] = torch_from_peers()
    return out


def held_up_steps(rows: int, shards: int, steps: int, backup: int = 1) -> list[int]:
    """The measured steps (2 .. ``steps``) where more than ``backup`` of the ``shards`` tasks draw a delay: held up
    in either engine.
    (In the one-job engine a delayed task also sleeps past its version's end, so later steps can be held too.)"""
    held, epoch = [], 0
    while True:
        for step in sharding.epoch_batches(rows, shards, BATCH, SEED, epoch):
            number = step[0].key.step + 1
            if number > steps:
                return held
            if number > 1 and sum(STRAGGLERS.delay_for(b.key) > 0 for b in step) > backup:
                held.append(number)
        epoch += 1


def stragglers_4x64(data_path: str, rows: int, steps: int, rounds: int) -> dict:
    spark = msp.session("local[5]")
    df = spark.read.parquet(data_path)
    options = {"straggler": STRAGGLERS, "backup_workers": 1}
    runs = {"per_step": [], "one_job": []}
    try:
        for r in range(rounds):
            runs["per_step"].append(per_step_fit(spark, df, 4, steps + 1, **options))
            runs["one_job"].append(one_job_fit(spark, df, 4, steps + 1, **options))
            print(f"  (2) round {r + 1}/{rounds}: mean step " + ", ".join(
                f"{k} {statistics.mean(v[-1]['steps']) * 1e3:.1f} ms" for k, v in runs.items()), flush=True)
    finally:
        spark.stop()
    out = {"master": "local[5] (the one-job engine holds N + b = 5 task slots at once; 5 slots on "
                     f"{os.cpu_count()} cores)", "workers": 4, "backup_workers": 1, "batch": BATCH,
           "stragglers": {"prob": STRAGGLERS.prob, "delay_seconds": STRAGGLERS.delay},
           "measured_steps": f"2-{steps + 1}",
           "statistic": "mean step seconds of each fit, then the median over rounds"}
    for name, fits in runs.items():
        means = [statistics.mean(f["steps"]) for f in fits]
        out[name] = {"mean_step_seconds": statistics.median(means), "each_round": means,
                     "fit_wall_seconds": statistics.median(f["wall"] for f in fits)}
    out["one_job"]["refused_late"] = [f["refused_late"] for f in runs["one_job"]]
    out["steps_with_more_than_b_delayed"] = held_up_steps(rows, 5, steps + 1)
    out["one_job_over_per_step"] = out["one_job"]["mean_step_seconds"] / out["per_step"]["mean_step_seconds"]
    return out


# -- (3): Spark Connect against classic, each in a fresh process --------------------------------------------------

def one(kind: str, data_path: str, steps: int) -> None:
    """One epoch-like fit with the one-job engine in this fresh process; prints a JSON line."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    t0 = time.perf_counter()
    if kind == "connect":
        server, spark = local_connect("local[2]")
        from mnist_lenet_spark.cluster import one_job
        assert one_job.is_connect(spark), type(spark)
    else:
        server, spark = None, msp.session("local[2]")
    session_seconds = time.perf_counter() - t0
    try:
        df = spark.read.parquet(data_path)
        fit = one_job_fit(spark, df, 2, steps)
    finally:
        spark.stop()  # on Connect, the server's session too (SPARK_LOCAL_REMOTE)
        if server is not None and server.sparkContext._jsc is not None:
            server.stop()
    print(json.dumps({"kind": kind, "session_seconds": session_seconds, "fit_wall_seconds": fit["wall"],
                      "median_step_seconds": statistics.median(fit["steps"]), "steps": steps}))


def in_child(kind: str, data_path: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--data", data_path, "--epoch-steps", str(steps)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-6000:])
        raise SystemExit(f"one_job.py: the {kind} child failed (exit {out.returncode}); its stderr is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def connect_vs_classic(data_path: str, steps: int, rounds: int) -> dict:
    runs = {"classic": [], "connect": []}
    for r in range(rounds):
        for kind in runs:
            runs[kind].append(in_child(kind, data_path, steps))
        print(f"  (3) round {r + 1}/{rounds}: fit wall " + ", ".join(
            f"{k} {v[-1]['fit_wall_seconds']:.1f} s" for k, v in runs.items()), flush=True)
    out = {"master": "local[2]", "workers": 2, "batch": BATCH, "steps": steps, "engine": "one-job",
           "statistic": "each a first fit in a fresh process; medians over rounds",
           "connect_session": "local Spark Connect server (project settings, free port) + client in one process"}
    for kind, fits in runs.items():
        out[kind] = {key: statistics.median(f[key] for f in fits)
                     for key in ("fit_wall_seconds", "session_seconds", "median_step_seconds")}
        out[kind]["fit_wall_each_round"] = [f["fit_wall_seconds"] for f in fits]
    out["connect_over_classic"] = out["connect"]["fit_wall_seconds"] / out["classic"]["fit_wall_seconds"]
    out["connect_over_classic_each_round"] = [c["fit_wall_seconds"] / k["fit_wall_seconds"]
                                              for c, k in zip(runs["connect"], runs["classic"])]
    return out


def report(result: dict) -> None:
    a, b, c = result["lenet_2x64_local2"], result["stragglers_4x64_b1_local5"], result["connect_vs_classic_2x64"]
    print(f"CPU: {result['cpu']}")
    print(f"(1) 2 x 64, local[2], median step over steps {a['measured_steps']} (median of {result['rounds']} rounds):")
    print("| engine | step | ratio to per-step |\n|---|---|---|")
    print(f"| per-step (staged DataFrame) | {a['per_step']['median_step_seconds'] * 1e3:.1f} ms | 1.00x |")
    print(f"| one-job | {a['one_job']['median_step_seconds'] * 1e3:.1f} ms | {a['one_job_over_per_step']:.2f}x |")
    torch = a.get("torch")
    if torch and "median_step_seconds" in torch:
        print(f"| TorchDistributor (measured here) | {torch['median_step_seconds'] * 1e3:.1f} ms | "
              f"{torch['median_step_seconds'] / a['per_step']['median_step_seconds']:.2f}x |")
    elif torch:
        print(f"| TorchDistributor (peers.json, mean step, {torch['cpu']}; not measured here) | "
              f"{torch['mean_step_seconds'] * 1e3:.1f} ms | - |")
    print(f"(2) 4 x 64, stragglers p={STRAGGLERS.prob} x {STRAGGLERS.delay:g} s, b = 1, local[5], mean step over "
          f"steps {b['measured_steps']}: per-step {b['per_step']['mean_step_seconds']:.3f} s, one-job "
          f"{b['one_job']['mean_step_seconds']:.3f} s = {b['one_job_over_per_step']:.2f}x (steps where more than b "
          f"tasks draw a delay: {b['steps_with_more_than_b_delayed']})")
    print(f"(3) {c['steps']} steps of 2 x 64, one-job engine, fit wall (fresh processes): classic "
          f"{c['classic']['fit_wall_seconds']:.1f} s, Spark Connect {c['connect']['fit_wall_seconds']:.1f} s = "
          f"{c['connect_over_classic']:.2f}x (session start {c['classic']['session_seconds']:.1f} / "
          f"{c['connect']['session_seconds']:.1f} s apart)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="(1): steps measured (steps 2 .. steps + 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each measurement")
    ap.add_argument("--straggler-steps", type=int, default=30, help="(2): steps measured (steps 2 .. N + 1)")
    ap.add_argument("--epoch-steps", type=int, default=200, help="(3): steps of the epoch-like fit")
    ap.add_argument("--rows", type=int, default=None, help="training rows (default: MNIST's 55,000)")
    ap.add_argument("--no-torch", action="store_true", help="(1): report peers.json's TorchDistributor figure "
                                                            "instead of measuring it")
    ap.add_argument("--quick", action="store_true", help="a smoke run of tiny sizes (writes one_job_quick.json)")
    ap.add_argument("--one", choices=("classic", "connect"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one, args.data, args.epoch_steps)
    if args.quick:
        args.steps, args.rounds, args.straggler_steps, args.epoch_steps = 4, 1, 4, 12
        args.rows = args.rows or 3200
    with_torch = not args.no_torch and torch_available()
    mnist = data.load_mnist()
    rows = args.rows or len(mnist.train.labels)
    images, labels = mnist.train.images[:rows], mnist.train.labels[:rows]
    folder = Path(tempfile.mkdtemp(prefix="one_job_bench_"))
    result = {"cpu": cpu(), "rows": rows, "rounds": args.rounds, "quick": args.quick,
              "command": " ".join(["python benchmarks/one_job.py", *sys.argv[1:]])}
    try:
        data_path = write_rows(images, labels, folder)
        print(f"(1) LeNet 2 x 64 on local[2]: per-step vs one-job{' vs TorchDistributor' if with_torch else ''}",
              flush=True)
        result["lenet_2x64_local2"] = lenet_2x64(data_path, images, labels, args.steps, args.rounds, with_torch)
        print("(2) 4 x 64 with stragglers, b = 1, on local[5]: per-step vs one-job", flush=True)
        result["stragglers_4x64_b1_local5"] = stragglers_4x64(data_path, rows, args.straggler_steps, args.rounds)
        print("(3) Spark Connect vs classic, one-job engine, fresh processes", flush=True)
        result["connect_vs_classic_2x64"] = connect_vs_classic(data_path, args.epoch_steps, args.rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(result)
    path = save("one_job_quick" if args.quick else "one_job", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
