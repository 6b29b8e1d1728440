"""Seeded straggler injection for experiments and tests: a task is delayed by ``delay`` seconds with probability
``prob`` (drawn from its ``TaskKey``, so a run is reproducible), and always when its shard is in ``slow_partitions``.
With ``tail``, every task also waits a time drawn from that distribution's random part
(``emulation.EmulatedCompute.tail``; its shift is not used, the task computes for real): the fitted LeNet spread, or a
heavy tail. To the driver a real straggler (a slow executor, a long GC) looks the same: a task that finishes late."""
from __future__ import annotations

import time
from typing import NamedTuple

from mnist_lenet_spark.config import ConfigError
from mnist_lenet_spark.executor.emulation import EmulatedCompute
from mnist_lenet_spark.loop.sharding import TaskKey

#: how often an injected delay asks whether its step was closed (backup workers, see step_signal)
POLL_SECONDS = 0.01


class InjectedFailure(RuntimeError):
    """The error an injected task failure raises (``StragglerModel.failure_prob``)."""


class StragglerModel(NamedTuple):
    prob: float = 0.0
    delay: float = 0.0
    slow_partitions: tuple[int, ...] = ()
    failure_prob: float = 0.0  # each task *attempt* fails with this probability (Spark may retry it)
    failing_partitions: tuple[int, ...] = ()  # these fail at every attempt (tests and experiments)
    tail: EmulatedCompute | None = None  # every task also waits a time drawn from its tail (experiments)

    def check_partitions(self, shards: int) -> None:
        """ConfigError for an always-slow or always-failing partition that a step with ``shards`` tasks lacks."""
        for kind, partitions in (("slow", self.slow_partitions), ("failing", self.failing_partitions)):
            wrong = [p for p in partitions if not 0 <= p < shards]
            if wrong:
                raise ConfigError(f"{kind} partition {wrong[0]} does not exist: a step's tasks are 0..{shards - 1}")

    @property
    def delays(self) -> bool:
        return self.delay > 0 and (self.prob > 0 or bool(self.slow_partitions)) or self.tail is not None

    @property
    def active(self) -> bool:
        return self.delays or self.failure_prob > 0 or bool(self.failing_partitions)

    def fail_if_drawn(self, key: TaskKey, attempt: int) -> None:
        """Raise InjectedFailure when attempt ``attempt`` of the task of ``key`` is to fail."""
        if key.shard in self.failing_partitions or self.failure_prob and key.failure_draw(attempt) < self.failure_prob:
            raise InjectedFailure(f"injected failure of step {key.step + 1}, shard {key.shard}, attempt {attempt + 1}")

    def delay_for(self, key: TaskKey) -> float:
        """Seconds the task of ``key`` sleeps before computing."""
        if not self.delays:
            return 0.0
        extra = self.tail.tail(key.compute_draw()) if self.tail is not None else 0.0
        if key.shard in self.slow_partitions:
            return self.delay + extra
        return (self.delay if self.prob and key.straggler_draw() < self.prob else 0.0) + extra

    def sleep(self, key: TaskKey, should_stop=None) -> None:
        """Sleep this task's delay; with ``should_stop``, ask it every ``POLL_SECONDS`` and end early on True."""
        sleep(self.delay_for(key), should_stop)


def sleep(seconds: float, should_stop=None, poll: float = POLL_SECONDS) -> bool:
    """Sleep ``seconds``; with ``should_stop``, ask it every ``poll`` seconds: False if it said True first."""
    if not seconds or should_stop is None:
        time.sleep(seconds)
        return True
    end = time.monotonic() + seconds
    while not should_stop():
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(poll, left))
    return False
