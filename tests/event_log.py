"""Reading a Spark application's event log (tests and benchmarks): how its tasks ended, and where."""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


class TaskEnd(NamedTuple):
    stage: int
    index: int  # the task's partition
    attempt: int
    executor: str
    host: str
    reason: str  # Spark's: Success, TaskKilled, ExceptionFailure, ...
    shard_missing: bool  # failed because it ran away from its shard (shards.ShardMissing)
    seconds: float


def task_ends(events_dir: str | Path, app_id: str) -> list[TaskEnd]:
    """Every task that ended in application ``app_id``, from its event log in ``events_dir`` (Spark 4 writes a
    folder of ``events_*`` files per application)."""
    ends = []
    for f in sorted(Path(events_dir).glob(f"*{app_id}*/events_*")):
        for line in f.read_text().splitlines():
            event = json.loads(line)
            if event.get("Event") != "SparkListenerTaskEnd":
                continue
            info, reason = event["Task Info"], event["Task End Reason"]
            ends.append(TaskEnd(event["Stage ID"], info["Index"], info["Attempt"], info["Executor ID"], info["Host"],
                                reason["Reason"], "ShardMissing" in json.dumps(reason),
                                (info["Finish Time"] - info["Launch Time"]) / 1e3))
    return ends
