"""A standalone cluster of separate hosts (tests/netns_cluster.py): hosts that share no /tmp, no network stack
and no Python environment with the driver; executors run the packed environment (make pack) on the system
python3. Needs root; under CLUSTER_TESTS_REQUIRED=1 (.ci/run) a machine that cannot build the cluster fails
these tests instead of skipping them. Marked ``cluster`` (slow): ``make test ARGS='-m "not cluster"'`` skips."""
import json
import os
from collections import Counter
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import event_log, s3_server
from tests.conftest import ROOT
from tests.netns_cluster import PACKED_ENV, SPARK_HOME, Cluster, can_create_namespaces

pytestmark = pytest.mark.cluster
STORAGE_PARENT = ROOT / "build"  # outside /tmp, which each host has its own of


def _unavailable() -> str | None:
    reason = can_create_namespaces()
    if reason is None and not PACKED_ENV.is_file():
        reason = f"{PACKED_ENV} is missing (make pack)"
    return reason


def new_storage(prefix: str) -> Path:
    """A new folder for a namespace cluster's storage; the test skips (fails under CLUSTER_TESTS_REQUIRED=1) when
    this machine cannot build the cluster."""
    reason = _unavailable()
    if reason:
        if os.environ.get("CLUSTER_TESTS_REQUIRED") == "1":
            pytest.fail(f"the namespace cluster is required here: {reason}")
        pytest.skip(reason)
    import tempfile
    STORAGE_PARENT.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=STORAGE_PARENT))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    storage = new_storage("cluster-")
    from mnist_lenet_spark import data
    write_rows(storage, data.load_mnist())
    (storage / "events").mkdir()
    c = Cluster(storage, workers=3, keep=str(ROOT))
    try:
        store = c.add_host("store")  # an S3 store on a host of its own, as the cluster's object store
        s3_server.start(store.run, store.address, 5000, storage / "logs" / "store.log")
        c.store_env = s3_server.client_env(store.address, 5000)
        yield c
    finally:
        c.stop()
        import shutil
        if not os.environ.get("KEEP_CLUSTER_STORAGE"):  # for a look at the hosts' logs
            shutil.rmtree(storage, ignore_errors=True)
    assert not [line for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
                .splitlines() if line.startswith(c.prefix)], "a namespace was left behind"


def write_rows(storage: Path, mnist) -> None:
    """The training and test rows as Parquet in the cluster's storage, written here (not on a host)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name, images, labels in [("rows", mnist.train.images[:600], mnist.train.labels[:600]),
                                 ("job", mnist.train.images[:5200], mnist.train.labels[:5200]),  # 5,000 validate
                                 ("test", mnist.test.images[:200], mnist.test.labels[:200])]:
        table = pa.table({"label": pa.array(labels.astype("int64")),
                          "features": pa.array([x.tobytes() for x in images], pa.binary())})
        (storage / f"{name}.parquet").mkdir()
        pq.write_table(table, storage / f"{name}.parquet" / "part-0.parquet")


def run_driver(cluster, argv, act=None, timeout=600):
    """Run ``argv`` on the driver host; ``act()`` once the driver says it is at step 3. (returncode, stdout, stderr)"""
    for marker in ("at-step-3", "done", "plugged"):
        (cluster.storage / marker).unlink(missing_ok=True)
    env = {"PYSPARK_PYTHON": "./environment/bin/python", "PYTHONUNBUFFERED": "1",
           "STORE_ENV": json.dumps(cluster.store_env)}
    proc = cluster.driver.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if act is not None:
            deadline = time.time() + timeout
            while not (cluster.storage / "at-step-3").exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            if proc.poll() is None:
                act()
                (cluster.storage / "done").write_text("")
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, stdout, stderr


def scenario(cluster, name, act=None):
    code, stdout, stderr = run_driver(cluster, [sys.executable, str(ROOT / "tests" / "cluster_app.py"), name,
                                                cluster.master_url, str(cluster.storage)], act)
    assert code == 0, stderr[-4000:]
    return json.loads(stdout.strip().splitlines()[-1])


#: what a SIGKILLed executor JVM leaves of Spark's own in its host's /tmp (native libraries it unpacked, the
#: archive it fetched): nothing of ours, and no shards
SIGKILL_LEFTOVERS = ("/tmp/liblz4-java-", "/tmp/snappy-", "mnist_lenet_spark_env.tar.gz")


def tmp_files(cluster) -> dict[str, set[str]]:
    """Each host's files in /tmp, less the running JVMs' own perf files."""
    out = {}
    for host in cluster.hosts.values():
        live = {str(p) for p in host.pids()}
        out[host.name] = {e for e in host.tmp_files()
                          if not (e.startswith("/tmp/hsperfdata_root/") and e.rsplit("/", 1)[-1] in live)}
    return out


@pytest.fixture
def tmp_before(cluster):
    """The hosts' /tmp files before the test (an earlier test's SIGKILLed JVM may have left Spark's own)."""
    return tmp_files(cluster)


