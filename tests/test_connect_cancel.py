"""Cancelling a one-job fit on Spark Connect, through the operation tags: a KeyboardInterrupt in the fit (raised by
``on_step``) interrupts the training job by its tag, and the user's ``interruptAll`` from another thread fails the
fit at once with one line; either way the server is left with no job running, and the next fit on the same client
works. Under ``tests.test_connect``'s guard (no SparkContext, no RDD); the server's SparkContext (``local_connect``'s
server lives in this process) is only asked which jobs run."""
import threading
import time

import pytest

from mnist_lenet_spark.cluster import one_job
from mnist_lenet_spark.cluster.task_errors import StepFailure
from mnist_lenet_spark.spark import SyncSGD
from tests.test_connect import no_spark_context  # noqa: F401  (the guard, autouse: no SparkContext, no RDD)

pytestmark = pytest.mark.timeout(180)
SECONDS = 20.0  # the bound on every wait below; each takes well under a second here


@pytest.fixture(scope="module")
def frame(connect_pair, mnist):
    return one_job.frame_of(connect_pair[1], mnist.train.images[:480], mnist.train.labels[:480])


def long_fit(client, df, on_step):
    """A fit of 300 steps (20 epochs of 15), which the test cuts short."""
    return SyncSGD(client, 2, batch_size=16).fit_frame(df, epochs=20, max_steps=300, on_step=on_step)


def idle_within(server, seconds: float) -> float:
    """Seconds until the server's SparkContext runs no job; fails after ``seconds``."""
    tracker, start = server.sparkContext.statusTracker(), time.monotonic()
    while tracker.getActiveJobsIds():
        assert time.monotonic() - start < seconds, f"jobs still running: {tracker.getActiveJobsIds()}"
        time.sleep(0.02)
    return time.monotonic() - start


def the_next_fit_works(client, df) -> None:
    result = SyncSGD(client, 2, batch_size=16).fit_frame(df, max_steps=3)
    assert [h["step"] for h in result.history] == [1, 2, 3]


def test_a_keyboard_interrupt_in_the_fit_interrupts_the_training_job(connect_pair, frame):
    server, client = connect_pair
    steps = []

    def on_step(record):
        steps.append(record["step"])
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        long_fit(client, frame, on_step)
    raised = time.monotonic()
    assert steps == [1, 2, 3]
    idle_within(server, SECONDS)
    tracker = server.sparkContext.statusTracker()
    training = max(tracker.getJobIdsForGroup())  # the fit's last job: the training job, cancelled by its tag
    assert tracker.getJobInfo(training).status == "FAILED"
    assert time.monotonic() - raised < SECONDS
    the_next_fit_works(client, frame)


def test_interrupting_all_from_another_thread_fails_the_fit_with_one_line(connect_pair, frame):
    server, client = connect_pair
    training, interrupted = threading.Event(), []

    def interrupt():
        if training.wait(SECONDS):
            interrupted.append((time.monotonic(), client.interruptAll()))

    user = threading.Thread(target=interrupt, name="user", daemon=True)
    user.start()
    with pytest.raises(StepFailure) as e:
        long_fit(client, frame, lambda record: record["step"] == 2 and training.set())
    failed = time.monotonic()
    user.join(SECONDS)
    [(at, operations)] = interrupted
    assert len(operations) == 1  # the training job's collect: the one operation running
    assert failed - at < SECONDS
    message = str(e.value)
    assert "\n" not in message and message.startswith("the training job ended at version "), message
    assert "[OPERATION_CANCELED] Operation has been canceled" in message
    idle_within(server, SECONDS)
    the_next_fit_works(client, frame)


def test_interrupting_a_tag_the_user_set_fails_the_fit(connect_pair, frame):
    server, client = connect_pair
    training = threading.Event()

    def interrupt():
        if training.wait(SECONDS):
            client.interruptTag("my-fit")

    threading.Thread(target=interrupt, name="user", daemon=True).start()
    client.addTag("my-fit")
    try:
        with pytest.raises(StepFailure, match="OPERATION_CANCELED"):
            SyncSGD(client, 2, batch_size=16).fit_frame(frame, epochs=4, max_steps=60,
                                                        on_step=lambda record: record["step"] == 2 and training.set())
    finally:
        client.removeTag("my-fit")
        idle_within(server, SECONDS)
