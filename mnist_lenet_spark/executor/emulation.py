"""Emulated compute, for measuring the system at the paper's scale on one machine (off by default): each gradient task
sleeps for a time drawn from its ``TaskKey`` instead of computing, and returns a gradient of the real size (zeros) and
its batch's example count. Everything else runs for real: the parameter broadcast, the scheduler, the task results, the
backup accumulator, the step signal and the driver's update. So ``local[N + b]`` on a 2-core machine holds ~136 tasks a
step, their Python workers mostly asleep; ``benchmarks/scale.py`` measures what the machine itself still adds.

A task's time is ``shift + tail``: ``shift`` the compute every task needs, ``tail`` random with mean ``tail_mean``:
exponential (the default), lognormal (``sigma``) or Pareto II/Lomax (``alpha`` > 1, a heavy tail). Imports no
pyspark."""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

from mnist_lenet_spark.config import raise_failed
from mnist_lenet_spark.loop.sharding import TaskKey

DISTRIBUTIONS = ("exponential", "lognormal", "pareto")
#: this project's LeNet task time (batch 64, one core, Intel Xeon) fitted as shift + exponential tail:
#: shift = the fastest task, tail_mean = mean - fastest (maximum likelihood); ``benchmarks/scale.py --fit``
FITTED_SHIFT, FITTED_TAIL_MEAN = 0.071, 0.026


class EmulatedCompute(NamedTuple):
    shift: float = FITTED_SHIFT
    tail_mean: float = FITTED_TAIL_MEAN
    distribution: str = "exponential"
    sigma: float = 1.0  # lognormal: the spread of log(tail)
    alpha: float = 2.5  # pareto: the tail index; its variance is finite only above 2

    def check(self) -> None:
        """ConfigError naming the first bad setting."""
        problems = [("distribution", self.distribution in DISTRIBUTIONS, f"must be one of {', '.join(DISTRIBUTIONS)}"),
                    ("shift", math.isfinite(self.shift) and self.shift >= 0, "must be >= 0 seconds"),
                    ("tail_mean", math.isfinite(self.tail_mean) and self.tail_mean >= 0, "must be >= 0 seconds"),
                    ("sigma", math.isfinite(self.sigma) and self.sigma > 0, "must be > 0"),
                    ("alpha", math.isfinite(self.alpha) and self.alpha > 1, "must be > 1 (a finite mean)")]
        raise_failed(self, problems, prefix="emulated compute: ")

    def tail(self, u: float) -> float:
        """The random part for a uniform ``u`` in [0, 1): the inverse of its distribution function."""
        if self.tail_mean == 0:
            return 0.0
        if self.distribution == "exponential":
            return -self.tail_mean * math.log1p(-u)
        if self.distribution == "lognormal":  # mean exp(mu + sigma^2 / 2) = tail_mean
            mu = math.log(self.tail_mean) - self.sigma ** 2 / 2
            return math.exp(mu + self.sigma * NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12)))
        scale = self.tail_mean * (self.alpha - 1)  # Lomax: mean scale / (alpha - 1) = tail_mean
        return scale * ((1 - u) ** (-1 / self.alpha) - 1)

    def seconds(self, key: TaskKey) -> float:
        """How long the task of ``key`` computes: the same for the driver, a retried task and a benchmark."""
        return self.shift + self.tail(key.compute_draw())
