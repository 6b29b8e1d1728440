"""Seeded straggler injection for experiments and tests.

A task is delayed by ``delay`` seconds with probability ``prob`` (drawn from a generator seeded
by the run's seed, epoch, step and partition, so a run is reproducible), and always when its
partition is in ``slow_partitions``. A real straggler (a slow or overloaded executor, a long GC)
looks the same to the driver: a task that finishes late.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np


class StragglerModel(NamedTuple):
    prob: float = 0.0
    delay: float = 0.0
    slow_partitions: tuple[int, ...] = ()
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.delay > 0 and (self.prob > 0 or bool(self.slow_partitions))

    def delay_for(self, epoch: int, step: int, partition: int) -> float:
        """Seconds this task sleeps before computing."""
        if not self.active:
            return 0.0
        if partition in self.slow_partitions:
            return self.delay
        draw = np.random.default_rng([self.seed, epoch, step, partition, 0x5106]).random()
        return self.delay if draw < self.prob else 0.0

    def sleep(self, epoch: int, step: int, partition: int) -> None:
        seconds = self.delay_for(epoch, step, partition)
        if seconds:
            time.sleep(seconds)