def assert_nothing_left(cluster, before, allowed=()):
    """No new shard files, zips or Spark files in any host's /tmp once the application is over (bounded wait:
    the workers remove an application's folders a moment after it ends)."""
    deadline = time.time() + 30
    while True:
        left = {name: sorted(e for e in files - before.get(name, set()) if not any(a in e for a in allowed))[:5]
                for name, files in tmp_files(cluster).items()}
        left = {name: files for name, files in left.items() if files}
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert not left, f"left behind: {left}"


def test_estimator_with_defaults_transform_save_and_clear_errors(cluster, tmp_before):
    """LeNetClassifier.fit(df) with no setting: shards staged on the executors' own disks, no shared /tmp."""
    out = scenario(cluster, "dataframe")
    assert out["steps"] == list(range(1, 7))
    assert out["dataframe_vs_arrays"] < 1e-6  # the same batches and sums as broadcast arrays
    assert out["accuracy"] == pytest.approx(out["driver_accuracy"])
    assert out["loaded_vs_saved"] == 0.0
    assert out["save_driver_local"].startswith("model path /tmp/lenet-model: the executors")
    assert "not a saved model" in out["load_no_model"]
    assert out["read_driver_local"].startswith("train data /tmp/driver-only.parquet: the executors cannot read it")
    assert out["staging_not_shared"].startswith("staging directory /tmp/staging-x: the executors")
    # staged in the S3 store instead (moto's server on a host of its own): the same parameters, no object left
    assert out["s3_objects_during"] == 4 and out["s3_objects_after"] == 0
    assert out["s3_vs_arrays"] < 1e-6
    assert_nothing_left(cluster, tmp_before)


def test_a_killed_executor_on_the_dataframe_path_changes_no_result(cluster, tmp_before):
    """SIGKILL one executor after step 3: its cached shards are recomputed elsewhere from lineage."""
    killed = []

    def kill():
        pids = [p for host_pids in cluster.executor_pids().values() for p in host_pids]
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    out = scenario(cluster, "kill", kill)
    assert killed
    assert out["steps"] == list(range(1, 9))
    assert out["dataframe_vs_arrays"] < 1e-6
    assert_nothing_left(cluster, tmp_before, allowed=SIGKILL_LEFTOVERS)


def test_a_host_that_joins_mid_fit_gets_step_tasks(cluster, tmp_before):
    """Broadcast arrays, 4 tasks a step on 3 one-core hosts; a fourth joins after step 3 and takes tasks."""
    joined = []
    out = scenario(cluster, "join", lambda: joined.append(cluster.add_worker()))
    assert out["steps"] == list(range(1, 11))
    assert out["cluster_vs_single"] < 1e-4
    ends = event_log.task_ends(cluster.storage / "events", out["app_id"])
    tasks_per_stage = Counter(end.stage for end in ends)
    steps = [end.host for end in ends if end.reason == "Success" and tasks_per_stage[end.stage] == 4]
    assert steps.count(joined[0].address) >= 3, f"the new host ran {steps.count(joined[0].address)} step tasks"
    assert_nothing_left(cluster, tmp_before)


def executor_log(cluster, host, app_id) -> str:
    """The stderr of ``host``'s executor in the application (its Python workers' warnings land there)."""
    work = cluster.storage / "work" / host.name / app_id
    return "".join(f.read_text(errors="replace") for f in sorted(work.glob("*/stderr")))


#: how Spark's Executor logs the end of a task: done, killed (by a cancel), failed
TASK_ENDS = ("Executor: Finished task", "killed task", "Exception in task")


def running_a_task(cluster, host) -> bool:
    """Whether ``host``'s executor in the newest application is running a task now: its live stderr's last
    "Running task" line has no line after it that ends a task."""
    apps = sorted((cluster.storage / "work" / host.name).glob("app-*"), key=lambda p: p.stat().st_mtime)
    if not apps:
        return False
    log = executor_log(cluster, host, apps[-1].name)
    started = log.rfind("Executor: Running task")
    return started >= 0 and not any(end in log[started:] for end in TASK_ENDS)


