"""Early stopping on the validation accuracy or loss: patience, min_delta, the best parameters, checkpoints and
resume, the estimator's Params and the job's flags. Tiny networks and data: the whole file runs in seconds, but
for its one estimator fit and three short jobs."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mnist_lenet_spark import models
from mnist_lenet_spark.models import base
from mnist_lenet_spark.config import ConfigError, SGDConfig, read_training_conf
from mnist_lenet_spark import local
from mnist_lenet_spark.loop import checkpoint
from tests.conftest import ROOT, load_job

#: dense layers with batch norm: its running statistics live in the parameter vector, so "the best parameters"
#: must bring them along
BN_NET = {"input_shape": [1, 28, 28], "layers": [
    {"type": "max_pool", "size": 4}, {"type": "flatten"}, {"type": "dense", "units": 16}, {"type": "batch_norm"},
    {"type": "relu"}, {"type": "dense", "units": 10}]}
PLAIN_NET = {"input_shape": [1, 28, 28], "layers": [
    {"type": "max_pool", "size": 4}, {"type": "flatten"}, {"type": "dense", "units": 10}]}


@pytest.fixture(scope="module")
def problem(mnist):
    return (mnist.train.images[:256], mnist.train.labels[:256],
            (mnist.validation.images[:200], mnist.validation.labels[:200]))


def fit(problem, net=BN_NET, **options):
    images, labels, validation = problem
    settings = {"batch_size": 16, "validate_every": 2, "epochs": 3, "seed": 1, "dropout": False, **options}
    kwargs = {k: settings.pop(k) for k in ("state", "checkpoint", "checkpoint_every", "validation") if k in settings}
    kwargs.setdefault("validation", validation)
    return local.fit_local(images, labels, SGDConfig(**settings), model=models.network_from(net), **kwargs)


def expected_stop(validation: list[dict], metric: str, patience: int, min_delta: float):
    """(stopped step or None, best step, best value) by the rule, from an uninterrupted run's validations."""
    best = best_step = None
    bad = 0
    for v in validation:
        value = v[metric]
        better = best is None or (value > best + min_delta if metric == "accuracy" else value < best - min_delta)
        if better:
            best, best_step, bad = value, v["step"], 0
        else:
            bad += 1
            if bad >= patience:
                return v["step"], best_step, best
    return None, best_step, best


def same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options,message", [
    ({"early_stopping_patience": -1}, "early_stopping_patience must be >= 0 (0: off), got -1"),
    ({"early_stopping_patience": 1.5}, "early_stopping_patience must be int, got 1.5"),
    ({"early_stopping_min_delta": -0.1}, "early_stopping_min_delta must be a finite number >= 0, got -0.1"),
    ({"early_stopping_min_delta": float("nan")}, "early_stopping_min_delta must be a finite number >= 0, got nan"),
    ({"early_stopping_metric": "f1"}, "early_stopping_metric must be one of accuracy, loss, got 'f1'"),
])
def test_bad_settings_are_one_line_naming_the_setting(options, message):
    with pytest.raises(ConfigError) as e:
        SGDConfig(**options)
    assert str(e.value) == message


def test_patience_without_validation_data_is_one_line(problem):
    with pytest.raises(ConfigError) as e:
        fit(problem, early_stopping_patience=2, validation=None)
    assert str(e.value) == "early_stopping_patience 2 needs validation data: early stopping watches the validation " \
                           "accuracy"


def test_nothing_improves_so_it_stops_after_patience_validations(problem):
    """A learning rate too small to move a float32 weight and no batch norm: every validation equals the first."""
    result = fit(problem, net=PLAIN_NET, lr=1e-30, early_stopping_patience=3)
    assert [v["step"] for v in result.validation] == [2, 4, 6, 8]
    assert len(result.history) == 8 and result.state.step == 8
    assert (result.stopped_early, result.stopped_step, result.best_step) == (True, 8, 2)
    assert result.best_metric == result.validation[0]["accuracy"]
    # patience counts validations, whatever their cadence: at each epoch's end only (16 steps an epoch)
    per_epoch = fit(problem, net=PLAIN_NET, lr=1e-30, validate_every=0, epochs=10, early_stopping_patience=2,
                    early_stopping_metric="loss")
    assert [v["step"] for v in per_epoch.validation] == [16, 32, 48]
    assert (per_epoch.stopped_step, per_epoch.best_step, len(per_epoch.history)) == (48, 16, 48)


