"""A fit's progress, shown the way its output can take it: a bar on a terminal or in a notebook, and otherwise
(a log file, spark-submit in cluster mode) a log line every ``interval`` seconds instead of a bar's
carriage-return frames."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


class StepProgress:
    """``update(record)`` after each step (records of ``training.fit_loop``); ``close()`` at the end."""

    def __init__(self, interval: float = 30.0, stream=None):
        self.stream = stream or sys.stderr
        self.interval, self.bar, self.total, self.done = interval, None, None, 0
        self.last_log = time.monotonic()
        self.as_bar = _in_notebook() or bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, record: dict) -> None:
        if self.total is None:  # known once the first step ran (a DataFrame's size, once staged)
            self.total = record["total_steps"] - record["step"] + 1
            if self.as_bar:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=self.total, unit="step", dynamic_ncols=True, file=self.stream)
        self.done += 1
        rate = record["examples"] / record["seconds"] if record.get("seconds") else 0.0
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", epoch=record["epoch"] + 1, ex_s=f"{rate:.0f}")
        elif time.monotonic() - self.last_log >= self.interval or self.done == self.total:
            self.last_log = time.monotonic()
            log.info("step %d of %d (epoch %d): loss %.4f, %.0f examples/s", self.done, self.total,
                     record["epoch"] + 1, record["loss"], rate)
        if self.done == self.total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