def test_a_host_whose_link_is_down_for_20_s_changes_no_result_and_the_step_signal_recovers(cluster, tmp_before):
    """Backup workers (2 + 1 tasks a step); the cable of a worker running a step-4 task is pulled for 20 s, while
    the steps go on with the other hosts: the host's executor finds the step signal unreachable, and reachable
    again once plugged; the parameters equal a single-process replay of the kept shards."""
    import threading
    cut, plugged = [], []

    def plug():
        cut[0].set_link(True)
        plugged.append(time.time())
        (cluster.storage / "plugged").write_text("")

    def pull():
        # step 4's 3 tasks have started and sleep 3 s; after the join test there are 4 hosts, so pick one that
        # is running a task (the others would have nothing to ask the signal while cut off)
        time.sleep(1.0)
        busy = [h for h in cluster.workers if running_a_task(cluster, h)]
        assert busy, "no worker is running a step-4 task"
        cut.append(busy[0])
        busy[0].set_link(False)
        timer = threading.Timer(20, plug)
        timer.start()
        plugged.append(timer)

    try:
        out = scenario(cluster, "link", pull)
    finally:
        if plugged:
            plugged[0].cancel()
        for host in cut:
            host.set_link(True)
    assert len(plugged) == 2, "the link was not plugged back during the run"
    assert out["steps"] == list(range(1, 13))
    assert out["cluster_vs_single"] < 1e-4
    host = cut[0]
    log = executor_log(cluster, host, out["app_id"])
    lost, back = log.find("unreachable"), log.find("reachable again")
    assert 0 <= lost < back, f"the step signal's warnings on {host.name}: {log[-3000:]}"
    assert "unreachable" not in log[back:], "the step signal was lost again after the link came back"
    # Spark killed at most the task that was cut off with its host; the rest stopped when told
    assert out["late_tasks"]["killed_by_spark"] <= 1, out["late_tasks"]
    assert_nothing_left(cluster, tmp_before)


def test_spark_submit_as_the_readme_shows_it(cluster, tmp_before):
    """The README's spark-submit line: --archives the packed environment, --py-files the zip, --train Parquet."""
    spark_submit = str(SPARK_HOME / "bin" / "spark-submit")
    argv = [spark_submit, "--master", cluster.master_url, "--properties-file", "conf/spark-defaults.conf",
            "--driver-java-options", "-Dlog4j2.configurationFile=conf/log4j2.properties",
            "--archives", "dist/mnist_lenet_spark_env.tar.gz#environment",
            "--conf", "spark.pyspark.python=./environment/bin/python",
            "--conf", "spark.pyspark.driver.python=.venv/bin/python",
            "--py-files", "dist/mnist_lenet_spark.zip", "jobs/train_lenet.py"]
    code, stdout, stderr = run_driver(cluster, argv + [
        "--train", str(cluster.storage / "job.parquet"), "--test", str(cluster.storage / "test.parquet"),
        "--format", "parquet", "--max-steps", "3", "--batch-size", "16", "--no-progress"])
    assert code == 0, stdout[-2000:] + "\n".join(line for line in stderr.splitlines() if " INFO " not in line)[-4000:]
    assert "test accuracy:" in stdout
    code, stdout, stderr = run_driver(cluster, argv + ["--train", "/tmp/nowhere.parquet", "--test",
                                                       "/tmp/nowhere.parquet", "--format", "parquet"])
    # spark-submit's PythonRunner sends the job's stderr to its stdout
    errors = [line for line in (stdout + stderr).splitlines() if "error" in line.lower() and " INFO " not in line]
    assert code == 2, errors[:5]
    assert len(errors) == 1 and errors[0].startswith("train_lenet: error: train data /tmp/nowhere.parquet: the "
                                                     "executors cannot read it"), errors[:5]
    assert_nothing_left(cluster, tmp_before)


def test_async_a_killed_executor_is_run_again_and_the_run_reaches_its_budget(cluster, tmp_before):
    """Asynchronous SGD, 2 long tasks on 1-core executors: once both have pushed, the executor running one of them
    is SIGKILLed while both wait for their pushes to be applied. Spark runs the task again on another host; the new
    attempt goes on from its shard's position, and the run applies its whole budget of 30 updates. What the kill
    cost is counted: the killed attempt's pending push is applied if the service reaches it before the new attempt
    says hello, else refused as an old attempt's (a lost update)."""
    killed = []

    def kill():
        busy = [h for h in cluster.workers if running_a_task(cluster, h)]
        assert busy, "no worker is running an asynchronous task"
        pid = cluster.executor_pids()[busy[0].name][0]
        os.kill(pid, signal.SIGKILL)
        killed.append(busy[0].name)

    out = scenario(cluster, "async_kill", kill)
    assert killed
    assert out["steps"] == list(range(1, 31)), json.dumps({k: v for k, v in out.items() if k != "steps"})
    reports = out["reports"]
    assert all(r["ended"] in ("budget", "superseded") for r in reports), reports  # no shard was lost
    # the killed attempt's report died with its executor; the attempt Spark ran again for it reached the budget
    [retried] = [r for r in reports if r["attempt"] >= 1]
    shard = str(retried["shard"])
    killed_attempt_updates = out["updates_by_shard"][shard] - sum(r["pushes"] for r in reports
                                                                   if str(r["shard"]) == shard)
    assert killed_attempt_updates >= 1 and retried["pushes"] >= 1  # the killed attempt had pushed, the new one too
    assert out["refused"]["old attempt"] <= 1, out["refused"]  # at most the push the killed attempt left queued
    assert min(out["updates_by_shard"].values()) >= 2, out["updates_by_shard"]  # both shards went on
    assert out["loss"][1] < out["loss"][0]
    assert_nothing_left(cluster, tmp_before, allowed=SIGKILL_LEFTOVERS)