def test_off_by_default_and_the_validations_carry_accuracy_and_loss(problem):
    result = fit(problem, lr=0.2)
    assert not result.stopped_early and result.stopped_step is None and result.best_step is None
    assert len(result.history) == 48 and result.state.early_stopping is None
    assert all(set(v) == {"step", "epoch", "accuracy", "loss"} for v in result.validation)


@pytest.mark.parametrize("metric,lr,patience,min_delta", [
    ("accuracy", 0.2, 3, 0.0),  # accuracy peaks, then wobbles below its best
    ("loss", 0.2, 2, 0.0),
    ("loss", 0.01, 1, 0.1),  # the loss falls at every validation, by less than 0.1 after a while
    ("accuracy", 0.2, 2, 1.0),  # nothing beats the first validation by 1.0
])
def test_it_stops_as_the_rule_says_and_ends_with_the_best_parameters(problem, metric, lr, patience, min_delta):
    reference = fit(problem, lr=lr)
    stop, best_step, best = expected_stop(reference.validation, metric, patience, min_delta)
    assert stop is not None and best_step < stop
    result = fit(problem, lr=lr, early_stopping_patience=patience, early_stopping_min_delta=min_delta,
                 early_stopping_metric=metric)
    assert (result.stopped_early, result.stopped_step, result.best_step) == (True, stop, best_step)
    assert result.best_metric == best and len(result.history) == stop and result.state.step == stop
    assert result.validation == reference.validation[:len(result.validation)]
    # the best step's parameters, batch norm's running statistics with them; not the last step's
    at_best = fit(problem, lr=lr, max_steps=best_step)
    assert "batch_norm_1.running_mean" in result.params
    assert same_params(result.params, at_best.params)
    last = base.unflatten(result.state.params, base.param_spec(result.params))
    assert not np.array_equal(last["batch_norm_1.running_mean"], result.params["batch_norm_1.running_mean"])


def test_min_delta_decides_what_counts_as_an_improvement(problem):
    """The validation loss falls at every validation at lr 0.01: with min_delta 0 nothing stops the run; with
    0.1 it stops once a validation falls by less than 0.1 from the best."""
    reference = fit(problem, lr=0.01)
    losses = [v["loss"] for v in reference.validation]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert not fit(problem, lr=0.01, early_stopping_patience=1, early_stopping_metric="loss").stopped_early
    result = fit(problem, lr=0.01, early_stopping_patience=1, early_stopping_metric="loss",
                 early_stopping_min_delta=0.1)
    falls = [a - b for a, b in zip(losses, losses[1:])]
    first_small = next(i for i, d in enumerate(falls) if d <= 0.1)
    assert result.stopped_step == reference.validation[first_small + 1]["step"]
    assert result.best_step == reference.validation[first_small]["step"]


def test_a_run_that_ends_between_validations_validates_its_last_parameters(problem):
    """max_steps 5 with validate_every 2: validated at 2 and 4, then once more at 5, the run's end; the fit ends
    with whichever is best (here the last: the accuracy rises)."""
    result = fit(problem, lr=0.2, max_steps=5, early_stopping_patience=3)
    assert [(v["step"], v.get("final", False)) for v in result.validation] == [(2, False), (4, False), (5, True)]
    assert not result.stopped_early and result.best_step == 5
    assert same_params(result.params, fit(problem, lr=0.2, max_steps=5).params)
    assert result.state.early_stopping.best_step == 4  # the end's validation is not in the memory a resume uses


