"""How the training set is split into shards and each shard walked in mini-batches.

Shard ``k`` of ``W`` is a contiguous block of the training indices (sizes differ by at most
one). Every epoch each shard is reshuffled with a generator seeded by (seed, epoch, shard)
and walked once in batches of ``batch_size``; the last batch of a shard may be short. The
schedule depends on nothing else, so the driver, a re-executed task and a resumed run all
see the same batches.
"""
from __future__ import annotations

import numpy as np


def shard_bounds(num_examples: int, shards: int) -> list[tuple[int, int]]:
    """[(start, stop)] of each shard: contiguous blocks whose sizes differ by at most one."""
    edges = np.linspace(0, num_examples, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def steps_per_epoch(num_examples: int, shards: int, batch_size: int) -> int:
    """Steps for the largest shard to be walked once."""
    largest = max(b - a for a, b in shard_bounds(num_examples, shards))
    return -(-largest // batch_size)


def epoch_batches(num_examples: int, shards: int, batch_size: int, seed: int, epoch: int) -> list[list[np.ndarray]]:
    """batches[step][shard] = int64 indices into the training set (possibly empty at a shard's end)."""
    per_shard = []
    for k, (start, stop) in enumerate(shard_bounds(num_examples, shards)):
        order = start + np.random.default_rng([seed, epoch, k]).permutation(stop - start)
        per_shard.append([order[i:i + batch_size] for i in range(0, len(order), batch_size)])
    steps = steps_per_epoch(num_examples, shards, batch_size)
    empty = np.empty(0, np.int64)
    return [[b[s] if s < len(b) else empty for b in per_shard] for s in range(steps)]


def step_seed(seed: int, epoch: int, step: int, shard: int) -> list[int]:
    """Seed of the dropout generator of one shard's mini-batch in one step."""
    return [seed, epoch, step, shard]


def step_items(seed: int, epoch: int, step: int, batches: list[np.ndarray]) -> list[tuple[np.ndarray, list[int]]]:
    """(batch indices, dropout seed) of every shard in one step: the work of one step's tasks."""
    return [(index, step_seed(seed, epoch, step, k)) for k, index in enumerate(batches)]
