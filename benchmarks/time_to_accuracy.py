"""Time to accuracy: synchronous SGD with b = 0, 1, 2, 4 backup workers against asynchronous SGD (Downpour-style), at
N workers each (Chen et al. 2016, "Revisiting Distributed Synchronous SGD", figures 5-7).

Every run has the same model (--model), initial weights (--seed), per-worker batch, straggler model (each task delayed
--straggler-delay s with probability --straggler-prob, drawn from the same seeded keys; --task-tail adds to every
task a wait drawn from the fitted LeNet tail or a heavy Pareto tail) and wall-clock budget. The
parameters are kept at fixed wall-clock times (every --snapshot-seconds from the first update's start, and at the
budget): a snapshot at time T holds the parameters as they were at T, the last update applied by then. They are
evaluated on the test set after the run, off the clock. Prints one comparison table: time to each --targets
accuracy (at snapshot granularity; "-": not reached within the budget), test accuracy at the budget, staleness
(async: mean, p90, max), updates and examples per second, and the driver's update share: the fraction of the
budget the driver spent turning gradient sums into updates (mean, L2, SGD-Nesterov, batch norm's statistics).
Writes the table and every run's curve (time, examples seen, accuracy per snapshot) to --out (default
benchmarks/results/time_to_accuracy.json, with the CPU), and two plots beside it: test error (log axis)
against wall-clock time (OUT_time.png) and against examples seen (OUT_examples.png); --replot FILE redraws them
from a results file alone.

Learning rates: sync takes --sync-lr scaled linearly to N x batch with a warm-up (the README's setting), async
--async-lr at its batch. With --tune-lrs, each mode picks its rate per N among those values instead, by validation
accuracy (SystemML's validation split, --validation-size images) after --tune-seconds of training: sync at b = 0
(its rate serves every b: the same N x batch an update), async at its batch. The asynchronous mode needs a task
slot per worker: on a master with fewer slots than N, only as many tasks push as there are slots (AsyncSGD warns).
--lrs-from takes each mode's rate per N from an earlier run's results (its tuned choices), to run the same rates
under another tail, model setting or cluster without tuning again.

--netns-cluster runs the whole experiment on the namespace cluster of tests/netns_cluster.py (root, and the packed
environment of make pack): max N + max b one-core worker hosts, each with its own network and /tmp, and the
driver on a host of its own; it writes the same results.

    python benchmarks/time_to_accuracy.py                  # N = 4, 8; sync b = 0, 1, 2, 4; async; 300 s each
    python benchmarks/time_to_accuracy.py --tune-lrs 0.005,0.01,0.02   # each mode's rate picked on validation
    python benchmarks/time_to_accuracy.py --quick          # N = 2; sync b = 0, 1; async; a few seconds each
    python benchmarks/time_to_accuracy.py --replot benchmarks/results/time_to_accuracy_fitted.json   # plots only
    sudo .venv/bin/python benchmarks/time_to_accuracy.py --netns-cluster --workers 4 --lrs-from OUT.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PACKED_ENV, RESULTS, ROOT, cpu, namespace_cluster_missing  # noqa: E402

from mnist_lenet_spark import data, files, models  # noqa: E402
from mnist_lenet_spark import spark as msp  # noqa: E402
from mnist_lenet_spark.async_sgd import AsyncSGD  # noqa: E402
from mnist_lenet_spark.executor import inference  # noqa: E402
from mnist_lenet_spark.executor.emulation import EmulatedCompute  # noqa: E402
from mnist_lenet_spark.executor.straggler import StragglerModel  # noqa: E402
from mnist_lenet_spark import plots  # noqa: E402
from mnist_lenet_spark.loop.update import DivergenceError  # noqa: E402
from mnist_lenet_spark.models import base  # noqa: E402

QUICK = {"workers": [2], "backup": [0, 1], "budget_seconds": 6.0, "snapshot_seconds": 2.0, "tune_seconds": 2.0,
         "train_size": 2048, "validation_size": 500, "test_size": 500, "batch_size": 16, "warmup_steps": 10}

#: --task-tail: what every task waits on top of its real compute (the distributions' random part, no shift)
TAILS = {"none": None,
         "fitted": EmulatedCompute(),  # LeNet's task times fitted as shift + exponential tail (mean 26 ms)
         "heavy": EmulatedCompute(distribution="pareto", tail_mean=0.1, alpha=1.5)}  # infinite variance


class TimeBudget(Exception):
    """Raised from the run's callbacks once its wall-clock budget is spent: it ends the fit."""


