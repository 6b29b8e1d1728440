"""MLflow tracking with the real mlflow against a local SQLite store: the estimator (in an active run, and with
mlflowTracking) and the job (--mlflow-experiment) log params, step metrics, validations, the summary, plots and a
pyfunc model that a fresh Python process loads and predicts with exactly as the estimator's model; mlflow asked
for but missing is one line; mlflow is never imported unless asked for. Skipped without mlflow."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mnist_lenet_spark.config import ConfigError
from tests.conftest import ROOT

mlflow = pytest.importorskip("mlflow")

NET = {"input_shape": [1, 28, 28], "layers": [
    {"type": "max_pool", "size": 4}, {"type": "flatten"}, {"type": "dense", "units": 16}, {"type": "batch_norm"},
    {"type": "relu"}, {"type": "dense", "units": 10}]}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """A SQLite store for the module, set in this process (and restored after it), with its experiments' artifacts
    beside it (MLflow's default for a database store is ./mlruns in the working directory)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder}/mlflow.db"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    for name in ("estimator", "estimator-own-run", "job"):
        mlflow.create_experiment(name, artifact_location=(folder / "artifacts" / name).as_uri())
    yield uri
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def frame(spark, mnist):
    images, labels = mnist.train.images[:160], mnist.train.labels[:160]
    rows = [(int(y), x.tobytes(), bool(i >= 128)) for i, (x, y) in enumerate(zip(images, labels))]
    df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 2), "label long, features binary, is_val boolean")
    return images, labels, df


