"""jobs/train_lenet.py: flags, outputs, resume, errors."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from mnist_lenet_spark.config import ConfigError, SGDConfig, read_training_conf
from tests.conftest import ROOT, load_job, own_tracebacks

train_lenet = load_job("train_lenet")

JOB = [sys.executable, str(ROOT / "jobs" / "train_lenet.py"), "--master", "local[2]", "--no-progress",
       "--conf", str(ROOT / "conf" / "spark-defaults.conf")]


@pytest.mark.parametrize("flags,message", [
    (["--workers", "0"], "--workers: must be >= 1, got 0"),
    (["--batch-size", "-1"], "--batch-size: must be >= 1, got -1"),
    (["--lr", "nan"], "--lr: must be a finite number, got nan"),
    (["--data-dir", "/no/such/dir"], "--data-dir: /no/such/dir: no such directory"),
    (["--backup-workers", "-2"], "--backup-workers: must be >= 0"),
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--straggler-prob", "1.5"], "--straggler-prob: must be in [0, 1]"),
    (["--straggler-delay", "-1"], "--straggler-delay: must be a finite number >= 0, got -1"),
    (["--workers", "two"], "--workers: invalid positive_int value: 'two'"),
    (["--slow-partitions", "1,x"], "--slow-partitions: expected integers separated by commas, got '1,x'"),
])
def test_bad_flags_give_one_line_and_status_2(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        train_lenet.parse_args(flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def run(*flags, check=True):
    proc = subprocess.run(JOB + list(flags), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_run_writes_summary_metrics_and_model(tmp_path):
    summary, metrics, model = tmp_path / "s.json", tmp_path / "m.jsonl", tmp_path / "new" / "model.npz"  # created
    proc = run("--limit-train", "512", "--max-steps", "4", "--batch-size", "32", "--validate-every", "2",
               "--summary", str(summary), "--metrics", str(metrics), "--model-out", str(model))
    assert "test accuracy:" in proc.stdout
    s = json.loads(summary.read_text())
    for key in ("test_accuracy", "validation_accuracy", "epochs", "steps", "workers", "batch_size", "train_seconds",
                "examples_per_second", "step_seconds_median", "step_seconds_mean", "spark_master"):
        assert key in s, key
    assert s["steps"] == 4 and s["spark_master"] == "local[2]" and 0 <= s["test_accuracy"] <= 1
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4] and all(r["examples"] == 64 for r in lines)
    with np.load(model) as z:
        assert z["fc1.W"].shape == (3136, 512)
    assert not list(tmp_path.glob("*.tmp"))


def test_cli_resume_equals_straight_run(tmp_path):
    common = ["--limit-train", "256", "--batch-size", "16", "--validate-every", "0"]
    run(*common, "--max-steps", "20", "--model-out", str(tmp_path / "straight.npz"))
    run(*common, "--max-steps", "10", "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "10")
    run(*common, "--max-steps", "20", "--checkpoint-dir", str(tmp_path / "ck"), "--resume",
        "--model-out", str(tmp_path / "resumed.npz"))
    with np.load(tmp_path / "straight.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    other = run(*common, "--max-steps", "20", "--checkpoint-dir", str(tmp_path / "ck"), "--resume", "--workers", "3",
                check=False)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].endswith("written with --workers 2, resumed with 3")


def test_model_resnet_trains_and_its_checkpoint_names_it(tmp_path):
    common = ["--limit-train", "128", "--batch-size", "8", "--validate-every", "0", "--checkpoint-dir", str(tmp_path)]
    run(*common, "--model", "resnet", "--max-steps", "3", "--model-out", str(tmp_path / "resnet.npz"),
        "--summary", str(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text())["model"] == "resnet"
    with np.load(tmp_path / "resnet.npz") as z:
        assert z["fc.W"].shape == (64, 10) and np.any(z["stem.bn.running_mean"] != 0)
    other = run(*common, "--max-steps", "4", "--resume", check=False)  # the default model, lenet
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].endswith("written with model resnet, resumed with lenet")


def test_bad_data_file_is_one_line_and_status_2(tmp_path):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((ROOT / "data" / "mnist" / name).read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    proc = run("--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "train_lenet: error: train-labels-idx1-ubyte.gz: truncated: expected 5 label bytes, found 3")
    assert not own_tracebacks(proc.stderr), proc.stderr[-2000:]


def test_spark_submit_takes_the_master_from_spark_submit(tmp_path):
    import os
    from pathlib import Path
    summary = tmp_path / "s.json"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--properties-file", str(ROOT / "conf" / "spark-defaults.conf"),
         str(ROOT / "jobs" / "train_lenet.py"), "--limit-train", "128", "--max-steps", "2", "--batch-size", "16",
         "--validate-every", "0", "--no-progress", "--summary", str(summary)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, PYSPARK_PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(summary.read_text())["spark_master"] == "local[1]"


def test_malformed_spark_conf_file_is_one_line_and_status_2(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("# comment\nspark.task.cpus\n")
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "train_lenet.py"), "--conf", str(conf),
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"train_lenet: error: {conf}:2: expected 'key value', got "
                                                    "'spark.task.cpus'")


def test_flags_override_the_training_conf_which_overrides_sgd_config(tmp_path):
    conf = tmp_path / "training.json"
    conf.write_text('{"workers": 3, "lr": 0.05, "backup_workers": 1}')
    run = train_lenet.train_run(train_lenet.parse_args(["--training-conf", str(conf), "--lr", "0.2"]))
    assert run.workers == 3 and run.backup.workers == 1 and run.config.lr == 0.2
    assert run.config.batch_size == SGDConfig().batch_size  # not in the file: the library's default
    bundled = train_lenet.train_run(train_lenet.parse_args([]))
    assert bundled.config == SGDConfig(validate_every=200) and bundled.workers == 2


@pytest.mark.parametrize("text,message", [
    ('{"lr": 0.1, "learning_rate": 0.1}', "unknown key 'learning_rate'"),
    ('{"batch_size": "64"}', "batch_size must be int, got '64'"),
    ('{"dropout": 1}', "dropout must be bool, got 1"),
    ('{"workers": 0}', "workers must be an integer >= 1, got 0"),
    ('{"backup_mode": "fast"}', "backup_mode must be 'cancel' or 'wait-all'"),
    ('{"lr": 0.1,', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
])
def test_training_conf_rejects_unknown_keys_and_wrong_types(tmp_path, text, message):
    conf = tmp_path / "training.json"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=f"^{conf}: .*{message}".replace("[", r"\[").replace("(", r"\(")):
        read_training_conf(conf)


def test_malformed_training_conf_is_one_line_and_status_2(tmp_path):
    conf = tmp_path / "training.json"
    conf.write_text('{"epochs": "three"}')
    proc = subprocess.run(JOB + ["--training-conf", str(conf)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"train_lenet: error: {conf}: epochs must be int, got 'three'"]


def test_train_from_a_dataframe_source_save_the_model_and_predict_with_it(tmp_path):
    model, summary = tmp_path / "model", tmp_path / "s.json"
    run("--train", str(ROOT / "data" / "mnist"), "--max-steps", "3", "--batch-size", "16", "--validate-every", "0",
        "--save-model", str(model), "--summary", str(summary))
    s = json.loads(summary.read_text())
    assert s["steps"] == 3 and 0 <= s["test_accuracy"] <= 1
    predictions = tmp_path / "predictions.parquet"
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "predict.py"), "--master", "local[2]", "--model",
                           str(model), "--input", str(ROOT / "data" / "mnist"), "--output", str(predictions),
                           "--evaluate"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert f"accuracy: {s['test_accuracy']:.4f}" in lines  # the same model, the same test set
    matrix = [line.split() for line in lines[lines.index(next(x for x in lines if x.startswith("confusion"))) + 2:]]
    assert len(matrix) == 10 and sum(int(n) for row in matrix for n in row[1:]) == 10000
    assert list(predictions.glob("*.parquet"))
    missing = subprocess.run([sys.executable, str(ROOT / "jobs" / "predict.py"), "--master", "local[1]", "--model",
                              str(tmp_path / "nowhere"), "--input", str(ROOT / "data" / "mnist"), "--evaluate"],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        f"predict: error: {tmp_path / 'nowhere'}: not a saved model (no metadata/ in it)")
    assert "Exception" not in missing.stderr


@pytest.mark.parametrize("flags,message", [
    (["--train", "x", "--limit-train", "5"], "--train reads its own data"),
    (["--test", "x"], "--test needs --train"),
    (["--train", "x", "--format", "csv"], "--format csv needs --test"),
    (["--pixel-range", "0..1"], "--pixel-range needs --train"),
    (["--train", "x", "--features-col", "px"], "--features-col needs --train with --format parquet"),
    (["--validation-col", "v"], "--validation-col needs --train with --format parquet"),
    (["--validation-fraction", "0.1"], "--validation-fraction needs --train"),
    (["--train", "x", "--validation-fraction", "1.5"], "--validation-fraction: must be in (0, 1), got 1.5"),
    (["--train", "x", "--format", "parquet", "--test", "y", "--validation-fraction", "0.1", "--validation-col", "v"],
     "--validation-fraction and --validation-col: give one"),
    (["--train", "x", "--pixel-range", "1"], "--pixel-range: invalid choice: '1'"),
])
def test_dataframe_source_flags(flags, message, capsys):
    with pytest.raises(SystemExit):
        train_lenet.parse_args(flags)
    assert message in capsys.readouterr().err


def test_parquet_features_scaled_to_0_1_need_pixel_range_0_1(tmp_path, mnist):
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name, split in (("train", mnist.train), ("test", mnist.test)):
        n = 5100 if name == "train" else 100  # the job holds out the first 5,000 for validation
        features = [(img.reshape(-1) / 255.0).tolist() for img in split.images[:n]]  # (784,) each, in 0..1
        pq.write_table(pa.table({"label": split.labels[:n].astype(np.int64), "features": features}),
                       tmp_path / f"{name}.parquet")
    data = ["--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"), "--format",
            "parquet", "--max-steps", "2", "--batch-size", "8", "--validate-every", "0"]
    refused = run(*data, check=False)
    assert refused.returncode == 2
    assert re.match(r"train_lenet: error: (validation )?row 0: column 'features' has a value that is not a whole "
                    r"number", refused.stderr.strip().splitlines()[-1])
    summary = tmp_path / "s.json"
    run(*data, "--pixel-range", "0..1", "--summary", str(summary))
    assert json.loads(summary.read_text())["steps"] == 2


def test_a_network_definition_file_trains_and_a_resume_with_another_network_is_refused(tmp_path):
    layers = [{"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": 1}, {"type": "relu"},
              {"type": "flatten"}, {"type": "dense", "units": 10}]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"input_shape": [1, 28, 28], "layers": layers}))
    second.write_text(json.dumps({"input_shape": [1, 28, 28], "layers": layers[:1] + [{"type": "tanh"}] + layers[2:]}))
    ck, summary = tmp_path / "ck", tmp_path / "s.json"
    small = ["--limit-train", "256", "--batch-size", "16", "--validate-every", "0", "--checkpoint-dir", str(ck)]
    proc = run("--model", str(first), "--max-steps", "2", "--summary", str(summary), *small)
    assert json.loads(summary.read_text())["steps"] == 2
    assert "dense_1 (dense)" in proc.stderr and "total parameters: 7,890" in proc.stderr  # the summary, logged
    refused = run("--model", str(second), "--max-steps", "4", "--resume", *small, check=False)
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train_lenet: error: {ck / 'checkpoint.npz'}: written with model network sha256 ")
    assert ", resumed with network sha256 " in last
    bad = run("--model", str(tmp_path / "missing.json"), check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        f"train_lenet: error: --model: {tmp_path / 'missing.json'}: cannot read it (No such file or directory)")


def test_parquet_with_its_own_column_names_and_validation_column(tmp_path, mnist):
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name, split, n in (("train", mnist.train, 300), ("test", mnist.test, 100)):
        pq.write_table(pa.table({"digit": split.labels[:n].astype(np.int64),
                                 "pixels": [img.tobytes() for img in split.images[:n]],
                                 "held_out": np.arange(n) % 3 == 0}), tmp_path / f"{name}.parquet")
    summary = tmp_path / "s.json"
    run("--train", str(tmp_path / "train.parquet"), "--test", str(tmp_path / "test.parquet"), "--format", "parquet",
        "--features-col", "pixels", "--label-col", "digit", "--validation-col", "held_out", "--epochs", "1",
        "--batch-size", "50", "--validate-every", "0", "--summary", str(summary))
    s = json.loads(summary.read_text())
    assert s["examples"] == 200 and 0 <= s["test_accuracy"] <= 1  # the 100 rows held out were not trained on
    assert s["validation_accuracy"] is not None