def test_a_resumed_run_stops_at_the_same_step_with_the_same_parameters(problem, tmp_path):
    options = {"lr": 0.2, "early_stopping_patience": 3}
    saved = {}

    def save(state):
        path = tmp_path / f"step{state.step}.npz"
        checkpoint.save_checkpoint(path, state, SGDConfig(**{**options, "batch_size": 16}))
        saved[state.step] = path

    straight = fit(problem, **options, checkpoint=save, checkpoint_every=1)
    assert straight.stopped_early and straight.best_step < straight.stopped_step
    stop = straight.stopped_step
    assert sorted(saved) == list(range(1, stop + 1))
    # from every checkpoint: before the best, at it, in the middle of the patience, at the stop itself
    for step in range(1, stop + 1):
        state, _ = checkpoint.load_checkpoint(saved[step])
        resumed = fit(problem, **options, state=state)
        assert (resumed.stopped_step, resumed.best_step, resumed.best_metric) == \
            (stop, straight.best_step, straight.best_metric), step
        assert same_params(resumed.params, straight.params), step
        assert [h["step"] for h in resumed.history] == list(range(step + 1, stop + 1))
    mid = checkpoint.load_checkpoint(saved[straight.best_step + 3])[0].early_stopping
    assert (mid.best_step, mid.bad_validations, mid.stopped_step) == (straight.best_step, 1, None)
    assert mid.best_params is not None
    # a run cut by max_steps between validations (its end validated apart), saved, then resumed
    cut = fit(problem, **options, max_steps=straight.best_step + 3)
    checkpoint.save_checkpoint(tmp_path / "cut.npz", cut.state, SGDConfig(batch_size=16))
    resumed = fit(problem, **options, state=checkpoint.load_checkpoint(tmp_path / "cut.npz")[0])
    assert (resumed.stopped_step, resumed.best_step) == (stop, straight.best_step)
    assert same_params(resumed.params, straight.params)


def test_a_resume_that_watches_another_metric_is_refused(problem, tmp_path):
    result = fit(problem, lr=0.2, max_steps=4, early_stopping_patience=3)
    with pytest.raises(ConfigError, match="early_stopping_metric 'loss': the resumed run watched 'accuracy'"):
        fit(problem, lr=0.2, early_stopping_patience=3, early_stopping_metric="loss", state=result.state)


def test_a_checkpoint_without_early_stopping_loads_as_before(problem, tmp_path):
    result = fit(problem, lr=0.2, max_steps=3)
    checkpoint.save_checkpoint(tmp_path / "ck.npz", result.state, SGDConfig())
    state, meta = checkpoint.load_checkpoint(tmp_path / "ck.npz")
    assert state.early_stopping is None and "early_stopping" not in meta
    with np.load(tmp_path / "ck.npz") as z:
        assert sorted(z.files) == ["meta", "params", "velocity"]


# -- the estimator ---------------------------------------------------------------------------------------------
def _frame(spark, images, labels, is_validation):
    rows = [(int(y), x.tobytes(), bool(v)) for x, y, v in zip(images, labels, is_validation)]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, 2),
                                 "label long, features binary, is_val boolean")


