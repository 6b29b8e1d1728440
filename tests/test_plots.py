"""The accuracy-against-time plots show test error on a log axis, and benchmarks/time_to_accuracy.py --replot redraws
a results file's plots from the file alone. No Spark."""
import json
import sys

import numpy as np
import pytest

from mnist_lenet_spark import plots
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots save, kept open for inspection (the PNG is still written)."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_accuracy_against_time_is_drawn_as_error_on_a_log_axis(tmp_path, drawn):
    runs = {"sync b=1": [(0.0, 0.1), (15.0, 0.97), (30.0, 0.985), (45.0, 0.9912)], "async": [(0.0, 0.1), (15.0, 1.0)],
            "empty": []}
    path = plots.accuracy_vs_time(runs, tmp_path / "a.png", "t", xlabel="wall-clock time (s)", ylabel="test error")
    assert path.read_bytes()[:8] == PNG
    [ax] = drawn[0].axes
    assert ax.get_yscale() == "log"
    assert "error" in ax.get_ylabel() and "accuracy" not in ax.get_ylabel().replace("1 - accuracy", "")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert sorted(lines) == ["async", "sync b=1"]
    np.testing.assert_allclose(lines["sync b=1"].get_ydata(), [0.9, 0.03, 0.015, 0.0088], rtol=1e-9)
    np.testing.assert_allclose(lines["sync b=1"].get_xdata(), [0.0, 15.0, 30.0, 45.0])
    assert lines["async"].get_ydata()[1] == plots.ERROR_FLOOR  # accuracy 1: drawn at the floor, not at log(0)
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all(label.endswith(" %") for label in labels), labels


def test_replot_redraws_a_results_files_plots_from_the_file_alone(tmp_path, drawn, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import time_to_accuracy
    source = ROOT / "benchmarks" / "results" / "time_to_accuracy_fitted.json"
    result = tmp_path / "fitted.json"
    result.write_text(source.read_text())
    time_to_accuracy.main(["--replot", str(result)])
    assert result.read_text() == source.read_text()  # the results file is read, not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fitted.json", "fitted_examples.png", "fitted_time.png"]
    assert all((tmp_path / name).read_bytes()[:8] == PNG for name in ("fitted_time.png", "fitted_examples.png"))
    curves = json.loads(source.read_text())["curves"]
    time_axes, examples_axes = (fig.axes[0] for fig in drawn)
    assert time_axes.get_yscale() == examples_axes.get_yscale() == "log"
    assert examples_axes.get_xlabel() == "examples seen"
    line = next(line for line in time_axes.get_lines() if line.get_label() == "async N=4")
    np.testing.assert_allclose(line.get_ydata(), [1 - c["accuracy"] for c in curves["async N=4"]], rtol=1e-9)
    (tmp_path / "notes.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match=r"--replot .*notes.json: not a readable time_to_accuracy results file"):
        time_to_accuracy.main(["--replot", str(tmp_path / "notes.json")])
