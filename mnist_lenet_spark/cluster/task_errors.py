"""A gradient task that failed for good, as the driver reports it: ``StepFailure``, and the task's own error line
out of the Py4J / PythonException text Spark wraps it in; ``start_job`` runs a job whose failure is reported so."""
from __future__ import annotations

import re
import threading
from typing import Callable


class StepFailure(RuntimeError):
    """A step could not get the gradients it needs (a task failed for good); no update was applied."""


def task_error(e: BaseException) -> str:
    """The task's own error line out of the Py4J / PythonException wrapper around it (else the first line)."""
    lines = [line.strip() for line in str(e).splitlines()]
    own = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failure): ", line)
           and not line.startswith(("py4j.", "org.apache.", "java."))]
    if not own:
        return lines[0] if lines else type(e).__name__
    name, message = own[-1].split(": ", 1)
    return f"{name.rsplit('.', 1)[-1]}: {message}"  # InjectedFailure, not mnist_lenet_spark.executor.straggler.Inj...


def start_job(sc, group: str, description: str, action: Callable[[], object]) -> tuple[threading.Thread, list]:
    """Run the Spark action ``action()`` in a background thread as job group ``group``, which a cancel interrupts;
    (the thread, the list that receives the action's exception, if it raises)."""
    from pyspark import InheritableThread  # keeps the job's thread paired with a JVM thread
    failure: list[BaseException] = []

    def run():
        sc.setJobGroup(group, description, interruptOnCancel=True)
        try:
            action()
        except Exception as e:  # a cancelled job raises too
            failure.append(e)

    thread = InheritableThread(target=run, daemon=True)
    thread.start()
    return thread, failure


def input_problem(e: BaseException) -> str | None:
    """The line of a DataError (an ``executor.images.ImageError`` among them) that a task raised while computing
    the input rows (a column of ``images.image_features``), out of Spark's wrapper; None for any other failure."""
    if "Py4J" not in type(e).__name__ and "PythonException" not in type(e).__name__:
        return None
    name, _, message = task_error(e).partition(": ")
    return message if name in ("DataError", "ImageError") else None
