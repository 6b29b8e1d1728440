"""Progress: a bar on a terminal, log lines (no carriage-return frames) when the output is a file."""
import io
import logging

from mnist_lenet_spark.progress import StepProgress


def records(n):
    return [{"step": i, "total_steps": n, "epoch": 0, "loss": 1.0 / i, "examples": 64, "seconds": 0.1}
            for i in range(1, n + 1)]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_log_lines_and_no_bar(caplog):
    out = io.StringIO()
    progress = StepProgress(interval=0.0, stream=out)
    with caplog.at_level(logging.INFO, logger="mnist_lenet_spark.progress"):
        for record in records(5):
            progress.update(record)
    assert out.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and lines[-1] == "step 5 of 5 (epoch 1): loss 0.2000, 640 examples/s"


def test_a_long_interval_logs_only_the_last_step(caplog):
    progress = StepProgress(interval=3600.0, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="mnist_lenet_spark.progress"):
        for record in records(50):
            progress.update(record)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["step 50 of 50 (epoch 1)"]


def test_a_terminal_gets_a_bar():
    out = Terminal()
    progress = StepProgress(stream=out)
    for record in records(3):
        progress.update(record)
    assert "\r" in out.getvalue() and "3/3" in out.getvalue()
