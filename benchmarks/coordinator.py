"""The one-job engine's coordinator and driver: what the coordinator costs per push, whether the driver's memory stays
flat over a long fit, and backup workers at N = 96 + 4 with emulated compute. Each part runs in a fresh Python process.

(1) ``push``: a ``ParameterServer`` (``cluster.async_service``) holding LeNet's parameters (float32, flattened), and
    N + b clients (``wire.parameters.AsyncClient``, as the long tasks use it) in two client processes on 127.0.0.1
    that compute nothing: each pulls a version, pushes a zero gradient of LeNet's size at once, pulls the next.
    Synchronous policy (``keep`` = N), driven as ``cluster.one_job.kept_sum`` drives it: publish a version, wait for
    its first N pushes, take their sum, ``--push-steps`` versions per N + b in ``--clients`` (a quarter of them above
    16 clients). Measured in the coordinator's process: per version the wall time of publish + wait + take and the
    process's CPU time (all its threads); per push handled and per pull served, the serving thread's CPU time
    (``time.thread_time``, the kernel's socket copies included) and its wall time; the process's peak RSS. The
    asynchronous policy (``keep`` None, the real ``async_sgd.Updater``: SGD-Nesterov + L2 on LeNet) beside it, between
    the 5th update and the last ``clients`` (while pushes are refused as the budget is spent): per applied update the
    apply thread's CPU and the process's, and updates per second. Each setting in a fresh process (its memory its
    own), ``--push-rounds`` rounds interleaved; medians over the versions, pushes and updates, then over the rounds.
(2) ``memory``: a ``--memory-steps`` one-job fit (``SyncSGD.fit_frame``, real LeNet compute, batch 8, 600 MNIST
    rows) on ``local[2]`` with 2 workers, and on ``local[3]`` with 2 workers + 1 backup worker (late pushes refused):
    this process's RSS (/proc/self/statm), threads and open descriptors every 100 steps (``on_step``); first, last, max,
    the change from step 1,000 to the end and the slope over it, and what the fit's step records take. "flat": the
    last sample within 8 MB (a little more than one 6.3 MiB parameter vector) of the step-1,000 sample, and threads
    and descriptors unchanged.
(3) ``scale``: N = 96 + b on the one-job engine on ``local[100]`` (one slot per long task), tasks of emulated compute
    (``emulation.EmulatedCompute``: shift 3 s + an exponential tail of mean 3 s, as ``scale.py --compute 3``),
    b = 4 and b = 0, ``--scale-steps`` steps each after one dropped (its tasks' start, given 600 s instead of
    ``fit_frame``'s default); mean step and b = 4 / b = 0, beside what the same draws predict (the mean N-th shortest
    of the N + b drawn times: the order statistic alone) and the long-run order statistic (shift + tail mean x
    (H(N + b) - H(b))); the driver's peak RSS and the Python workers' PSS. ``--per-step`` adds the per-step engine at
    the same setting and draws (``SyncSGD.fit``, as ``scale.py``), in a process of its own: the two engines' Python
    workers are not shared, and 200 of them (~12 GB each hundred) do not fit beside each other.

Writes benchmarks/results/coordinator.json (``--quick``: a smoke run of tiny sizes, to coordinator_quick.json; its
numbers are not a result).

    python benchmarks/coordinator.py [--parts push,memory,scale] [--push-steps 200] [--push-rounds 3]
                                     [--clients 2+1,8+2,32+4,96+4] [--memory-steps 3000] [--scale-steps 15]
                                     [--compute 3] [--per-step] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
from common import cpu, save

COUNT = 16  # examples a zero-compute client says its gradient sums (any positive number)
CLIENT_PROCESSES = 2
PAGE = resource.getpagesize()


# -- (1) the coordinator's cost per push -----------------------------------------------------------------------------

def lenet_flat() -> np.ndarray:
    from mnist_lenet_spark import models
    from mnist_lenet_spark.models import base
    params = models.network_from("lenet").init_params(0)
    return base.flatten(params, base.param_spec(params)).astype(np.float32)


def timed_server_class():
    """A ``ParameterServer`` that times, in the thread that does it, each push handled, each pull served and each
    update applied (the methods themselves are the package's)."""
    from mnist_lenet_spark.cluster.async_service import ParameterServer
    from mnist_lenet_spark.wire.parameters import KEPT

    class TimedServer(ParameterServer):
        def __init__(self, *args, **kwargs):
            self.timings = {"push_kept": [], "push_late": [], "pull": [], "apply": []}  # (CPU s, wall s)
            self.measuring = False
            self._status = threading.local()
            super().__init__(*args, **kwargs)

        def _record(self, kind, cpu0, wall0):
            if self.measuring:
                self.timings[kind].append((time.thread_time() - cpu0, time.perf_counter() - wall0))

        def _keep(self, item):
            self._status.value = super()._keep(item)
            return self._status.value

        def _push(self, conn, partition, attempt):
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            self._status.value = None
            super()._push(conn, partition, attempt)
            kind = "push_kept" if self.keep is None or self._status.value == KEPT else "push_late"
            self._record(kind, cpu0, wall0)

        def _pull(self, conn):
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            super()._pull(conn)
            self._record("pull", cpu0, wall0)

        def _apply_one(self, item):
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            try:
                return super()._apply_one(item)
            finally:
                self._record("apply", cpu0, wall0)
    return TimedServer


def client_process(spec: dict) -> None:
    """Child: zero-compute clients, one thread each, until the coordinator says stop; prints a JSON line."""
    from mnist_lenet_spark.wire.common import Endpoint
    from mnist_lenet_spark.wire.parameters import APPLIED, AsyncClient
    endpoint = Endpoint(spec["host"], spec["port"], bytes.fromhex(spec["token"]))
    grad = np.zeros(spec["size"], np.float32)
    pushes, errors = [0] * len(spec["partitions"]), []

    def run(i: int, partition: int) -> None:
        try:
            client = AsyncClient(endpoint, partition, 0)
        except OSError as e:
            errors.append(f"{partition}: {e}")
            return
        try:
            after = -1
            while True:
                go, version, _ = client.pull(after)
                if not go:
                    return
                status, _ = client.push(version, grad, 0.0, COUNT)
                pushes[i] += 1
                if spec["sync"]:
                    after = version  # the synchronous task's loop: the next version, whatever the status
                elif status != APPLIED:
                    return  # asynchronous: the budget is spent
        except Exception as e:  # noqa: BLE001 - reported to the parent
            errors.append(f"{partition}: {type(e).__name__}: {e}")
        finally:
            client.close()
    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(spec["partitions"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"pushes": sum(pushes), "errors": errors}))