class Snapshots:
    """The ``on_step`` and ``checkpoint`` callbacks of one fit (both called after every update, in that order, in
    one thread): the parameters at each snapshot time, and each update's time, examples and staleness."""

    def __init__(self, budget: float, every: float):
        self.budget, self.every = budget, every
        self.origin = None  # perf_counter() of the first update's start (sync: its step's; async: the job's)
        self.updates: list[tuple[float, int, int | None, float]] = []  # (time, examples, staleness, apply seconds)
        self.taken: list[dict] = []  # {time, updates, examples, params (P,)}
        self.params = None  # the parameters before the update being recorded: never written in place
        self.examples = 0
        self.diverged = None  # the DivergenceError's message when the run diverged before its budget

    def on_step(self, record: dict) -> None:
        now = time.perf_counter()
        if self.origin is None:  # async records count from the job's start, sync ones time their step
            self.origin = now - record.get("time", record["seconds"])
        # the driver's own update: async records time only the apply, sync ones the step with its gradients
        applying = record["seconds"] - record.get("step_seconds", 0.0)
        self.updates.append((now - self.origin, record["examples"], record.get("staleness"), applying))

    def checkpoint(self, state) -> None:
        now, examples = self.updates[-1][0], self.examples
        # every snapshot time passed since the last update holds the parameters from before this one
        while (at := self.next_time()) is not None and at <= now:
            self.taken.append({"time": at, "updates": len(self.updates) - 1, "examples": examples,
                               "params": self.params})
        self.params, self.examples = state.params, examples + self.updates[-1][1]
        if now >= self.budget:
            raise TimeBudget(f"the time budget of {self.budget:g} s is spent")

    def start(self, params: np.ndarray) -> None:
        """The snapshot at time 0: the initial parameters (P,)."""
        self.params = params
        self.taken.append({"time": 0.0, "updates": 0, "examples": 0, "params": params})

    def next_time(self) -> float | None:
        """The next snapshot time: every ``every`` seconds, and the budget last (None once it is taken)."""
        if self.taken[-1]["time"] >= self.budget:
            return None
        return min(len(self.taken) * self.every, self.budget)


def run_one(session, mode: str, workers: int, backup: int, lr: float, args, images, labels, network,
            budget: float, every: float) -> Snapshots:
    """One run of ``budget`` seconds, its parameters kept every ``every`` seconds."""
    straggler = StragglerModel(args.straggler_prob, args.straggler_delay, tail=TAILS[args.task_tail])
    common = {"batch_size": args.batch_size, "seed": args.seed, "straggler": straggler, "model": network, "lr": lr}
    if mode == "async":
        sgd = AsyncSGD(session, workers, **common)
    else:
        sgd = msp.SyncSGD(session, workers, backup_workers=backup, lr_scaling="linear",
                          warmup_steps=args.warmup_steps, **common)
    snapshots = Snapshots(budget, every)
    snapshots.start(base.flatten(*_initial(network, args.seed)))
    try:
        sgd.fit(images, labels, epochs=10_000, on_step=snapshots.on_step, checkpoint=snapshots.checkpoint,
                checkpoint_every=1)
    except TimeBudget:
        pass
    except DivergenceError as e:  # a rate too large for this mode: the run ends here, its snapshots so far kept
        snapshots.diverged = str(e)
        print(f"{mode} N={workers} b={backup} lr {lr:g}: {e}", flush=True)
    else:
        raise RuntimeError(f"{mode} N={workers} b={backup}: the data ran out before the budget (raise --epochs)")
    return snapshots


def tune(session, args, train, validation, network, spec) -> tuple[dict, list[dict]]:
    """({"sync N=4": lr, ...}, every trial): per mode and N, the --tune-lrs value with the best validation accuracy
    after --tune-seconds."""
    chosen, trials = {}, []
    for workers in args.workers:
        for mode in ("sync", "async"):
            scores = []
            for lr in args.tune_lrs:
                snapshots = run_one(session, mode, workers, 0, lr, args, train.images, train.labels, network,
                                    args.tune_seconds, args.tune_seconds)
                correct, _ = inference.correct_and_loss(network, base.unflatten(snapshots.taken[-1]["params"], spec),
                                                        validation.images, validation.labels)
                scores.append(0.0 if snapshots.diverged else correct / len(validation.labels))
                trials.append({"mode": mode, "workers": workers, "lr": lr, "validation_accuracy": scores[-1],
                               "diverged": snapshots.diverged})
            chosen[f"{mode} N={workers}"] = args.tune_lrs[int(np.argmax(scores))]
            print(f"tuning {mode} N={workers}: validation accuracy {dict(zip(args.tune_lrs, scores))} after "
                  f"{args.tune_seconds:g} s: lr {chosen[f'{mode} N={workers}']:g}", flush=True)
    return chosen, trials


