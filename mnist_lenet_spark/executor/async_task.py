"""The long task of the asynchronous mode (``async_sgd``): one per shard, it loops pull, gradient, push against the
driver's parameter service (``cluster.async_service``) until the service says the run's budget is spent. The attempt
(``long_task``) and the loop (``push_loop``) serve the one-job engine's tasks too (``executor.one_job``). A shard is
walked as the synchronous mode walks it (``sharding.epoch_batches``: the same mini-batches, keys, dropout masks and
straggler draws), epoch after epoch; the empty batches a short shard has at an epoch's end are skipped. No pyspark
import here."""
from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator

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
    """mapPartitions body: pull, gradient of the shard's next mini-batch, push, until told to stop (``long_task``)."""
    shards = list(partition)  # drained: the Python worker is reused
    if not shards:
        return iter(())
    [shard] = shards

    def work(client: parameters.AsyncClient) -> tuple[int, int, str]:
        batches = walk.batches(shard, client.position)
        return push_loop(ctx, source, client, lambda version: next(batches), wait_for_new=False)
    return iter([long_task(ctx, endpoint, shard, work)])


def long_task(ctx: tasks.TaskContext, endpoint: parameters.Endpoint, shard: int,
              work: Callable[[parameters.AsyncClient], tuple[int, int, str]]) -> AsyncReport:
    """One attempt of a long task of ``shard``: connect to the coordinator and, unless a newer attempt of the shard
    has said hello, ``work(client)`` -> (pushes taken, pushes refused, how it ended). An error is raised for Spark to
    retry while attempts remain; on the last attempt the shard is reported lost instead, so the job (and the other
    shards' tasks) go on."""
    attempt = tasks.attempt_number()
    pushes = refused = 0
    client = None
    try:
        tasks.tune_process(ctx.threads)
        client = parameters.AsyncClient(endpoint, shard, attempt)
        pushes, refused, ended = work(client) if client.accepted else (0, 0, "superseded")
    except Exception as e:
        if attempt + 1 < ctx.max_attempts:
            raise  # Spark runs it again; the coordinator then refuses this attempt's pushes
        ended = f"{type(e).__name__}: {e}"
        log.error("long task of shard %d, attempt %d (the last): %s; the shard is lost", shard, attempt, ended)
    finally:
        if client is not None:
            client.close()
    return AsyncReport(shard, attempt, pushes, refused, os.getpid(), ended)


def push_loop(ctx: tasks.TaskContext, source, client: parameters.AsyncClient,
              batch_at: Callable[[int], sharding.ShardBatch], wait_for_new: bool) -> tuple[int, int, str]:
    """Pull, the gradient of ``batch_at(version)``, push, until told to stop: (pushes taken, pushes refused, how the
    task ended: "budget" or "superseded"). ``wait_for_new``: each pull waits for a version newer than the one last
    pushed (the synchronous policy: a version that closes meanwhile is given up, its straggler delay cut short);
    else it takes the newest at once."""
    pushes = refused = 0
    after = -1
    while True:
        go, version, flat = client.pull(after)
        if not go:
            return pushes, refused, "budget"
        closed = (lambda: client.version() > version) if wait_for_new else None
        total = tasks.shard_gradient(ctx, source, flat, [batch_at(version)], closed)
        after = version if wait_for_new else -1
        if total is None:  # its version closed: on to the next
            refused += 1
            continue
        status, _ = client.push(version, total.grad_sum, total.loss_sum, total.count)
        if status == parameters.APPLIED:
            pushes += 1
            continue
        refused += 1  # too stale or late: go on with the next version
        if status == parameters.OLD_ATTEMPT:
            return pushes, refused, "superseded"
        if status in (parameters.BUDGET, parameters.FAILED):
            return pushes, refused, "budget"
