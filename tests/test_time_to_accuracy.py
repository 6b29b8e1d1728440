"""benchmarks/time_to_accuracy.py --quick: a smoke run (N = 2; sync b = 0 and 1; async; learning rates tuned on
validation) whose table and JSON have the right rows and sane values. The tests do not run the full experiment."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_the_quick_run_prints_the_comparison_table_and_writes_every_run(tmp_path):
    out = tmp_path / "time_to_accuracy.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--quick",
                           "--master", "local[2]", "--task-tail", "fitted", "--tune-lrs", "0.005,0.02",
                           "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows, budget = result["rows"], result["settings"]["budget_seconds"]
    assert result["settings"]["task_tail"] == "fitted"
    tuning = result["tuning"]  # each mode's rate picked on validation, sync at b = 0
    assert [(t["mode"], t["lr"]) for t in tuning] == [("sync", 0.005), ("sync", 0.02), ("async", 0.005),
                                                      ("async", 0.02)]
    assert all(0 <= t["validation_accuracy"] <= 1 for t in tuning)
    for mode in ("sync", "async"):
        scores = {t["lr"]: t["validation_accuracy"] for t in tuning if t["mode"] == mode}
        assert {r["lr"] for r in result["rows"] if r["mode"] == mode} == {max(scores, key=scores.get)}
    assert [(r["run"], r["workers"], r["backup"]) for r in rows] == [("sync b=0", 2, 0), ("sync b=1", 2, 1),
                                                                     ("async", 2, None)]
    for r in rows:
        assert 0 <= r["accuracy_at_budget"] <= 1 and r["updates"] > 0, r
        assert r["updates_per_second"] > 0 and r["examples_per_second"] >= 16 * r["updates_per_second"], r
        assert 0 < r["driver_update_share"] < 0.5, r  # the update is milliseconds of a step or a push
        assert all(r[f"time_to_{t}"] is None or 0 < r[f"time_to_{t}"] <= budget for t in (0.985, 0.99)), r
    assert rows[0]["staleness_mean"] is None and rows[1]["staleness_max"] is None  # sync: no staleness
    asynchronous = rows[2]
    assert 0 <= asynchronous["staleness_mean"] <= asynchronous["staleness_max"]
    assert 0 <= asynchronous["staleness_p90"] <= asynchronous["staleness_max"]
    assert asynchronous["updates_per_second"] > rows[0]["updates_per_second"]  # one mini-batch an update, not N
    curves = result["curves"]
    assert sorted(curves) == ["async N=2", "sync b=0 N=2", "sync b=1 N=2"]
    initial = {curve[0]["accuracy"] for curve in curves.values()}
    assert len(initial) == 1 and initial.pop() < 0.3  # the same initial weights, untrained
    for name, curve in curves.items():
        times = [c["time"] for c in curve]
        assert times[0] == 0 and times[-1] == budget and times == sorted(set(times)), (name, times)
        examples = [c["examples"] for c in curve]
        assert examples == sorted(examples) and examples[-1] > 0, (name, examples)
        assert curve[-1]["accuracy"] > curve[0]["accuracy"] + 0.2, (name, curve)  # it trained
    for plot in ("time_to_accuracy_time.png", "time_to_accuracy_examples.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("run | N | b"))
    assert "t(98.5%)" in header and "t(99.0%)" in header and "staleness mean/p90/max" in header
    assert header.endswith("driver updating")
    assert [line.split(" | ")[:3] for line in lines if line.startswith(("sync b=", "async")) and " | " in line] == [
        ["sync b=0", "2", "0"], ["sync b=1", "2", "1"], ["async", "2", "-"]]


def test_a_task_tail_adds_a_seeded_wait_to_every_task():
    """--task-tail: the straggler model's tail is drawn from each task's key (the same in every mode and run), on
    top of the Bernoulli delay; the heavy tail has far larger waits than the fitted one."""
    from mnist_lenet_spark.executor.emulation import EmulatedCompute
    from mnist_lenet_spark.executor.straggler import StragglerModel
    from mnist_lenet_spark.loop.sharding import TaskKey
    keys = [TaskKey(0, 0, step, shard) for step in range(500) for shard in range(4)]
    fitted = StragglerModel(tail=EmulatedCompute())
    heavy = StragglerModel(tail=EmulatedCompute(distribution="pareto", tail_mean=0.1, alpha=1.5))
    assert fitted.active and [fitted.delay_for(k) for k in keys] == [fitted.delay_for(k) for k in keys]
    waits = [fitted.delay_for(k) for k in keys]
    assert min(waits) >= 0 and 0.02 < sum(waits) / len(waits) < 0.032  # the fitted tail's mean, 26 ms
    assert max(heavy.delay_for(k) for k in keys) > 10 * max(waits)
    both = StragglerModel(prob=0.1, delay=1.0, tail=EmulatedCompute())
    plain = StragglerModel(prob=0.1, delay=1.0)
    assert [both.delay_for(k) for k in keys] == pytest.approx([plain.delay_for(k) + w for k, w in zip(keys, waits)])


def test_lrs_from_takes_each_modes_rate_from_an_earlier_run(tmp_path):
    """--lrs-from: the rate each mode and N ran at in an earlier results file; a file without one of the wanted
    runs, or not a results file, is a one-line error naming it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from time_to_accuracy import earlier_rates
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"rows": [{"mode": "sync", "workers": 4, "lr": 0.02},
                                            {"mode": "sync", "workers": 4, "lr": 0.02},
                                            {"mode": "async", "workers": 4, "lr": 0.005}]}))
    wanted = {"sync N=4": 0.01, "async N=4": 0.01}
    assert earlier_rates(earlier, wanted) == {"sync N=4": 0.02, "async N=4": 0.005}
    with pytest.raises(SystemExit, match=r"earlier.json: has no run for async N=8"):
        earlier_rates(earlier, {**wanted, "async N=8": 0.01})
    (tmp_path / "notes.txt").write_text("not json")
    with pytest.raises(SystemExit, match=r"notes.txt: not a time_to_accuracy results file"):
        earlier_rates(tmp_path / "notes.txt", wanted)