def earlier_rates(path: Path, wanted: dict) -> dict:
    """The rate each of ``wanted``'s keys ("sync N=4", ...) ran at in the results JSON ``path``."""
    try:
        rows = json.loads(path.read_text())["rows"]
        used = {f"{r['mode']} N={r['workers']}": r["lr"] for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"--lrs-from {path}: not a time_to_accuracy results file ({e})")
    missing = sorted(set(wanted) - set(used))
    if missing:
        sys.exit(f"--lrs-from {path}: has no run for {', '.join(missing)}")
    return {key: used[key] for key in wanted}


def _initial(network, seed: int):
    params = network.init_params(seed)
    return params, base.param_spec(params)


def summarise(snapshots: Snapshots, spec, network, test, targets: list[float], budget: float) -> dict:
    """Each snapshot's test accuracy (computed here, off the clock), and the run's row of the table."""
    curve = []
    for snap in snapshots.taken:
        correct, _ = inference.correct_and_loss(network, base.unflatten(snap["params"], spec), test.images,
                                                test.labels)
        curve.append({"time": snap["time"], "updates": snap["updates"], "examples": snap["examples"],
                      "accuracy": correct / len(test.labels)})
    within = [u for u in snapshots.updates if u[0] <= budget]
    staleness = [s for _, _, s, _ in within if s is not None]
    row = {f"time_to_{target}": next((c["time"] for c in curve if c["accuracy"] >= target), None)
           for target in targets}
    row.update({"accuracy_at_budget": None if snapshots.diverged else curve[-1]["accuracy"],
                "diverged": snapshots.diverged, "updates": len(within),
                "updates_per_second": len(within) / budget,
                "examples_per_second": sum(e for _, e, _, _ in within) / budget,
                "driver_update_share": sum(a for _, _, _, a in within) / budget,
                "staleness_mean": float(np.mean(staleness)) if staleness else None,
                "staleness_p90": float(np.percentile(staleness, 90)) if staleness else None,
                "staleness_max": int(max(staleness)) if staleness else None})
    return {"row": row, "curve": curve}