def start_clients(server, partitions: int, sync: bool) -> list[subprocess.Popen]:
    procs = []
    for k in range(min(CLIENT_PROCESSES, partitions)):
        spec = {"host": server.endpoint.host, "port": server.endpoint.port, "token": server.token.hex(),
                "size": int(server.params.size), "partitions": list(range(k, partitions, CLIENT_PROCESSES)),
                "sync": sync}
        proc = subprocess.Popen([sys.executable, __file__, "--client-process"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        procs.append(proc)
    deadline = time.monotonic() + 120
    while len(server.newest_attempt) < partitions:  # every client has said hello
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(server.newest_attempt)} of {partitions} clients connected")
        time.sleep(0.01)
    return procs


def end_clients(procs: list[subprocess.Popen]) -> dict:
    outs = []
    for proc in procs:
        out = proc.stdout.read()  # its stdin was closed after the spec
        proc.wait(60)
        outs.append(json.loads(out.strip().splitlines()[-1]))
    errors = [e for o in outs for e in o["errors"]]
    if errors:
        raise RuntimeError(f"clients failed: {errors[:3]}")
    return {"client_pushes": sum(o["pushes"] for o in outs)}


def ms_medians(pairs: list[tuple[float, float]]) -> dict:
    if not pairs:
        return {"count": 0}
    return {"count": len(pairs), "cpu_ms": statistics.median(c for c, _ in pairs) * 1e3,
            "wall_ms": statistics.median(w for _, w in pairs) * 1e3}


def sync_coordinator(flat: np.ndarray, n: int, b: int, steps: int, warmup: int = 5) -> dict:
    """``steps`` versions (after ``warmup``) of the synchronous policy, keep = N, with N + b zero-compute clients."""
    reset_peak_rss()
    rss_at_start = rss_mb()
    server = timed_server_class()(flat, None, steps + warmup + 1, n + b, keep=n, version=-1)
    walls, cpus = [], []
    try:
        procs = start_clients(server, n + b, sync=True)
        for v in range(steps + warmup):
            if v == warmup:
                server.measuring = True
            t0, c0 = time.perf_counter(), time.process_time()
            server.publish(v, flat)
            deadline = time.monotonic() + 60
            while not server.kept.wait(0.01):  # as one_job.kept_sum (which checks the job meanwhile)
                if server.error is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"version {v}: no {n} pushes ({server.error})")
            sums, _ = server.take()
            if v >= warmup:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            assert sums.count == n * COUNT, sums.count
        server.measuring = False
        server.stop()
        clients = end_clients(procs)
    finally:
        server.shutdown()
    t = server.timings
    out = {"n": n, "b": b, "versions": steps, "version_wall_ms": statistics.median(walls) * 1e3,
           "version_wall_ms_mean": statistics.mean(walls) * 1e3,
           "version_process_cpu_ms": statistics.median(cpus) * 1e3,
           "pushes_per_version": (len(t["push_kept"]) + len(t["push_late"])) / steps,
           "push_kept": ms_medians(t["push_kept"]), "push_late": ms_medians(t["push_late"]),
           "pull": ms_medians(t["pull"]), "refused": dict(server.refused), "rss_at_start_mb": rss_at_start,
           "peak_rss_mb": _peak_rss_mb(), **clients}
    out["process_cpu_ms_per_push"] = out["version_process_cpu_ms"] / (n + b)
    return out


