"""Backup workers at the paper's scale (Chen et al. 2016 use up to ~100 workers) on one machine, with emulated
compute (mnist_lenet_spark/executor/emulation.py): each task sleeps a time drawn from its TaskKey and returns a
LeNet-sized gradient (6.3 MiB); broadcasts, scheduler, task results, accumulator, step signal and update run for
real, on local[max N + max b] (136 task slots on 2 cores, the Python workers mostly asleep).

(1) Driver cost: tasks that take no time, N + b = N in --n, the plain (treeReduce) step and the backup step
    (b = 0: the same N results through the accumulator): median step = what the driver and the machine add;
    the slope over N is the cost per gradient.
(2) For every N in --n and b in --b: --steps steps with tasks of shift C + an exponential tail of mean C
    ("heavy": the tail's mean equals the compute), mean and p90 step time, beside the prediction: the mean
    over the same steps of the N-th shortest of the N + b drawn times, plus (1)'s cost at N + b tasks.
(3) The same with the distribution fitted to this project's LeNet task times (emulation.FITTED_*), b in {0, 4}.
(4) --fit: measure LeNet task times (batch 64, local[2], real compute) and fit shift + exponential tail.
Also: the Python workers' summed peak RSS; the CPU seconds per step of the Python workers, the JVM and the driver
process, and from them a cluster's prediction: the order statistic plus only the driver's share, one result at a
time (the driver process's CPU per gradient and that of the JVM's driver-side threads, told apart from the
executor's task threads by name: an upper bound, GC and shared threads included). Writes benchmarks/results/scale.json
and scale.png.

    python benchmarks/scale.py [--n 8,16,32,64,96,128] [--b 0,1,2,4,8] [--steps 8] [--compute 1.0]
    python benchmarks/scale.py --short      # N in 8, 32, 128; b in 0, 4; 4 steps (make bench)
    python benchmarks/scale.py --n 8,96 --b 0,4 --compute 3 --name scale-long   # tasks 3x longer: the machine's
                                            # own per-task cost (130 Python workers on 2 cores) matters 3x less
    python benchmarks/scale.py --combine --n 4,16,64,128 --b 4 --steps 6   # backup_combine driver vs executors
    python benchmarks/scale.py --fitted-only --fitted-scale 30 --n 8,32,96 --name fitted-x30   # (3) only, the
                                            # fitted shape 30x longer (same shift : tail ratio), so the machine's
                                            # share stays small as in --compute 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from common import RESULTS, cpu, save

from mnist_lenet_spark import data, session
from mnist_lenet_spark import spark as msp
from mnist_lenet_spark.executor.emulation import FITTED_SHIFT, FITTED_TAIL_MEAN, EmulatedCompute
from mnist_lenet_spark.loop.sharding import epoch_batches

BATCH = 16  # examples per task: only the count travels (the gradient is LeNet-sized whatever the batch)
SEED = 1


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the JVM's Python daemon and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def python_workers(spark) -> dict:
    """Summed PSS (MB: shared pages split between their sharers, so the sum is real memory) and CPU seconds of
    the Python processes under this session's JVM."""
    pss, cpu, count = 0.0, 0.0, 0
    for pid in descendants(spark.sparkContext._gateway.proc.pid):
        try:
            if b"python" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            cpu += cpu_seconds(pid)
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().split("\n")
            pss += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024  # kB
            count += 1
        except (OSError, IndexError, ValueError, StopIteration):
            pass
    return {"workers": count, "pss_mb": pss, "cpu_seconds": cpu}