def table(rows: list[dict], targets: list[float]) -> str:
    def cell(value, form):
        return "-" if value is None else format(value, form)
    head = (["run", "N", "b", "lr"] + [f"t({t:.1%})" for t in targets]
            + ["acc@budget", "staleness mean/p90/max", "updates/s", "examples/s", "driver updating"])
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        staleness = "-" if r["staleness_mean"] is None else \
            f"{r['staleness_mean']:.2f}/{r['staleness_p90']:.0f}/{r['staleness_max']}"
        lines.append(" | ".join([r["run"], str(r["workers"]), cell(r["backup"], "d"), f"{r['lr']:g}"]
                                + [cell(r[f"time_to_{t}"], ".1f") for t in targets]
                                + [cell(r["accuracy_at_budget"], ".4f"), staleness, f"{r['updates_per_second']:.1f}",
                                   f"{r['examples_per_second']:.0f}", f"{r['driver_update_share']:.1%}"]))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: " + ", ".join(f"{k} {v}" for k, v in
                                                                                   QUICK.items()))
    p.add_argument("--master", default="local[*]")
    p.add_argument("--netns-cluster", action="store_true",
                   help="run on the namespace cluster (tests/netns_cluster.py; needs root and make pack): max N + max "
                        "b one-core worker hosts, the driver on a host of its own, executors on the packed "
                        "environment (instead of --master)")
    p.add_argument("--cluster-hosts", type=int, default=None, help=argparse.SUPPRESS)  # the driver on the cluster
    p.add_argument("--workers", default="4,8", help="N of each run, comma-separated")
    p.add_argument("--backup", default="0,1,2,4", help="the synchronous runs' backup workers b, comma-separated")
    p.add_argument("--model", default="lenet", help="a preset (lenet, resnet) or a network definition (PATH.json), "
                                                   "for MNIST's 1x28x28 images")
    p.add_argument("--batch-size", type=int, default=32, help="per worker, in both modes")
    p.add_argument("--sync-lr", type=float, default=0.01, help="scaled by N x batch / 64, with --warmup-steps")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--async-lr", type=float, default=0.01)
    p.add_argument("--tune-lrs", default=None, help="comma-separated rates: each mode picks its own per N on the "
                                                   "validation split (instead of --sync-lr and --async-lr)")
    p.add_argument("--lrs-from", type=Path, default=None, help="an earlier run's JSON: each mode and N takes the rate "
                                                              "that run used (its tuned choice), instead of --sync-lr "
                                                              "and --async-lr")
    p.add_argument("--tune-seconds", type=float, default=60.0, help="the budget of each tuning run")
    p.add_argument("--validation-size", type=int, default=None,
                   help="the first N validation images that tuning scores (default: all 5,000)")
    p.add_argument("--straggler-prob", type=float, default=0.1)
    p.add_argument("--straggler-delay", type=float, default=1.0, help="seconds")
    p.add_argument("--task-tail", choices=sorted(TAILS), default="none",
                   help="every task also waits a time drawn from: the fitted LeNet tail (exponential, mean 26 ms) or "
                        "a heavy one (Pareto II, alpha 1.5, mean 0.1 s)")
    p.add_argument("--budget-seconds", type=float, default=300.0)
    p.add_argument("--snapshot-seconds", type=float, default=15.0)
    p.add_argument("--targets", default="0.985,0.99", help="test accuracies, comma-separated")
    p.add_argument("--train-size", type=int, default=None, help="the first N training images (default: all)")
    p.add_argument("--test-size", type=int, default=None, help="the first N test images (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", type=Path, default=None, metavar="FILE",
                   help="redraw the two plots of a results file beside it, from the file alone (runs nothing)")
    p.add_argument("--out", default=None, help="the JSON file (default benchmarks/results/time_to_accuracy.json, "
                                               "with --quick time_to_accuracy_quick.json)")
    args = p.parse_args(argv)
    args.workers = [int(v) for v in args.workers.split(",")]
    args.backup = [int(v) for v in args.backup.split(",")]
    args.targets = [float(v) for v in args.targets.split(",")]
    args.tune_lrs = [float(v) for v in args.tune_lrs.split(",")] if args.tune_lrs else None
    if args.tune_lrs and args.lrs_from:
        p.error("--tune-lrs and --lrs-from: give one of them")
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    name = "time_to_accuracy_quick.json" if args.quick else "time_to_accuracy.json"
    args.out = Path(args.out) if args.out else RESULTS / name
    return args


def on_netns_cluster(args, argv: list[str]) -> None:
    """This experiment with its driver on the namespace cluster's driver host, against max N + max b one-core
    worker hosts (so every sync task of b = max b has a core, and async's N tasks too), each with its own network
    and /tmp. The driver writes the results and plots itself; the cluster goes whatever happens."""
    reason = namespace_cluster_missing()
    if reason:
        sys.exit(f"benchmarks/time_to_accuracy.py --netns-cluster: the namespace cluster {reason}")
    from tests.netns_cluster import Cluster
    hosts = max(args.workers) + max(args.backup)
    (ROOT / "build").mkdir(exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="bench-tta-", dir=ROOT / "build"))
    child = [a for a in argv if a != "--netns-cluster"]
    child += ["--out", str(args.out.resolve()), "--cluster-hosts", str(hosts)]  # the driver runs in ROOT
    if args.lrs_from:
        child += ["--lrs-from", str(args.lrs_from.resolve())]
    try:
        cluster = Cluster(storage, workers=hosts, keep=str(ROOT))
        try:
            proc = cluster.driver.run([sys.executable, __file__, *child, "--master", cluster.master_url], cwd=ROOT,
                                      env={"PYSPARK_PYTHON": "./environment/bin/python", "PYTHONUNBUFFERED": "1"})
            try:  # its output goes straight to ours; bounded by the runs' budgets with room for evaluation
                runs = len(args.workers) * (len(args.backup) + 1) * (1 + (len(args.tune_lrs or ())))
                code = proc.wait(timeout=600 + runs * 3 * max(args.budget_seconds, args.tune_seconds))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own process group: the driver and its JVM
                proc.wait()
                raise
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if code != 0:
        sys.exit(f"benchmarks/time_to_accuracy.py --netns-cluster: the driver exited with {code}")


