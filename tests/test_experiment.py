"""jobs/straggler_experiment.py on tiny settings, and the plots."""
import json

import pytest

from mnist_lenet_spark import plots
from tests.conftest import load_job

straggler_experiment = load_job("straggler_experiment")

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
    a = plots.step_time_distribution({"b=0": [0.3, 0.4, 2.3], "b=1": [0.3, 0.35]}, tmp_path / "s.png", "t")
    b = plots.accuracy_vs_time({"b=0": [(1.0, 0.5), (2.0, 0.8)], "b=1": []}, tmp_path / "a.png", "t")
    c = plots.scaling([32, 64], {"x": [1.0, 2.0]}, {"x": [0.5, 1.0]}, tmp_path / "c.png", "t")
    for path in (a, b, c):
        assert path.read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "c.png", "s.png"]


def test_experiment_writes_json_and_plots(tmp_path, capsys):
    status = straggler_experiment.main(
        ["--workers", "2", "--backup", "0,1", "--steps", "4", "--batch-size", "16", "--no-speculation",
         "--straggler-prob", "0.5", "--straggler-delay", "0.3", "--validate-every", "2", "--validation-size", "100",
         "--out-dir", str(tmp_path)])
    assert status == 0
    assert "b=1          mean" in capsys.readouterr().out
    saved = json.loads((tmp_path / "straggler_experiment.json").read_text())
    assert set(saved["runs"]) == {"b=0", "b=1"}
    assert saved["settings"]["straggler"] == {"prob": 0.5, "delay": 0.3, "slow_partitions": [], "failure_prob": 0.0,
                                              "failing_partitions": [], "tail": None}
    for run in saved["runs"].values():
        assert len(run["step_seconds"]) == 4 and all(s > 0 for s in run["step_seconds"])
        assert len(run["accuracy_vs_time"]) == 2
    assert saved["runs"]["b=1"]["dropped_tasks"] == 4
    for name in ("step_times.png", "accuracy_vs_time.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


@pytest.mark.parametrize("flags,message", [(["--backup", "x"], "expected integers"),
                                           (["--backup", "-1"], "counts >= 0")])
def test_experiment_bad_flags(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        straggler_experiment.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
