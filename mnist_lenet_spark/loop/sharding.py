"""How the training set is split into shards, each shard walked in mini-batches, and every random draw keyed. Shard
``k`` of ``W`` is a contiguous block of the training indices (sizes differ by at most one). Every epoch each shard is
reshuffled and walked once in batches of ``batch_size``; the last batch of a shard may be short. Shuffling, dropout and
straggler draws all come from one ``TaskKey`` (seed, epoch, step, shard), so the driver, a re-executed task and a
resumed run see the same batches and the same masks."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

_STRAGGLER_SALT = 0x5106  # keeps the straggler draws apart from the dropout masks of the same key
_FAILURE_SALT = 0xFA11
_COMPUTE_SALT = 0xC0DE


class TaskKey(NamedTuple):
    """Which run, epoch, step and shard a piece of work belongs to: the seed of all its randomness."""
    seed: int
    epoch: int
    step: int
    shard: int

    def shuffle_rng(self) -> np.random.Generator:
        """The shard's order for the whole epoch (the step is not part of it)."""
        return np.random.default_rng([self.seed, self.epoch, self.shard])

    def dropout_rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.step, self.shard])

    def straggler_draw(self) -> float:
        """A uniform [0, 1) number that decides whether this task is delayed."""
        return float(np.random.default_rng([self.seed, self.epoch, self.step, self.shard, _STRAGGLER_SALT]).random())

    def compute_draw(self) -> float:
        """A uniform [0, 1) number that sets this task's emulated compute time (``emulation``)."""
        return float(np.random.default_rng([self.seed, self.epoch, self.step, self.shard, _COMPUTE_SALT]).random())

    def failure_draw(self, attempt: int) -> float:
        """A uniform [0, 1) number that decides whether attempt ``attempt`` of this task fails (injected)."""
        rng = np.random.default_rng([self.seed, self.epoch, self.step, self.shard, attempt, _FAILURE_SALT])
        return float(rng.random())


class ShardBatch(NamedTuple):
    """One shard's mini-batch of one step: the work of one gradient task."""
    key: TaskKey
    index: np.ndarray  # (n,) int64 indices into the training set; n may be 0 at a shard's end


def shard_bounds(num_examples: int, shards: int) -> list[tuple[int, int]]:
    """[(start, stop)] of each shard: contiguous blocks whose sizes differ by at most one."""
    edges = np.linspace(0, num_examples, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def steps_per_epoch(num_examples: int, shards: int, batch_size: int) -> int:
    """Steps for the largest shard to be walked once."""
    largest = max(b - a for a, b in shard_bounds(num_examples, shards))
    return -(-largest // batch_size)


def epoch_batches(num_examples: int, shards: int, batch_size: int, seed: int, epoch: int) -> list[list[ShardBatch]]:
    """batches[s][shard]: every shard's mini-batch of step ``s`` of one epoch (global step epoch x steps + s)."""
    steps = steps_per_epoch(num_examples, shards, batch_size)
    empty = np.empty(0, np.int64)
    per_shard = []
    for k, (start, stop) in enumerate(shard_bounds(num_examples, shards)):
        order = start + TaskKey(seed, epoch, 0, k).shuffle_rng().permutation(stop - start)
        per_shard.append([order[i:i + batch_size] for i in range(0, len(order), batch_size)])
    return [[ShardBatch(TaskKey(seed, epoch, epoch * steps + s, k), b[s] if s < len(b) else empty)
             for k, b in enumerate(per_shard)] for s in range(steps)]
