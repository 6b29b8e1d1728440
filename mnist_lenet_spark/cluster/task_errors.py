"""A gradient task that failed for good, as the driver reports it: ``StepFailure``, and the task's own error line
out of the Py4J / PythonException text Spark wraps it in."""
from __future__ import annotations

import re


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