def cluster_session(args):
    """The driver's session on the namespace cluster: executors on the packed environment, once all
    ``args.cluster_hosts`` have registered (up to 2 minutes)."""
    session = msp.session(args.master, conf={"spark.archives": f"{PACKED_ENV}#environment",
                                             "spark.executor.memory": "1g", "spark.ui.enabled": "false"})
    from tests.netns_cluster import ClusterError, wait_for_executors
    try:
        wait_for_executors(session, args.cluster_hosts)
    except ClusterError as error:
        session.stop()
        sys.exit(f"the namespace cluster: {error}")
    return session


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot)
    if args.netns_cluster:
        return on_netns_cluster(args, argv)
    logging.basicConfig(level=logging.WARNING)
    # the budget ends an async run through the apply thread, which logs it as a failed update
    logging.getLogger("mnist_lenet_spark.cluster.async_service").setLevel(logging.CRITICAL)
    mnist = data.load_mnist()
    train, test, validation = mnist.train, mnist.test, mnist.validation
    if args.train_size:
        train = data.Split(train.images[:args.train_size], train.labels[:args.train_size])
    if args.test_size:
        test = data.Split(test.images[:args.test_size], test.labels[:args.test_size])
    if args.validation_size:
        validation = data.Split(validation.images[:args.validation_size], validation.labels[:args.validation_size])
    network = models.network_from(args.model)
    _, spec = _initial(network, args.seed)
    runs = [("sync", n, b) for n in args.workers for b in args.backup] + [("async", n, None) for n in args.workers]
    rows, curves, trials = [], {}, []
    lrs = {f"{mode} N={n}": args.sync_lr if mode == "sync" else args.async_lr
           for n in args.workers for mode in ("sync", "async")}
    if args.lrs_from:
        lrs = earlier_rates(args.lrs_from, lrs)
    if args.cluster_hosts:
        session = cluster_session(args)
    else:
        session = msp.session(args.master, conf={"spark.ui.enabled": "false"})
    session.sparkContext.setLogLevel("ERROR")
    try:
        if args.tune_lrs:
            lrs, trials = tune(session, args, train, validation, network, spec)
        for mode, workers, backup in runs:
            name = f"sync b={backup}" if mode == "sync" else "async"
            lr = lrs[f"{mode} N={workers}"]
            snapshots = run_one(session, mode, workers, backup or 0, lr, args, train.images, train.labels, network,
                                args.budget_seconds, args.snapshot_seconds)
            result = summarise(snapshots, spec, network, test, args.targets, args.budget_seconds)
            rows.append({"run": name, "mode": mode, "workers": workers, "backup": backup, "lr": lr,
                         **result["row"]})
            curves[f"{name} N={workers}"] = result["curve"]
            print(f"{name} N={workers}: accuracy {result['row']['accuracy_at_budget']} at "
                  f"{args.budget_seconds:g} s, {result['row']['updates']} updates", flush=True)
    finally:
        session.stop()
    print(table(rows, args.targets))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    master = f"namespace cluster: {args.cluster_hosts} one-core worker hosts" if args.cluster_hosts else args.master
    out = {"settings": settings, "master": master, "rows": rows, "curves": curves, "tuning": trials,
           "cpu": cpu()}
    files.write_atomically(args.out, json.dumps(out, indent=2) + "\n")
    write_plots(args.out, out)
    print(args.out)


def write_plots(path: Path, result: dict) -> list[Path]:
    """The two plots of a results file, beside it: test error against wall-clock time (PATH_time.png) and against
    examples seen (PATH_examples.png), from its curves and settings alone."""
    settings = result["settings"]
    title = (f"{settings.get('model', 'lenet')}, batch {settings['batch_size']} a worker, stragglers "
             f"p={settings['straggler_prob']:g} x {settings['straggler_delay']:g} s, "
             f"{settings.get('task_tail', 'none')} tail, {result['master']}")
    written = []
    for x, label in (("time", "wall-clock time (s)"), ("examples", "examples seen")):
        runs = {name: [(c[x], c["accuracy"]) for c in curve] for name, curve in result["curves"].items()}
        written.append(plots.accuracy_vs_time(runs, path.with_name(f"{path.stem}_{x}.png"), title, xlabel=label,
                                              ylabel="test error"))
    return written


def replot(path: Path) -> None:
    """--replot: redraw a results file's plots from the file, running nothing."""
    try:
        result = json.loads(path.read_text())
        written = write_plots(path, result)
    except (OSError, ValueError, KeyError, TypeError) as error:
        sys.exit(f"benchmarks/time_to_accuracy.py --replot {path}: not a readable time_to_accuracy results file "
                 f"({type(error).__name__}: {error})")
    print("\n".join(str(p) for p in written))


if __name__ == "__main__":
    main()
