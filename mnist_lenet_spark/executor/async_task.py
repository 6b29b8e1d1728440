"""The long task of the asynchronous mode (``async_sgd``): one per shard, it loops pull, gradient, push against the
driver's parameter service (``cluster.async_service``) until the service says the run's budget is spent. A shard is
walked as the synchronous mode walks it (``sharding.epoch_batches``: the same mini-batches, keys, dropout masks and
straggler draws), epoch after epoch; the empty batches a short shard has at an epoch's end are skipped. No pyspark
import here."""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Iterator

from mnist_lenet_spark.wire import parameters
from mnist_lenet_spark.executor import tasks
from mnist_lenet_spark.loop import sharding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardBatches:
    """How the shards are cut and walked: as ``sharding.epoch_batches(num_examples, shards, batch_size, seed, e)``."""
    num_examples: int
    shards: int
    batch_size: int
    seed: int

    def batches(self, shard: int, skip: int = 0) -> Iterator[sharding.ShardBatch]:
        """Shard ``shard``'s non-empty mini-batches, epoch after epoch without end, the first ``skip`` left out."""
        walked = 0
        for epoch in itertools.count():
            for step in sharding.epoch_batches(self.num_examples, self.shards, self.batch_size, self.seed, epoch):
                batch = step[shard]
                if len(batch.index) == 0:
                    continue
                walked += 1
                if walked > skip:
                    yield batch

    def per_epoch(self) -> int:
        """Non-empty mini-batches of all shards in one epoch: the updates of one pass over the data."""
        return sum(-(-(b - a) // self.batch_size) for a, b in sharding.shard_bounds(self.num_examples, self.shards))


@dataclass(frozen=True)
class AsyncReport:
    """What a task returns to the driver (a few numbers, through Spark's result)."""
    shard: int
    attempt: int
    pushes: int  # gradients the service applied
    refused: int  # gradients it refused (stale, or the budget was spent meanwhile)
    pid: int
    ended: str  # "budget" (told to stop), "superseded" (a newer attempt of its shard), or the error


def async_task(ctx: tasks.TaskContext, source, endpoint: parameters.Endpoint, walk: ShardBatches,
               partition: Iterator[int]) -> Iterator[AsyncReport]:
    """mapPartitions body: pull, gradient of the shard's next mini-batch, push, until told to stop. An error is
    raised for Spark to retry while attempts remain; on the last attempt the shard is reported lost instead, so the
    job (and the other shards' tasks) go on: the run ends on the service's budget."""
    shards = list(partition)  # drained: the Python worker is reused
    if not shards:
        return iter(())
    [shard] = shards
    attempt = tasks.attempt_number()
    pushes = refused = 0
    client = None
    try:
        tasks.tune_process(ctx.threads)
        client = parameters.AsyncClient(endpoint, shard, attempt)
        if not client.accepted:
            ended = "superseded"
        else:
            ended = "budget"
            for batch in walk.batches(shard, client.position):
                go, version, flat = client.pull()
                if not go:
                    break
                total = tasks.shard_gradient(ctx, source, flat, [batch])
                status, _ = client.push(version, total.grad_sum, total.loss_sum, total.count)
                if status == parameters.APPLIED:
                    pushes += 1
                    continue
                refused += 1
                if status == parameters.OLD_ATTEMPT:
                    ended = "superseded"
                    break
                if status in (parameters.BUDGET, parameters.FAILED):
                    break
    except Exception as e:
        if attempt + 1 < ctx.max_attempts:
            raise  # Spark runs it again; the service then refuses this attempt's pushes
        ended = f"{type(e).__name__}: {e}"
        log.error("async task of shard %d, attempt %d (the last): %s; the shard is lost", shard, attempt, ended)
    finally:
        if client is not None:
            client.close()
    return iter([AsyncReport(shard, attempt, pushes, refused, os.getpid(), ended)])