def async_coordinator(flat: np.ndarray, clients: int, updates: int, warmup: int = 5) -> dict:
    """``updates`` applied updates (after ``warmup``, before the last ``clients``) of the asynchronous policy with the
    real ``Updater``."""
    from mnist_lenet_spark import models
    from mnist_lenet_spark.async_sgd import Updater
    from mnist_lenet_spark.config import SGDConfig
    from mnist_lenet_spark.loop import update
    model = models.network_from("lenet")
    spec, state = update.new_state(model, 0)
    state.params, state.velocity = state.params.astype(np.float32), state.velocity.astype(np.float32)
    budget = warmup + updates + clients  # the last ``clients`` updates, and the pushes refused then, are not measured
    updater = Updater(model, spec, state, SGDConfig(), budget, per_epoch=10**6)
    marks: dict[str, tuple[float, float]] = {}

    def after_apply(version: int, positions) -> None:  # in the apply thread, after each update is published
        if version == warmup:
            server.measuring = True
            marks["start"] = (time.perf_counter(), time.process_time())
        elif version == warmup + updates:
            marks["end"] = (time.perf_counter(), time.process_time())
            server.measuring = False
    reset_peak_rss()
    rss_at_start = rss_mb()
    server = timed_server_class()(state.params, updater, budget, clients, after_apply=after_apply)
    try:
        procs = start_clients(server, clients, sync=False)
        if not server.done.wait(600):
            raise RuntimeError(f"async: {server.applied} of {budget} updates in 600 s")
        server.stop()
        out_clients = end_clients(procs)
    finally:
        server.shutdown()
    if server.error is not None:
        raise server.error
    wall, cpu_s = (marks["end"][0] - marks["start"][0]), (marks["end"][1] - marks["start"][1])
    t = server.timings
    return {"clients": clients, "updates": updates, "updates_per_second": updates / wall,
            "process_cpu_ms_per_update": cpu_s / updates * 1e3, "apply": ms_medians(t["apply"]),
            "push": ms_medians(t["push_kept"]), "pull": ms_medians(t["pull"]), "refused": dict(server.refused),
            "rss_at_start_mb": rss_at_start, "peak_rss_mb": _peak_rss_mb(), **out_clients}


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: the peak RSS (VmHWM) starts again from the current RSS


def median_nested(rows: list[dict]) -> dict:
    """Number by number, the median over ``rows`` of the same shape (nested dicts; other values: the first's)."""
    out = {}
    for key, value in rows[0].items():
        if isinstance(value, dict):
            out[key] = median_nested([r[key] for r in rows])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in rows)
        else:
            out[key] = value
    return out


