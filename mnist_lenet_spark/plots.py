"""PNG plots of straggler experiments and scaling benchmarks (matplotlib, no display needed)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mnist_lenet_spark import files


def _figure(**subplots):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(**subplots)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return files.write_atomically(path, buffer.getvalue())


def _finish(fig, ax, path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # no lines (e.g. no validation points): no legend
        ax.legend(fontsize=8)
    return _save(fig, path)


def step_time_distribution(runs: dict[str, list[float]], path, title: str) -> Path:
    """Empirical CDF of step times, one line per configuration (like the paper's Figure 3)."""
    fig, ax = _figure(figsize=(6.4, 4))
    for label, times in runs.items():
        t = np.sort(times)
        ax.step(t, np.arange(1, len(t) + 1) / len(t), where="post",
                label=f"{label} (mean {np.mean(t):.2f} s, p90 {np.percentile(t, 90):.2f} s)")
    return _finish(fig, ax, path, "step time (s)", "fraction of steps", title)


#: The lowest error a log axis shows: an accuracy of exactly 1 (a small evaluation set) is drawn at this floor.
ERROR_FLOOR = 1e-4


def accuracy_vs_time(runs: dict[str, list[tuple[float, float]]], path, title: str,
                     xlabel: str = "training wall-clock time (s)", ylabel: str = "validation error") -> Path:
    """Accuracy against training wall-clock time (or another x), one line per configuration, drawn as the error
    (1 - accuracy) on a log y axis: the range that matters, 97-99.5 % accuracy, is a decade of error instead of a
    sliver at the top of a 0-1 axis. ``runs`` maps a label to (x, accuracy) points; ``ylabel`` names the error."""
    fig, ax = _figure(figsize=(6.4, 4))
    for label, points in runs.items():
        if points:
            t, acc = zip(*points)
            error = np.maximum(1.0 - np.asarray(acc, dtype=np.float64), ERROR_FLOOR)
            ax.plot(t, error, marker="o", markersize=3, label=label)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_percent_formatter(minor=False))
    ax.yaxis.set_minor_formatter(_percent_formatter(minor=True))
    return _finish(fig, ax, path, xlabel, f"{ylabel} (1 - accuracy, log scale)", title)


def _percent_formatter(minor: bool):
    """Log-axis tick labels as percentages ("1 %", "0.5 %"), labelling the ticks matplotlib's own log formatter
    labels (minor ones only when the axis spans less than about a decade)."""
    from matplotlib.ticker import LogFormatter

    class Percent(LogFormatter):
        def __call__(self, value, pos=None):
            return f"{100 * value:.3g} %" if super().__call__(value, pos) else ""

    return Percent(labelOnlyBase=False) if minor else Percent()


def scaling(batches: list[int], series: dict[str, list[float]], efficiency: dict[str, list[float]], path,
            title: str) -> Path:
    """Examples/s (left) and parallel efficiency (right) against the per-worker batch size."""
    fig, (left, right) = _figure(ncols=2, figsize=(10, 4))
    for ax, lines, ylabel in ((left, series, "examples / s"), (right, efficiency, "speed-up over one process")):
        for label, values in lines.items():
            ax.plot(batches, values, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("per-worker batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    right.axhline(1.0, color="grey", lw=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def training_curves(history: list[dict], validation: list[dict], path, title: str) -> Path:
    """One run's training loss (left) and validation accuracy (right) against the step."""
    fig, (left, right) = _figure(ncols=2, figsize=(10, 4))
    left.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1, label="training loss")
    right.plot([v["step"] for v in validation], [v["accuracy"] for v in validation], marker="o", markersize=3,
               label="validation accuracy")
    for ax, ylabel in ((left, "training loss"), (right, "validation accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)