def test_the_estimator_stops_early_and_its_model_holds_the_best_weights(spark, mnist):
    from mnist_lenet_spark.ml import NetworkClassifier
    images, labels = mnist.train.images[:160], mnist.train.labels[:160]
    df = _frame(spark, images, labels, np.arange(160) >= 128)  # 128 training rows, 32 validation rows
    common = {"model": json.dumps(BN_NET), "workers": 2, "batchSize": 16, "seed": 2, "lr": 0.2}
    # validation at each epoch's end (4 steps); nothing beats the first by 1.0: stops after epoch 3
    clf = NetworkClassifier(**common, epochs=6, validationIndicatorCol="is_val", earlyStoppingPatience=2,
                            earlyStoppingMinDelta=1.0)
    assert (clf.getEarlyStoppingPatience(), clf.getEarlyStoppingMetric()) == (2, "accuracy")
    model = clf.fit(df)
    s = model.summary
    assert (s.stopped_early, s.stopped_step, s.best_step) == (True, 12, 4)
    assert s.best_metric == s.validation[0]["accuracy"] and len(s.history) == 12
    at_best = NetworkClassifier(**common, maxSteps=4, validationIndicatorCol="is_val").fit(df)
    for k, v in at_best.weights.items():
        np.testing.assert_allclose(model.weights[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    with pytest.raises(ConfigError) as e:
        NetworkClassifier(**common, earlyStoppingPatience=2).fit(df)
    assert str(e.value) == "earlyStoppingPatience 2 needs validation rows: set validationIndicatorCol"
    with pytest.raises(ConfigError) as e:
        NetworkClassifier(**common, earlyStoppingMetric="f1", validationIndicatorCol="is_val").fit(df)
    assert str(e.value) == "earlyStoppingMetric: early_stopping_metric must be one of accuracy, loss, got 'f1'"


# -- the job -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--early-stopping-patience", "-1"], "--early-stopping-patience: must be >= 0, got -1"),
    (["--early-stopping-min-delta", "nan"], "--early-stopping-min-delta: must be a finite number >= 0, got nan"),
    (["--early-stopping-metric", "f1"], "--early-stopping-metric: invalid choice: 'f1'"),
])
def test_bad_job_flags_are_one_line(flags, message, capsys):
    train_lenet = load_job("train_lenet")
    with pytest.raises(SystemExit) as e:
        train_lenet.parse_args(flags)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_the_training_conf_and_the_flags_set_early_stopping(tmp_path):
    train_lenet = load_job("train_lenet")
    conf = tmp_path / "training.json"
    conf.write_text(json.dumps({"early_stopping_patience": 4, "early_stopping_metric": "loss"}))
    assert read_training_conf(conf).sgd.early_stopping_patience == 4
    run = train_lenet.train_run(train_lenet.parse_args(["--training-conf", str(conf),
                                                        "--early-stopping-min-delta", "0.01"]))
    assert (run.config.early_stopping_patience, run.config.early_stopping_metric,
            run.config.early_stopping_min_delta) == (4, "loss", 0.01)
    conf.write_text(json.dumps({"early_stopping_metric": "f1"}))
    with pytest.raises(ConfigError, match="early_stopping_metric must be one of accuracy, loss"):
        read_training_conf(conf)


def test_the_job_stops_early_and_a_resumed_job_stops_at_the_same_step_with_the_same_model(tmp_path):
    """The bundled MNIST (validation: its 5,000 images) on 256 training images, a tiny network: the same stop
    and model whether the run goes straight through or is cut at step 7, checkpointed and resumed."""
    net = tmp_path / "net.json"
    net.write_text(json.dumps(BN_NET))
    job = [sys.executable, str(ROOT / "jobs" / "train_lenet.py"), "--master", "local[2]", "--no-progress",
           "--conf", str(ROOT / "conf" / "spark-defaults.conf"), "--model", str(net), "--limit-train", "256",
           "--batch-size", "16", "--lr", "0.2", "--validate-every", "2", "--epochs", "4",
           "--early-stopping-patience", "2"]

    def run(*flags):
        proc = subprocess.run(job + list(flags), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    straight = run("--summary", str(tmp_path / "a.json"), "--model-out", str(tmp_path / "a.npz"))
    s = json.loads((tmp_path / "a.json").read_text())
    assert s["stopped_early"] and s["best_step"] < s["stopped_step"] == s["steps"] < 32
    assert s["early_stopping_metric"] == "accuracy" and f"stopped early after step {s['stopped_step']}" in \
        straight.stdout
    assert s["validation_accuracy"] == s["best_metric"]
    cut = min(7, s["stopped_step"] - 1)
    run("--max-steps", str(cut), "--checkpoint-dir", str(tmp_path / "ck"))
    run("--checkpoint-dir", str(tmp_path / "ck"), "--resume", "--summary", str(tmp_path / "b.json"),
        "--model-out", str(tmp_path / "b.npz"))
    r = json.loads((tmp_path / "b.json").read_text())
    assert (r["stopped_step"], r["best_step"], r["best_metric"]) == (s["stopped_step"], s["best_step"],
                                                                     s["best_metric"])
    assert r["test_accuracy"] == s["test_accuracy"]
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