def push_one(spec: str) -> dict:
    """One setting of (1) in a fresh process, so that its memory (the peak RSS) is its own: ``sync:N:b:versions`` or
    ``async:clients:updates``."""
    out = subprocess.run([sys.executable, __file__, "--push-one", spec], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_push_one(spec: str) -> dict:
    policy, *numbers = spec.split(":")
    flat = lenet_flat()
    if policy == "sync":
        n, b, steps = map(int, numbers)
        return sync_coordinator(flat, n, b, steps)
    clients, updates = map(int, numbers)
    return async_coordinator(flat, clients, updates)


def part_push(args) -> dict:
    flat = lenet_flat()
    configs = [tuple(int(x) for x in c.split("+")) for c in args.clients.split(",")]
    out = {"package": package_paths(), "parameters": int(flat.size),
           "parameter_mb": flat.nbytes / 2**20,
           "client_processes": CLIENT_PROCESSES,
           "statistic": "medians over the measured versions, pushes, pulls and updates of each round, then the "
                        "median over rounds, number by number", "sync": [], "async": []}
    rounds: dict[str, list[dict]] = {}
    for r in range(args.push_rounds):  # interleaved: every setting sees the machine's load of each round
        for n, b in configs:
            steps = args.push_steps if n + b <= 16 else max(args.push_steps // 4, 10)
            row = push_one(f"sync:{n}:{b}:{steps}")
            row["load_average_after"] = os.getloadavg()[0]  # this part's own 3 processes count too
            rounds.setdefault(f"sync {n}+{b}", []).append(row)
            log(f"  round {r + 1}: sync N + b = {n} + {b}: version {row['version_wall_ms']:.1f} ms wall, "
                f"{row['version_process_cpu_ms']:.1f} ms CPU ({row['process_cpu_ms_per_push']:.2f} per push + pull); "
                f"push kept {row['push_kept'].get('cpu_ms', 0):.2f} ms CPU, late "
                f"{row['push_late'].get('cpu_ms', 0):.2f}, pull {row['pull'].get('cpu_ms', 0):.2f}; "
                f"{row['pushes_per_version']:.1f} pushes a version")
        for n, b in configs:
            updates = args.push_steps if n + b <= 16 else max(args.push_steps // 2, 10)
            row = push_one(f"async:{n + b}:{updates}")
            row["load_average_after"] = os.getloadavg()[0]
            rounds.setdefault(f"async {n + b}", []).append(row)
            log(f"  round {r + 1}: async {n + b} clients: {row['updates_per_second']:.1f} updates/s, apply "
                f"{row['apply']['cpu_ms']:.2f} ms CPU, {row['process_cpu_ms_per_update']:.2f} ms process CPU an update")
    for key, rows in rounds.items():
        policy = key.split()[0]
        merged = median_nested(rows)
        merged["each_round"] = [r["version_wall_ms" if policy == "sync" else "updates_per_second"] for r in rows]
        merged["load_average_each_round"] = [r["load_average_after"] for r in rows]
        merged["peak_rss_mb_each_round"] = [r["peak_rss_mb"] for r in rows]
        out[policy].append(merged)
    out["rounds"] = args.push_rounds
    return out


# -- (2) the driver's memory over a long one-job fit ----------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def memory_fit(spark, images, labels, workers: int, backup: int, steps: int, every: int = 100) -> dict:
    from mnist_lenet_spark import spark as msp
    from mnist_lenet_spark.cluster import one_job
    frame = one_job.frame_of(spark, images, labels)
    sgd = msp.SyncSGD(spark, workers, batch_size=8, backup_workers=backup, validate_every=0)
    samples = []
    before = {"rss_mb": rss_mb(), "threads": os_threads(), "open_fds": open_fds()}

    def on_step(record):
        if record["step"] % every == 0:
            samples.append({"step": record["step"], "rss_mb": rss_mb(), "threads": os_threads(),
                            "python_threads": threading.active_count(), "open_fds": open_fds()})
            if record["step"] % (every * 10) == 0:
                log(f"    step {record['step']}: RSS {samples[-1]['rss_mb']:.1f} MB, {samples[-1]['threads']} "
                    f"threads, {samples[-1]['open_fds']} fds")
    t0 = time.perf_counter()
    result = sgd.fit_frame(frame, epochs=10**6, max_steps=steps, on_step=on_step)
    wall = time.perf_counter() - t0
    after = {"rss_mb": rss_mb(), "threads": os_threads(), "open_fds": open_fds(),
             "active_jobs": len(spark.sparkContext.statusTracker().getActiveJobsIds())}
    rss = [s["rss_mb"] for s in samples]
    late = [s for s in samples if s["step"] >= 1000] or samples
    slope = float(np.polyfit([s["step"] for s in late], [s["rss_mb"] for s in late], 1)[0]) * 1000
    growth = late[-1]["rss_mb"] - late[0]["rss_mb"]
    steady = all(s["threads"] == late[0]["threads"] and s["open_fds"] == late[0]["open_fds"] for s in late)
    return {"workers": workers, "backup_workers": backup, "steps": len(result.history), "fit_seconds": wall,
            "history_kb_per_step": history_bytes(result.history) / len(result.history) / 1024,
            "median_step_ms": statistics.median(h["seconds"] for h in result.history) * 1e3,
            "refused_late": (result.late_tasks or {}).get("refused_late"), "before_fit": before, "after_fit": after,
            "task_attempts": len(result.tasks), "tasks_ended": sorted({r.ended for r in result.tasks}),
            "rss_first_mb": rss[0], "rss_last_mb": rss[-1], "rss_max_mb": max(rss), "rss_min_mb": min(rss),
            "from_step": late[0]["step"], "rss_growth_from_step_mb": growth, "rss_slope_mb_per_1000_steps": slope,
            "threads_and_fds_steady": steady, "flat": bool(abs(growth) <= 8.0 and steady), "samples": samples}


def history_bytes(history: list[dict]) -> int:
    """What the fit's step records hold (``FitResult.history``, one dict a step), counted with ``sys.getsizeof``:
    each dict, its values and the items of its lists."""
    total = 0
    for record in history:
        total += sys.getsizeof(record)
        for value in record.values():
            total += sys.getsizeof(value)
            if isinstance(value, (list, tuple)):
                total += sum(sys.getsizeof(item) for item in value)
    return total


def part_memory(args) -> dict:
    from mnist_lenet_spark import data, session
    train = data.load_mnist().train
    images, labels = train.images[:600], train.labels[:600]
    out = {"rows": 600, "batch_size": 8, "sampled_every": 100,
           "flat_means": "the last sample within 8 MB of the step-1,000 sample; threads and fds unchanged from it"}
    for workers, backup in ((2, 0), (2, 1)):
        master = f"local[{workers + backup}]"
        spark = session.session(master, conf={"spark.ui.enabled": "false"})
        spark.sparkContext.setLogLevel("ERROR")
        try:
            log(f"  {master}, {workers} workers + {backup} backup, {args.memory_steps} steps")
            row = memory_fit(spark, images, labels, workers, backup, args.memory_steps)
            out["package"] = package_paths(spark)  # after the fit: its Python worker would idle through it
        finally:
            spark.stop()
        row["master"] = master
        out[f"{workers}+{backup}"] = row
        log(f"  {master}: RSS first {row['rss_first_mb']:.1f}, last {row['rss_last_mb']:.1f}, max "
            f"{row['rss_max_mb']:.1f} MB; from step {row['from_step']}: {row['rss_growth_from_step_mb']:+.1f} MB "
            f"({row['rss_slope_mb_per_1000_steps']:+.2f} MB / 1,000 steps); flat: {row['flat']}; "
            f"median step {row['median_step_ms']:.1f} ms")
    return out


# -- (3) N = 96 + 4 on the one-job engine, emulated compute ---------------------------------------------------------

def harmonic(k: int) -> float:
    return sum(1 / i for i in range(1, k + 1))


def scale_fit(spark, engine: str, n: int, b: int, steps: int, emulation) -> dict:
    from scale import BATCH, SEED
    from mnist_lenet_spark import spark as msp
    from mnist_lenet_spark.cluster import one_job
    rows = (n + b) * BATCH * (steps + 1)  # one epoch holds every step
    # any pixels (the tasks sleep instead of computing), but not only 0 and 1: the one-job engine refuses those as
    # pixels scaled to 0..1
    images = (np.arange(rows * 28 * 28) % 251).astype(np.uint8).reshape(rows, 28, 28)
    labels = np.arange(rows) % 10
    sgd = msp.SyncSGD(spark, n, batch_size=BATCH, backup_workers=b, seed=SEED, emulation=emulation,
                      validate_every=0)
    t0 = time.perf_counter()
    if engine == "one-job":
        # 100 long tasks start (fork, imports, their rows) on 2 cores in ~100 s: more than the default 120 s allows
        result = sgd.fit_frame(one_job.frame_of(spark, images, labels), max_steps=steps + 1, start_seconds=600)
    else:
        result = sgd.fit(images, labels, max_steps=steps + 1)
    wall = time.perf_counter() - t0
    seconds = [h["seconds"] for h in result.history[1:]]
    out = {"engine": engine, "n": n, "b": b, "measured_steps": len(seconds), "mean": statistics.mean(seconds),
           "median": statistics.median(seconds), "p90": float(np.percentile(seconds, 90)), "seconds": seconds,
           "first_step": result.history[0]["seconds"], "fit_wall_seconds": wall,
           "late_tasks": result.late_tasks}
    if engine == "one-job":
        out["tasks_ended"] = sorted({r.ended for r in result.tasks})
        out["task_attempts"] = len(result.tasks)
    return out


def part_scale(args) -> dict:
    from scale import descendants, drawn_times, python_workers
    from mnist_lenet_spark import session
    from mnist_lenet_spark.executor.emulation import EmulatedCompute
    n, bs, steps = args.scale_n, (args.scale_b, 0), args.scale_steps
    emulation = EmulatedCompute(shift=args.compute, tail_mean=args.compute)
    slots = n + max(bs)
    out = {"n": n, "master": f"local[{slots}]", "steps_measured": steps, "compute": {"shift": args.compute,
           "tail_mean": args.compute, "distribution": "exponential"},
           "statistic": f"mean over steps 2-{steps + 1} of one fit each (the first step, with the tasks' start, "
                        "dropped); the same task draws in every fit"}
    for b in bs:
        draws = drawn_times(emulation, n, b, steps + 1)[1:]
        out[f"b{b}_order_statistic_mean"] = statistics.mean(times[n - 1] for times in draws)
        out[f"b{b}_long_run_order_statistic"] = args.compute + args.compute * (harmonic(n + b) - harmonic(b))
    out["order_statistic_ratio"] = out[f"b{bs[0]}_order_statistic_mean"] / out["b0_order_statistic_mean"]
    out["long_run_order_statistic_ratio"] = (out[f"b{bs[0]}_long_run_order_statistic"]
                                             / out["b0_long_run_order_statistic"])
    engine = args.scale_engine
    out["mem_available_gb_at_start"] = mem_available_gb()
    spark = session.session(f"local[{slots}]", conf={"spark.ui.enabled": "false", "spark.driver.memory": "4g"})
    spark.sparkContext.setLogLevel("ERROR")
    jvm = spark.sparkContext._gateway.proc.pid
    try:
        rows = {}
        for b in bs:
            log(f"  {engine}, N = {n}, b = {b}, {steps} + 1 steps on local[{slots}]")
            try:
                rows[b] = scale_fit(spark, engine, n, b, steps, emulation)
            except Exception as e:  # noqa: BLE001 - reported, the other runs go on
                rows[b] = {"engine": engine, "n": n, "b": b, "failed": f"{type(e).__name__}: {e}"[:2000]}
                log(f"    failed: {rows[b]['failed'][:500]}")
                continue
            rows[b]["python_workers"] = sum(1 for pid in descendants(jvm) if _is_python(pid))
            rows[b]["python_workers_pss_mb"] = python_workers(spark)["pss_mb"]  # their memory, shared pages split
            rows[b]["driver_peak_rss_mb"] = _peak_rss_mb()
            r = rows[b]
            log(f"    mean step {r['mean']:.2f} s (median {r['median']:.2f}, p90 {r['p90']:.2f}); order statistic "
                f"{out[f'b{b}_order_statistic_mean']:.2f} s; first step {r['first_step']:.1f} s; "
                f"late {r['late_tasks']}; {r['python_workers']} Python workers, {r['python_workers_pss_mb']:.0f} MB")
        key = engine.replace("-", "_")
        out[key] = {f"b{b}": rows[b] for b in bs}
        if all("mean" in rows[b] for b in bs):
            out[key]["ratio"] = rows[bs[0]]["mean"] / rows[0]["mean"]
            out[key]["measured_over_order_statistic"] = {
                f"b{b}": rows[b]["mean"] / out[f"b{b}_order_statistic_mean"] for b in bs}
            log(f"  {engine}: b = {bs[0]} / b = 0 = {out[key]['ratio']:.3f} (order statistics of these draws "
                f"{out['order_statistic_ratio']:.3f}, long run {out['long_run_order_statistic_ratio']:.3f})")
        out[key]["package"] = package_paths(spark)
    finally:
        spark.stop()
    return out


def merge_scale(one: dict, per_step: dict) -> dict:
    """The per-step engine's child's rows beside the one-job engine's (the same settings and draws)."""
    out = {**one, "per_step": per_step["per_step"], "per_step_minutes": per_step["minutes"],
           "per_step_mem_available_gb_at_start": per_step["mem_available_gb_at_start"]}
    if "ratio" in out["per_step"] and "ratio" in out["one_job"]:
        out["one_job_over_per_step"] = {k: out["one_job"][k]["mean"] / out["per_step"][k]["mean"]
                                        for k in out["one_job"] if k.startswith("b") and "mean" in out["one_job"][k]}
    return out


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2**20


def package_paths(spark=None) -> dict:
    """Where this process (and, given a classic session, its Python workers) imported the package from."""
    import mnist_lenet_spark
    out = {"driver": os.path.dirname(mnist_lenet_spark.__file__)}
    if spark is not None:
        out["executors"] = spark.sparkContext.parallelize([0], 1).map(
            lambda _: os.path.dirname(__import__("mnist_lenet_spark").__file__)).collect()[0]
    return out


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read()
    except OSError:
        return False


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


# -- the parent ------------------------------------------------------------------------------------------------------

PARTS = {"push": part_push, "memory": part_memory, "scale": part_scale}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def in_child(part: str, argv: list[str]) -> dict:
    """Run ``part`` in a fresh Python process (its own JVM, a driver whose memory is this part's alone); its
    progress goes to stderr as it comes."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", part], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"coordinator.py: part {part} failed (exit {proc.returncode}); its stderr is above")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["minutes"] = (time.perf_counter() - t0) / 60
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="push,memory,scale", help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--push-steps", type=int, default=200, help="(1): versions per N + b up to 16 clients (1/4 above)")
    ap.add_argument("--push-rounds", type=int, default=3, help="(1): rounds of every setting, interleaved")
    ap.add_argument("--clients", default="2+1,8+2,32+4,96+4", help="(1): N + b settings, comma-separated")
    ap.add_argument("--memory-steps", type=int, default=3000, help="(2): steps of each fit")
    ap.add_argument("--scale-steps", type=int, default=15, help="(3): measured steps per fit")
    ap.add_argument("--scale-n", type=int, default=96, help=argparse.SUPPRESS)
    ap.add_argument("--scale-b", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--compute", type=float, default=3.0, help="(3): the emulated shift and tail mean, seconds")
    ap.add_argument("--per-step", action="store_true",
                    help="(3): also the per-step engine at the same setting (in a process of its own)")
    ap.add_argument("--scale-engine", default="one-job", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="a smoke run of tiny sizes (coordinator_quick.json)")
    ap.add_argument("--child", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--push-one", help=argparse.SUPPRESS)
    args, argv = ap.parse_args(), sys.argv[1:]
    if args.client_process:
        return client_process(json.loads(sys.stdin.read()))
    if args.push_one:
        print(json.dumps(run_push_one(args.push_one)))
        return
    if args.quick and not args.child:
        argv = [*argv, "--push-steps", "20", "--push-rounds", "2", "--clients", "2+1,8+2", "--memory-steps", "300",
                "--scale-steps", "2",
                "--scale-n", "6", "--scale-b", "2", "--compute", "0.3"]
        args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(PARTS[args.child](args)))
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {', '.join(PARTS)}")
    result = {}
    for part in parts:
        log(f"({list(PARTS).index(part) + 1}) {part}")
        load = os.getloadavg()[0]
        result[part] = in_child(part, argv)
        if part == "scale" and args.per_step:  # its Python workers and JVM apart from the one-job engine's
            result[part] = merge_scale(result[part], in_child(part, [*argv, "--scale-engine", "per-step"]))
        result[part]["load_average_at_start"] = load  # the machine is shared: what else ran
        result[part]["command"] = " ".join(["python benchmarks/coordinator.py", *sys.argv[1:]])
        result[part]["cpu"] = cpu()
    path = save("coordinator_quick" if args.quick else "coordinator", result)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
