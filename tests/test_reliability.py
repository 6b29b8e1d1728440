"""Faults caused for real on the training job: divergence, a killed driver, damaged checkpoints, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import ROOT, load_job, own_tracebacks

train_lenet = load_job("train_lenet")
JOB = [sys.executable, str(ROOT / "jobs" / "train_lenet.py"), "--master", "local[2]", "--no-progress"]
SMALL = ["--limit-train", "512", "--batch-size", "16", "--validate-every", "0"]


def strict_lines(path):
    """The metrics file's records; NaN or Infinity (not JSON) fail the parse."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_divergence_stops_before_the_update_keeps_the_last_good_checkpoint_and_exits_3(tmp_path):
    ck, metrics, summary = tmp_path / "ck", tmp_path / "m.jsonl", tmp_path / "s.json"
    proc = subprocess.run(JOB + SMALL + ["--lr", "1e6", "--max-steps", "20", "--checkpoint-dir", str(ck),
                                         "--checkpoint-every", "1", "--metrics", str(metrics), "--summary",
                                         str(summary)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_lenet: error: diverged at step ") and "(epoch 1)" in last
    diverged_at = int(last.split("diverged at step ")[1].split()[0])
    records = strict_lines(metrics)
    assert [r["step"] for r in records] == list(range(1, diverged_at))
    s = json.loads(summary.read_text())
    assert s["status"] == "diverged" and s["error"] == last.removeprefix("train_lenet: error: ")
    assert diverged_at >= 2  # so that a good step was checkpointed first
    with np.load(ck / "checkpoint.npz") as z:
        assert json.loads(str(z["meta"]))["step"] == diverged_at - 1
        assert np.isfinite(z["params"]).all() and np.isfinite(z["velocity"]).all()
    assert not own_tracebacks(proc.stderr), proc.stderr[-2000:]


def test_a_killed_driver_resumes_to_the_same_parameters_without_duplicate_metrics(tmp_path):
    slow = ["--straggler-delay", "0.3", "--slow-partitions", "0,1"]  # time to kill; the math is unchanged
    common = JOB + SMALL + slow + ["--max-steps", "12"]
    subprocess.run(common + ["--model-out", str(tmp_path / "straight.npz")], check=True, capture_output=True,
                   timeout=300)
    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    run = common + ["--checkpoint-dir", str(ck), "--checkpoint-every", "4", "--metrics", str(metrics)]
    driver = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 6):
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its JVM, mid-run
    driver.wait()
    assert 6 <= len(metrics.read_text().splitlines()) < 12  # it was stopped after the checkpoint at step 4
    (ck / "checkpoint.npz.abc.tmp").write_bytes(b"half a checkpoint")  # as a kill during a save leaves
    resumed = subprocess.run(run + ["--resume", "--model-out", str(tmp_path / "resumed.npz")], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in strict_lines(metrics)] == list(range(1, 13))
    with np.load(tmp_path / "straight.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not list(ck.glob("*.tmp"))


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A real checkpoint of a 2-step run (workers 2, batch 16, seed 0, the first 512 images)."""
    ck = tmp_path_factory.mktemp("ck")
    subprocess.run(JOB + SMALL + ["--max-steps", "2", "--checkpoint-dir", str(ck)], check=True, capture_output=True,
                   timeout=300)
    return ck


def run_main(argv, capsys):
    status = train_lenet.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return status, err[-1] if err else ""


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(b""), "not a checkpoint of this tool"),
    (lambda p: p.write_bytes(p.read_bytes()[:5000]), "not a checkpoint of this tool"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a checkpoint of this tool"),
    (lambda p: np.savez(p.open("wb"), W1=np.zeros(3)), "not a checkpoint of this tool"),
])
def test_a_damaged_checkpoint_is_one_line_and_status_2(checkpoint_dir, tmp_path, capsys, damage, message):
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint_dir, ck)
    damage(ck / "checkpoint.npz")
    status, last = run_main(SMALL + ["--checkpoint-dir", str(ck), "--resume", "--no-progress"], capsys)
    assert status == 2 and last.startswith(f"train_lenet: error: {ck / 'checkpoint.npz'}: {message}")


@pytest.mark.parametrize("flags,message", [
    (["--seed", "1"], "written with --seed 0, resumed with 1"),
    (["--batch-size", "32"], "written with --batch-size 16, resumed with 32"),
    (["--backup-workers", "1"], "written with --backup-workers 0, resumed with 1"),
    (["--limit-train", "600"], "written with training data 512 examples"),
])
def test_a_checkpoint_of_another_run_is_refused_before_spark_starts(checkpoint_dir, capsys, flags, message):
    args = SMALL + ["--checkpoint-dir", str(checkpoint_dir), "--resume", "--no-progress"]
    status, last = run_main(args + flags, capsys)
    assert status == 2 and message in last


def test_a_checkpoint_for_another_model_shape_is_refused(checkpoint_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint_dir, ck)
    with np.load(ck / "checkpoint.npz") as z:
        parts = {k: z[k] for k in z.files}
    parts["params"] = parts["params"][:-10]
    with open(ck / "checkpoint.npz", "wb") as f:
        np.savez(f, **parts)
    status, last = run_main(SMALL + ["--checkpoint-dir", str(ck), "--resume", "--no-progress"], capsys)
    assert status == 2 and "params of shape" in last and "the model has" in last


def test_bad_input_is_one_line_and_status_2_before_spark_starts(tmp_path, capsys):
    damaged = tmp_path / "mnist"
    shutil.copytree(ROOT / "data" / "mnist", damaged)
    labels = damaged / "train-labels-idx1-ubyte.gz"
    raw = bytearray(labels.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the deflate stream, not at its end
    labels.write_bytes(bytes(raw))
    cases = [
        (["--data-dir", str(damaged)], "train-labels-idx1-ubyte.gz: corrupt gzip data"),
        (["--seed", "-1"], "seed must be >= 0, got -1"),
        (["--limit-train", "3", "--backup-workers", "2"], "4 tasks per step need at least 4 training examples"),
        (["--slow-partitions", "5", "--straggler-delay", "1"], "slow partition 5 does not exist"),
        (["--limit-train", "100", "--batch-size", "64"], "batch_size 64 is larger than a shard"),
    ]
    for flags, message in cases:
        status, last = run_main(["--no-progress", *flags], capsys)
        assert status == 2 and message in last, (flags, last)
    from pyspark.sql import SparkSession
    assert SparkSession.getActiveSession() is None  # every one of them before a session started


def test_a_task_that_fails_for_good_is_one_line_naming_the_step_and_its_error(tmp_path):
    summary = tmp_path / "s.json"
    proc = subprocess.run(JOB + SMALL + ["--max-steps", "3", "--task-failure-prob", "1", "--summary", str(summary)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]  # the per-step engine names the step, the one-job engine its version
    assert last.startswith("train_lenet: error: ") and "InjectedFailure: injected failure of step 1" in last, last
    s = json.loads(summary.read_text())
    assert s["status"] == "failed" and s["steps"] == 0


#: root reads every file through these capabilities; without them it meets a file's mode like any owner
DAC_CAPABILITIES = "-dac_override,-dac_read_search"


def test_an_unreadable_data_file_is_one_line_and_status_2(tmp_path):
    """The job meets a data file it may not read. An ordinary user makes one and runs the job; root, which reads
    every file, runs the job without its file-permission capabilities but still as root, so it still enters a
    checkout that only root may enter."""
    data_dir = tmp_path / "mnist"
    shutil.copytree(ROOT / "data" / "mnist", data_dir)
    unreadable = data_dir / "t10k-images-idx3-ubyte.gz"
    os.chmod(unreadable, 0o000)
    as_root = os.geteuid() == 0
    if as_root and not shutil.which("setpriv"):
        pytest.fail("as root this test drops the file-permission capabilities with setpriv (util-linux): install it")
    without_capabilities = (["setpriv", f"--inh-caps={DAC_CAPABILITIES}", f"--bounding-set={DAC_CAPABILITIES}"]
                            if as_root else [])
    try:
        proc = subprocess.run(without_capabilities + [*JOB[:2], "--data-dir", str(data_dir), "--no-progress"],
                              capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(unreadable, 0o644)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == f"train_lenet: error: {unreadable}: permission denied"