def predict_in_a_fresh_process(uri: str, model_uri: str, images: np.ndarray, tmp_path) -> dict:
    """The model's predictions, loaded by mlflow.pyfunc in a new Python process, with no Spark and the package's
    code from the model's own copy: on (n, 784) and (n, 1, 28, 28) arrays (uint8 and float) and a DataFrame of
    pixel columns."""
    np.save(tmp_path / "images.npy", images)
    code = f"""
import json, sys
import numpy as np, pandas as pd
import mlflow, mlflow.pyfunc
mlflow.set_tracking_uri({uri!r})
model = mlflow.pyfunc.load_model({model_uri!r})
x = np.load({str(tmp_path / 'images.npy')!r})
flat = x.reshape(len(x), -1)
frame = pd.DataFrame(flat, columns=[f"pixel{{i}}" for i in range(flat.shape[1])])
out = {{"flat": model.predict(flat), "images": model.predict(x.reshape(len(x), 1, 28, 28).astype(np.float64)),
       "frame": model.predict(frame)}}
print(json.dumps({{"columns": list(out["frame"].columns),
                  "package": sys.modules["mnist_lenet_spark"].__file__,
                   **{{k: v["prediction"].tolist() for k, v in out.items()}},
                   "probability": out["frame"][[f"probability_{{k}}" for k in range(10)]].to_numpy().tolist()}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_RUN_ID")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["package"].startswith(str(ROOT / "mnist_lenet_spark"))  # the model's own copy of the code
    return out


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_an_estimator_fit_in_an_active_run_logs_into_it_and_its_model_predicts_in_a_fresh_process(
        frame, tracking_uri, tmp_path):
    from mnist_lenet_spark.ml import NetworkClassifier
    images, _, df = frame
    mlflow.set_experiment("estimator")
    clf = NetworkClassifier(model=json.dumps(NET), workers=2, batchSize=16, epochs=2, seed=4,
                            validationIndicatorCol="is_val")
    assert clf.getMlflowTracking() is False
    with mlflow.start_run() as run:
        model = clf.fit(df)
        assert mlflow.active_run().info.run_id == run.info.run_id  # the caller's run: not ended by the fit
    s = model.summary
    assert s.mlflow_run_id == run.info.run_id and s.mlflow_model_uri
    client = mlflow.MlflowClient()
    logged = client.get_run(run.info.run_id)
    params = logged.data.params
    assert (params["batch_size"], params["lr"], params["workers"], params["backup_workers"], params["epochs"]) == \
        ("16", "0.01", "2", "0", "2")
    assert params["model_definition_sha256"] and params["early_stopping_patience"] == "0"
    assert metric_steps(client, run.info.run_id, "loss") == list(range(1, 9))  # 4 steps an epoch
    assert metric_steps(client, run.info.run_id, "lr") == list(range(1, 9))
    assert metric_steps(client, run.info.run_id, "validation_accuracy") == [4, 8]
    assert metric_steps(client, run.info.run_id, "validation_loss") == [4, 8]
    assert {"seconds", "step_seconds", "examples", "steps", "final_loss"} <= set(logged.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "summary.json" in artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/step_times.png", "plots/accuracy_vs_time.png", "plots/training_curves.png"}
    summary = json.loads(open(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read())
    assert summary["steps"] == 8 and summary["mlflow_model_uri"] == s.mlflow_model_uri
    # the model, in a process of its own: the same classes as the estimator's model on the driver
    out = predict_in_a_fresh_process(tracking_uri, s.mlflow_model_uri, images[:40], tmp_path)
    expected = model.predict(images[:40]).tolist()
    assert out["flat"] == out["images"] == out["frame"] == expected
    np.testing.assert_allclose(out["probability"], model.predictProbability(images[:40]), rtol=1e-6, atol=1e-7)
    assert out["columns"][0] == "prediction"


def test_mlflow_tracking_starts_a_run_and_ends_it(frame, tracking_uri):
    from mnist_lenet_spark.ml import NetworkClassifier
    _, _, df = frame
    mlflow.set_experiment("estimator-own-run")
    model = NetworkClassifier(model=json.dumps(NET), workers=2, batchSize=16, maxSteps=3, backupWorkers=1,
                              mlflowTracking=True).fit(df)
    assert mlflow.active_run() is None
    client = mlflow.MlflowClient()
    run = client.get_run(model.summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["backup_workers"] == "1"
    assert metric_steps(client, run.info.run_id, "dropped_tasks") == [1, 2, 3]  # backup statistics of each step
    assert metric_steps(client, run.info.run_id, "kept_tasks") == [1, 2, 3]
    # a fit that fails once its run has started ends that run as FAILED
    with pytest.raises(Exception, match="nope"):
        NetworkClassifier(model=json.dumps(NET), featuresCol="nope", mlflowTracking=True).fit(df)
    assert mlflow.active_run() is None
    experiment = client.get_experiment_by_name("estimator-own-run").experiment_id
    latest = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED" and latest.info.run_id != run.info.run_id


def test_the_job_logs_a_run_to_its_experiment(tracking_uri, tmp_path, mnist):
    net = tmp_path / "net.json"
    net.write_text(json.dumps(NET))
    summary = tmp_path / "s.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "train_lenet.py"), "--master", "local[2]", "--no-progress",
         "--conf", str(ROOT / "conf" / "spark-defaults.conf"), "--model", str(net), "--limit-train", "256",
         "--batch-size", "16", "--max-steps", "6", "--validate-every", "3", "--mlflow-experiment", "job",
         "--summary", str(summary), "--model-out", str(tmp_path / "model.npz")],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(summary.read_text())
    client = mlflow.MlflowClient()
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_experiment_by_name("job").experiment_id
    assert (run.data.params["max_steps"], run.data.params["validate_every"]) == ("6", "3")
    assert run.data.params["data"].startswith("256 examples") and run.data.params["model"].startswith("network")
    assert metric_steps(client, run.info.run_id, "loss") == [1, 2, 3, 4, 5, 6]
    assert metric_steps(client, run.info.run_id, "validation_accuracy") == [3, 6]
    assert run.data.metrics["test_accuracy"] == pytest.approx(s["test_accuracy"])
    assert run.data.metrics["final_validation_accuracy"] == pytest.approx(s["validation_accuracy"])
    logged = json.loads(open(client.download_artifacts(run.info.run_id, "summary.json", str(tmp_path))).read())
    assert logged == json.loads(json.dumps(s))
    assert len(client.list_artifacts(run.info.run_id, "plots")) == 3
    # the model predicts as the job's parameters do
    from mnist_lenet_spark import models
    from mnist_lenet_spark.executor import inference
    with np.load(tmp_path / "model.npz") as z:
        weights = {k: z[k] for k in z.files}
    images = mnist.test.images[:30]
    expected = np.argmax(inference.predict_images(models.network_from(NET), weights, images), axis=1).tolist()
    out = predict_in_a_fresh_process(tracking_uri, s["mlflow_model_uri"], images, tmp_path)
    assert out["flat"] == out["frame"] == expected


def test_bad_model_input_is_one_clear_error():
    from mnist_lenet_spark import models
    from mnist_lenet_spark.mlflow_model import images_of
    lenet = models.network_from("lenet")
    with pytest.raises(ValueError, match=r"model input: shape \(2, 3\), expected \(N, ...\) of 784 pixels each"):
        images_of(np.zeros((2, 3)), lenet, "0..255")
    with pytest.raises(ValueError, match=r"model input: has values outside 0..255 \(min -1.0, max -1.0\)"):
        images_of(np.full((1, 784), -1.0), lenet, "0..255")
    assert images_of(np.zeros((2, 784), np.uint8), lenet, "0..255").shape == (2, 1, 28, 28)


def test_mlflow_asked_for_without_mlflow_is_one_line(tmp_path):
    """``import mlflow`` fails in the job's process: --mlflow is one error line, status 2, before Spark starts."""
    code = (f"import sys; sys.modules['mlflow'] = None; sys.argv[0] = 'train_lenet'; "
            f"from mnist_lenet_spark.jobs.train_lenet import main; "
            f"sys.exit(main(['--mlflow', '--no-progress', '--limit-train', '256', '--max-steps', '1']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == ["train_lenet: error: --mlflow: mlflow is not installed (pip install mlflow, or this "
                      "package's 'mlflow' extra)"]
    assert "SparkContext" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_estimator_without_mlflow_is_one_line(frame, monkeypatch):
    from mnist_lenet_spark.ml import NetworkClassifier
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ConfigError) as e:
        NetworkClassifier(model=json.dumps(NET), batchSize=16, maxSteps=1, mlflowTracking=True).fit(frame[2])
    assert str(e.value) == "mlflowTracking: mlflow is not installed (pip install mlflow, or this package's " \
                           "'mlflow' extra)"


def test_the_package_does_not_import_mlflow_unless_asked():
    code = ("import sys; import mnist_lenet_spark.ml, mnist_lenet_spark.jobs.runs, mnist_lenet_spark.tracking, "
            "mnist_lenet_spark.jobs.train_lenet, mnist_lenet_spark.executor.tasks; print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_an_async_estimator_fit_logs_its_mode_staleness_and_updates_per_second(frame, tracking_uri):
    from mnist_lenet_spark.ml import NetworkClassifier
    _, _, df = frame
    mlflow.set_experiment("estimator-own-run")
    model = NetworkClassifier(model=json.dumps(NET), mode="async", workers=2, batchSize=16, maxSteps=4,
                              mlflowTracking=True).fit(df)
    client = mlflow.MlflowClient()
    run = client.get_run(model.summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["mode"] == "async"
    assert metric_steps(client, run.info.run_id, "staleness") == [1, 2, 3, 4]  # each update's
    final = run.data.metrics
    assert final["staleness_max"] == model.summary.staleness["max"] and final["updates_per_second"] > 0