def cpu_seconds(pid: int, tid: int | str | None = None) -> float:
    """utime + stime of process ``pid`` (all its threads), or of its thread ``tid``."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: JVM threads that do an executor's side of a task (local mode runs the executor in the driver's JVM): the task
#: itself, and the threads that feed its Python worker and watch it; every other thread (result getters, the DAG
#: scheduler, the dispatcher, the gateway to this Python, GC) is counted as the driver's (an upper bound)
EXECUTOR_THREADS = ("Executor task", "stdout writer f", "writer for pyth", "Worker Monitor ", "process reaper")


class JvmThreads:
    """CPU seconds of the JVM ``pid``'s threads, split into driver-side and executor-side by thread name, sampled
    every ``period`` s (Spark renames its task threads per task and ends idle ones: a name is read while its
    thread runs; a thread that ends between samples loses at most one period of CPU to the driver's side)."""

    def __init__(self, pid: int, period: float = 0.1):
        import threading
        self.pid, self.period = pid, period
        self.last = {tid: used for tid, _, used in self._threads()}  # what ran before counts for neither
        self.seconds = {"driver": 0.0, "executor": 0.0}
        self.by_name: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _threads(self):
        """(tid, name, CPU seconds so far) of each live thread."""
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                name = Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip()
                used = cpu_seconds(self.pid, tid)
            except OSError:  # the thread ended
                continue
            yield tid, name, used

    def _sample(self) -> None:
        for tid, name, now in self._threads():
            used = now - self.last.get(tid, 0.0)  # a thread new since the start: all of it
            self.seconds["executor" if name.startswith(EXECUTOR_THREADS) else "driver"] += used
            kind = name.rstrip("0123456789#-")  # "GC Thread#1" -> "GC Thread"
            self.by_name[kind] = self.by_name.get(kind, 0.0) + used
            self.last[tid] = now

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.seconds


def driver_peak_rss_mb() -> float:
    """This Python driver's peak RSS since the last ``reset_driver_peak`` (VmHWM)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def reset_driver_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS starts again from the current RSS


def drawn_times(emulation: EmulatedCompute, n: int, b: int, steps: int) -> list[list[float]]:
    """Per step, the N + b tasks' drawn compute times, shortest first (the same draws the tasks make)."""
    batches = epoch_batches((n + b) * BATCH * steps, n + b, BATCH, SEED, 0)
    return [sorted(emulation.seconds(batch.key) for batch in step) for step in batches[:steps]]


def predict(times: list[float], n: int, b: int, cost: dict) -> float:
    """A step's time from its drawn task times (shortest first) and the cost measured with tasks that take no time.

    Each result costs ``c`` ms of work that is done one result at a time, in the order the tasks finish
    (a single-server queue: done_i = max(arrival_i, done_i-1) + c): on the backup path the driver
    taking the gradients, on the plain path the results' serialisation and treeReduce's shuffle. The
    step ends when the N-th is done (b = 0: the last), plus the fixed cost of launching it."""
    path = "backup" if b else "plain"
    c, done = cost[f"{path}_ms_per_gradient"] / 1e3, 0.0
    for arrival in times[:n]:
        done = max(arrival, done) + c
    return cost[f"{path}_intercept_ms"] / 1e3 + done


def predict_again() -> None:
    """Recompute the prediction columns of benchmarks/results/scale.json from its own driver cost and settings
    (the draws are the same: seeded by their task keys)."""
    results = json.loads((RESULTS / "scale.json").read_text())
    for name in ("scale", "scale-short"):
        if name not in results:
            continue
        run_ = results[name]
        steps, cost = run_["settings"]["steps"], run_["driver_cost"]
        for key, emulation in (("heavy", EmulatedCompute(shift=run_["settings"]["compute"],
                                                         tail_mean=run_["settings"]["compute"])),
                               ("fitted", EmulatedCompute())):
            for row in run_[key]:
                draws = drawn_times(emulation, row["n"], row["b"], steps + 1)[1:]
                row["predicted_mean"] = statistics.mean(predict(t, row["n"], row["b"], cost) for t in draws)
                row["measured_over_predicted"] = row["mean"] / row["predicted_mean"]
                print(f"{name} {key} N={row['n']} b={row['b']}: {row['mean']:.2f} s measured, "
                      f"{row['predicted_mean']:.2f} s predicted ({row['measured_over_predicted']:.2f}x)")
    save("scale", results)
    if "scale" in results:
        plot(results["scale"]["heavy"], RESULTS / "scale.png")


def run(spark, n: int, b: int, steps: int, emulation: EmulatedCompute, combine: str = "driver") -> dict:
    """``steps`` emulated steps of N + b tasks (one more first, dropped: it readies any new Python worker)."""
    images = np.zeros(((n + b) * BATCH * (steps + 1), 28, 28), np.uint8)  # one epoch holds every step
    labels = np.zeros(len(images), np.int64)
    sgd = msp.SyncSGD(spark, n, batch_size=BATCH, backup_workers=b, seed=SEED, emulation=emulation,
                      backup_combine=combine)
    jvm = spark.sparkContext._gateway.proc.pid
    before = python_workers(spark)
    jvm_before, driver_before = cpu_seconds(jvm), time.process_time()
    threads = JvmThreads(jvm)
    reset_driver_peak()
    result = sgd.fit(images, labels, max_steps=steps + 1)
    after = python_workers(spark)
    jvm_cpu, driver_cpu = cpu_seconds(jvm) - jvm_before, time.process_time() - driver_before
    jvm_executor = threads.stop()["executor"]  # the rest of jvm_cpu: the driver's side (and what ended unseen)
    busiest = dict(sorted(threads.by_name.items(), key=lambda kv: -kv[1])[:8])
    seconds = [h["seconds"] for h in result.history[1:]]
    return {"mean": statistics.mean(seconds), "p90": float(np.percentile(seconds, 90)),
            "median": statistics.median(seconds), "seconds": seconds, "workers_pss_mb": after["pss_mb"],
            "driver_peak_rss_mb": driver_peak_rss_mb(),
            # CPU per step: the Python workers (on a cluster, spread over the executors' machines), the JVM
            # (local mode: the driver's scheduler and the executor's side of every task), this driver process
            # (its loop, the accumulator's server thread unpickling and adding the gradients: a cluster's serial part)
            "workers_cpu_seconds_per_step": (after["cpu_seconds"] - before["cpu_seconds"]) / (steps + 1),
            "jvm_cpu_seconds_per_step": jvm_cpu / (steps + 1), "driver_cpu_seconds_per_step": driver_cpu / (steps + 1),
            "jvm_driver_cpu_seconds_per_step": (jvm_cpu - jvm_executor) / (steps + 1),
            "jvm_busiest_threads_cpu_seconds": busiest,
            "late_tasks": result.late_tasks}


def driver_cost(spark, ns: list[int], steps: int) -> dict:
    """Zero-time tasks: the median step of the plain and the backup path at N tasks, and ms per gradient."""
    zero = EmulatedCompute(shift=0.0, tail_mean=0.0)
    out = {f"{path}_{what}": {} for path in ("plain", "backup") for what in ("ms", "cpu_ms")}
    for n in ns:
        # b = 0 with backup_workers would be the plain path: one backup task that takes no time either
        for path, measured in (("plain", run(spark, n, 0, steps, zero)), ("backup", run(spark, n - 1, 1, steps, zero))):
            out[f"{path}_ms"][n] = measured["median"] * 1e3
            out[f"{path}_cpu_ms"][n] = {part: measured[f"{part}_cpu_seconds_per_step"] * 1e3
                                        for part in ("workers", "jvm", "jvm_driver", "driver")}
            out.setdefault(f"{path}_busiest_jvm_threads", {})[n] = measured["jvm_busiest_threads_cpu_seconds"]
    for path in ("plain", "backup"):
        slope, intercept = np.polyfit(ns, [out[f"{path}_ms"][n] for n in ns], 1)
        out[f"{path}_ms_per_gradient"], out[f"{path}_intercept_ms"] = float(slope), float(intercept)
        for part in ("workers", "jvm", "jvm_driver", "driver"):  # CPU ms per gradient: who pays the slope above
            slope = np.polyfit(ns, [out[f"{path}_cpu_ms"][n][part] for n in ns], 1)[0]
            out[f"{path}_{part}_cpu_ms_per_gradient"] = float(slope)
    return out


def combine_compare(spark, ns: list[int], steps: int, compute: float) -> dict:
    """The kept gradients added on the driver (a running sum) or on the executors (a job over the kept
    tasks' cached results), side by side at each N: zero-time tasks with one backup (what each costs the
    driver, per step and split by process), and the heavy tail (shift + exponential of mean ``compute``) at b = 4;
    the plain treeReduce step beside both."""
    zero, heavy = EmulatedCompute(shift=0.0, tail_mean=0.0), EmulatedCompute(shift=compute, tail_mean=compute)
    kept = ("median", "mean", "p90", "driver_peak_rss_mb", "driver_cpu_seconds_per_step",
            "jvm_driver_cpu_seconds_per_step", "workers_cpu_seconds_per_step", "jvm_cpu_seconds_per_step",
            "jvm_busiest_threads_cpu_seconds")
    out = {}
    for n in ns:
        row = {"plain_zero": run(spark, n, 0, steps, zero), "plain_heavy": run(spark, n, 0, steps, heavy)}
        for combine in ("driver", "executors"):
            row[f"{combine}_zero"] = run(spark, n - 1, 1, steps, zero, combine)
            row[f"{combine}_heavy_b4"] = run(spark, n, 4, steps, heavy, combine)
        out[n] = {k: {m: v[m] for m in kept} for k, v in row.items()}
        r = out[n]
        print(f"N={n:3d} zero-time median step: plain {r['plain_zero']['median']:.2f} s, backup on the driver "
              f"{r['driver_zero']['median']:.2f} s, on the executors {r['executors_zero']['median']:.2f} s; driver "
              f"process CPU per step {r['driver_zero']['driver_cpu_seconds_per_step']:.3f} vs "
              f"{r['executors_zero']['driver_cpu_seconds_per_step']:.3f} s; heavy b=4 mean "
              f"{r['driver_heavy_b4']['mean']:.2f} vs {r['executors_heavy_b4']['mean']:.2f} s "
              f"(b=0 {r['plain_heavy']['mean']:.2f} s)", flush=True)
    return out


def cluster_cost(cost: dict) -> dict:
    """``predict``'s cost for a cluster, where the Python workers and the executors' JVMs are other machines': per
    gradient only the driver process's CPU and that of the JVM's driver-side threads (an upper bound: GC and the
    threads local mode shares are in it); the fixed cost as measured."""
    out = dict(cost)
    for path in ("plain", "backup"):
        out[f"{path}_ms_per_gradient"] = (cost[f"{path}_driver_cpu_ms_per_gradient"]
                                          + cost[f"{path}_jvm_driver_cpu_ms_per_gradient"])
    return out


def grid(spark, ns, bs, steps, emulation: EmulatedCompute, cost: dict) -> list[dict]:
    rows, on_cluster = [], cluster_cost(cost)
    for n in ns:
        for b in bs:
            path = "backup" if b else "plain"
            draws = drawn_times(emulation, n, b, steps + 1)[1:]  # the first step is dropped, as in run()
            predicted = statistics.mean(predict(times, n, b, cost) for times in draws)
            tail = statistics.mean(times[n - 1] for times in draws)  # the order statistic alone
            cluster = statistics.mean(predict(times, n, b, on_cluster) for times in draws)
            measured = run(spark, n, b, steps, emulation)
            kept = ("mean", "p90", "workers_pss_mb", "driver_peak_rss_mb", "workers_cpu_seconds_per_step",
                    "jvm_cpu_seconds_per_step", "jvm_driver_cpu_seconds_per_step", "driver_cpu_seconds_per_step",
                    "late_tasks")
            row = {"n": n, "b": b, **{k: measured[k] for k in kept},
                   "predicted_mean": predicted, "measured_over_predicted": measured["mean"] / predicted,
                   "cluster_predicted_mean": cluster, "order_statistic_mean": tail,
                   "tail_part": tail - emulation.shift,  # vs the driver's:
                   "driver_part": (cost[f"{path}_intercept_ms"] + cost[f"{path}_ms_per_gradient"] * (n + b)) / 1e3}
            rows.append(row)
            print(f"  N={n:3d} b={b}: mean {row['mean']:.2f} s (predicted {predicted:.2f}, "
                  f"{row['measured_over_predicted']:.2f}x; on a cluster {cluster:.2f}; N-th of N + b drawn "
                  f"{tail:.2f}), p90 {row['p90']:.2f} s, "
                  f"driver peak {row['driver_peak_rss_mb']:.0f} MB, workers {row['workers_pss_mb']:.0f} MB PSS, "
                  f"{row['workers_cpu_seconds_per_step']:.2f} CPU-s/step", flush=True)
    return rows


def best_b(rows: list[dict]) -> dict:
    out = {}
    for n in sorted({r["n"] for r in rows}):
        mine = [r for r in rows if r["n"] == n]
        base = next(r for r in mine if r["b"] == 0)
        best = min(mine, key=lambda r: r["mean"])
        out[n] = {"b": best["b"], "mean": best["mean"], "over_b0": best["mean"] / base["mean"]}
    return out


def fit_task_times(steps: int = 40) -> dict:
    """LeNet task times (batch 64, two one-core tasks on local[2]), fitted as shift + exponential tail."""
    spark = session.session("local[2]")
    mnist = data.load_mnist()
    sgd = msp.SyncSGD(spark, 2, batch_size=64)
    result = sgd.fit(mnist.train.images, mnist.train.labels, max_steps=steps + 5)
    spark.stop()
    seconds = np.array([s for h in result.history[5:] for s in h["each_task_seconds"]])
    shift = float(seconds.min())
    return {"tasks": int(len(seconds)), "shift": shift, "tail_mean": float(seconds.mean() - shift),
            "median": float(np.median(seconds)), "p90": float(np.percentile(seconds, 90))}


def driver_rss_child(n: int, b: int, fits: int = 3) -> None:
    """In this fresh process: ``fits`` backup fits of N + b zero-time tasks; prints each fit's driver peak RSS."""
    spark = session.session(f"local[{n + b}]", conf={"spark.ui.enabled": "false", "spark.driver.memory": "4g"})
    spark.sparkContext.setLogLevel("ERROR")
    zero = EmulatedCompute(shift=0.0, tail_mean=0.0)
    peaks = [run(spark, n, b, 5, zero)["driver_peak_rss_mb"] for _ in range(fits)]
    spark.stop()
    print(json.dumps(peaks))


def driver_rss() -> dict:
    """The backup path's driver peak RSS at N = 8 and N = 128 (b = 4), fresh processes, with glibc's default
    (dynamic) mmap threshold and with it fixed at 1 MB (MALLOC_MMAP_THRESHOLD_), so that freed gradient-sized
    blocks go back to the system instead of staying in each thread's heap."""
    import subprocess
    import sys
    out = {}
    for label, extra in (("default", {}), ("mmap_threshold_1mb", {"MALLOC_MMAP_THRESHOLD_": "1048576"})):
        for n in (8, 128):
            proc = subprocess.run([sys.executable, __file__, "--driver-rss-child", str(n), "4"], capture_output=True,
                                  text=True, check=True, env={**os.environ, **extra})
            out[f"{label}_n{n}"] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"driver peak RSS, {label}, N = {n}, b = 4, three fits: {out[f'{label}_n{n}']}", flush=True)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in sorted({r["b"] for r in rows}):
        mine = [r for r in rows if r["b"] == b]
        line, = ax.plot([r["n"] for r in mine], [r["mean"] for r in mine], "o-", label=f"b = {b}")
        ax.plot([r["n"] for r in mine], [r["predicted_mean"] for r in mine], "--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("N (gradients kept per step)")
    ax.set_ylabel("mean step (s)")
    ax.set_title("Backup workers, emulated heavy tail: measured (solid), order statistics + driver (dashed)")
    ax.title.set_fontsize(9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_cost(cost: dict) -> None:
    print(f"driver cost, tasks that take no time: plain {cost['plain_ms']} ms, backup {cost['backup_ms']} ms; "
          f"per gradient: plain {cost['plain_ms_per_gradient']:.2f} ms, backup "
          f"{cost['backup_ms_per_gradient']:.2f} ms", flush=True)
    for path in ("plain", "backup"):
        print(f"  {path}: CPU ms per gradient: Python workers {cost[f'{path}_workers_cpu_ms_per_gradient']:.1f}, "
              f"JVM {cost[f'{path}_jvm_cpu_ms_per_gradient']:.1f} (its driver-side threads "
              f"{cost[f'{path}_jvm_driver_cpu_ms_per_gradient']:.1f}), "
              f"driver process {cost[f'{path}_driver_cpu_ms_per_gradient']:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="8,16,32,64,96,128")
    ap.add_argument("--b", default="0,1,2,4,8")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--compute", type=float, default=1.0, help="C: the shift and the tail's mean, seconds")
    ap.add_argument("--short", action="store_true", help="N in 8, 32, 128; b in 0, 4; 4 steps")
    ap.add_argument("--name", help="the key of this run in scale.json (default: scale, or scale-short)")
    ap.add_argument("--fit", action="store_true", help="only measure and fit LeNet's task times")
    ap.add_argument("--predict-again", action="store_true", help="only recompute the saved run's predictions")
    ap.add_argument("--driver-rss", action="store_true", help="only the driver's peak RSS at N = 8 and 128")
    ap.add_argument("--driver-split", action="store_true",
                    help="only (1), tasks that take no time at --n: whose CPU each gradient costs")
    ap.add_argument("--fitted-scale", type=float, default=1.0,
                    help="the fitted distribution's shift and tail mean times this (its shape kept)")
    ap.add_argument("--fitted-only", action="store_true", help="only (1) and (3)")
    ap.add_argument("--combine", action="store_true",
                    help="only the kept gradients added on the driver vs on the executors, at --n")
    ap.add_argument("--driver-rss-child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver_rss_child:
        return driver_rss_child(*args.driver_rss_child)
    if args.driver_rss:
        save("scale", {"driver_rss": driver_rss()})
        return
    if args.predict_again:
        return predict_again()
    if args.fit:
        fitted = fit_task_times()
        print(f"LeNet task times: {fitted}")
        save("scale", {"fitted_task_times": fitted})
        return
    ns = [8, 32, 128] if args.short else [int(x) for x in args.n.split(",")]
    bs = [0, 4] if args.short else [int(x) for x in args.b.split(",")]
    steps = 4 if args.short else args.steps
    slots = max(ns) + max(bs)
    spark = session.session(f"local[{slots}]", conf={"spark.ui.enabled": "false", "spark.driver.memory": "4g"})
    spark.sparkContext.setLogLevel("ERROR")
    t0 = time.perf_counter()
    try:
        if args.combine:
            compared = combine_compare(spark, ns, steps, args.compute)
            save("scale", {args.name or "combine": {"settings": {"n": ns, "steps": steps, "compute": args.compute},
                                                    "by_n": compared, "cpu": cpu(),
                                                    "minutes": (time.perf_counter() - t0) / 60}})
            return
        cost = driver_cost(spark, ns, steps)
        if args.driver_split:
            print_cost(cost)
            save("scale", {args.name or "driver_split": {"settings": {"n": ns, "steps": steps}, "driver_cost": cost,
                                                         "cpu": cpu()}})
            return
        print_cost(cost)
        heavy_rows = []
        if not args.fitted_only:
            heavy = EmulatedCompute(shift=args.compute, tail_mean=args.compute)
            print(f"heavy tail (shift {args.compute} s + exponential of mean {args.compute} s):", flush=True)
            heavy_rows = grid(spark, ns, bs, steps, heavy, cost)
        fitted = EmulatedCompute(shift=FITTED_SHIFT * args.fitted_scale, tail_mean=FITTED_TAIL_MEAN * args.fitted_scale)
        print(f"fitted to LeNet x {args.fitted_scale} (shift {fitted.shift:.3f} s + exponential of mean "
              f"{fitted.tail_mean:.3f} s):", flush=True)
        fitted_rows = grid(spark, ns, [0, 4], steps, fitted, cost)
    finally:
        spark.stop()
    name = args.name or ("scale-short" if args.short else "scale")
    result = {name: {"settings": {"n": ns, "b": bs, "steps": steps, "compute": args.compute, "slots": slots,
                                  "fitted_scale": args.fitted_scale},
                     "driver_cost": cost, "heavy": heavy_rows, "heavy_best_b": best_b(heavy_rows),
                     "fitted": fitted_rows, "fitted_best_b": best_b(fitted_rows),
                     "minutes": (time.perf_counter() - t0) / 60, "cpu": cpu()}}
    for n, best in result[name]["heavy_best_b"].items() if heavy_rows else ():
        print(f"N={n}: best b = {best['b']} ({best['over_b0']:.2f}x b = 0)")
    save("scale", result)
    if name == "scale" and heavy_rows:
        plot(heavy_rows, RESULTS / "scale.png")
    print(json.dumps({"minutes": result[name]["minutes"]}))


if __name__ == "__main__":
    main()
