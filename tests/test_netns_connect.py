"""A Spark Connect client the executors cannot reach (issue 38), on the namespace cluster (tests/netns_cluster.py):
the Connect server runs on the driver's host (tests/connect_app.py server: a session on the cluster's master with
Spark's Connect plugin, its token from SPARK_CONNECT_AUTHENTICATE_TOKEN); the executors run the packed environment
(make pack) unpacked once in the cluster's storage, which every host mounts. Not through spark.archives: Connect's
artifact isolation (its default) runs a session's Python workers in a folder of the session's, where the archive's
relative ./environment/bin/python is not; and without isolation a session's artifacts stay in the SparkContext's
list after the session ends, so that an executor started later (after a SIGKILL) fails to fetch them;
the client runs on a host of its own joined only to the driver's host, by a cable of its own on a subnet of its own
(``Cluster.add_private_host``): it reaches the server, no executor reaches it. So the one-job engine's
coordinator='auto' finds that a task cannot reach the client and runs the coordinator in one more task of a barrier
job; a job that loses a task is run again from the fit's start, up to spark.task.maxFailures (2 here) times.

pyspark's Connect client sends a token without TLS only to "localhost", and Spark's Connect server has no TLS: the
client reaches the server through a relay of its own from 127.0.0.1 on its host (the server checks the token of
every call). Needs root, as tests/test_netns_cluster.py; marked ``cluster``."""
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.netns_cluster import PACKED_ENV, Cluster, ClusterError, Host
from tests.test_netns_cluster import TASK_ENDS, new_storage, write_rows

pytestmark = pytest.mark.cluster
APP = str(ROOT / "tests" / "connect_app.py")
SERVER_PORT = 15002  # on the driver's private link only
WORKERS = 5  # 4 task slots for the barrier job (2 workers + 1 backup + the coordinator), and one to spare
MAX_FAILURES = 2  # the server's spark.task.maxFailures: a failed barrier job is run once more
RUNNING = re.compile(r"Executor: Running task (\d+)\.\d+ in stage (\d+)\.\d+ \(TID (\d+)\)")


@dataclass
class Setup:
    cluster: Cluster
    client: Host  # off the bridge: joined only to the driver's host
    token: str
    app_id: str  # the server's application


def _unpack_environment(storage: Path) -> Path:
    """The packed environment unpacked in the cluster's storage: its Python, which every host can run."""
    folder = storage / "environment"
    folder.mkdir()
    subprocess.run(["tar", "-xzf", str(PACKED_ENV), "-C", str(folder)], check=True, timeout=120)
    return folder / "bin" / "python"


def _start_server(c: Cluster, bind: str, token: str) -> tuple[subprocess.Popen, str]:
    """The Connect server on the driver's host; (its process, its application id) once the executors registered."""
    log = open(c.storage / "logs" / "server.log", "ab")
    proc = c.driver.run([sys.executable, APP, "server", c.master_url, str(c.storage), bind, str(SERVER_PORT),
                         str(WORKERS), str(MAX_FAILURES), "1800"], cwd=ROOT, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, stderr=log,
                        env={"PYSPARK_PYTHON": str(c.storage / "environment" / "bin" / "python"),
                             "PYTHONUNBUFFERED": "1", "SPARK_CONNECT_AUTHENTICATE_TOKEN": token})
    log.close()
    ready, _, _ = select.select([proc.stdout], [], [], 240)
    line = proc.stdout.readline() if ready else b""
    if not line:
        log_text = (c.storage / "logs" / "server.log").read_text(errors="replace")
        raise ClusterError(f"the Connect server did not start: {log_text[-3000:]}")
    return proc, json.loads(line)["app_id"]


def _stop_server(proc: subprocess.Popen) -> None:
    """Close its stdin (it stops its session), wait up to 60 s, then SIGKILL its process group."""
    try:
        proc.stdin.close()
        proc.wait(timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def setup():
    """The cluster (5 one-core workers), the client's host off the bridge, and the Connect server on the driver's
    host, for the module; all stopped and deleted at its end, also after a failure."""
    storage = new_storage("connect-")
    from mnist_lenet_spark import data
    c = server = None
    try:
        write_rows(storage, data.load_mnist())
        _unpack_environment(storage)
        c = Cluster(storage, workers=WORKERS, keep=str(ROOT))
        client = c.add_private_host("client", c.driver)
        token = secrets.token_hex(24)
        server, app_id = _start_server(c, client.peer_address, token)
        yield Setup(c, client, token, app_id)
    finally:
        if server is not None:
            _stop_server(server)
        if c is not None:
            c.stop()  # every process in the hosts' namespaces (the server's, if it did not stop), then the hosts
        if not os.environ.get("KEEP_CLUSTER_STORAGE"):  # for a look at the hosts' logs
            shutil.rmtree(storage, ignore_errors=True)
    assert c is None or not [line for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                             text=True).stdout.splitlines()
                             if line.startswith(c.prefix)], "a namespace was left behind"


def run_client(s: Setup, scenario: str, act=None, timeout: float = 300) -> tuple[int, str, str]:
    """Run the client program on the client's host; meanwhile call ``act()`` every 0.2 s until it returns True.
    (status, stdout, stderr)."""
    logs = s.cluster.storage / "logs"
    out_path, err_path = logs / f"client-{scenario}.out", logs / f"client-{scenario}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = s.client.run([sys.executable, APP, "client", scenario, s.client.peer_address, str(SERVER_PORT),
                             str(s.cluster.storage), s.client.address], cwd=ROOT, stdout=out, stderr=err,
                            env={"SPARK_CONNECT_AUTHENTICATE_TOKEN": s.token, "PYTHONUNBUFFERED": "1"})
    deadline, acting = time.monotonic() + timeout, act is not None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if acting and act():
                acting = False
            time.sleep(0.2)
        if proc.poll() is None:
            raise AssertionError(f"the client ran past {timeout:.0f} s: {err_path.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return proc.returncode, out_path.read_text(), err_path.read_text()


def _live_executor_logs(s: Setup, host: Host) -> list[Path]:
    """The stderr of ``host``'s live executors of the server's application (a SIGKILLed one's log stays)."""
    logs = []
    for pid in host.java_pids("CoarseGrainedExecutorBackend"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--executor-id" in argv:
            executor = argv[argv.index(b"--executor-id") + 1].decode()
            logs.append(s.cluster.storage / "work" / host.name / s.app_id / executor / "stderr")
    return logs


def running_tasks(s: Setup) -> dict[str, tuple[int, int, bool]]:
    """{host name: (task index, stage, synced)} of the tasks the live executors run now (a log's last "Running task"
    line with no line after it that ends a task); ``synced``: the task has passed its barrier stage's first
    ``allGather`` (the coordinator's address: the steps have begun)."""
    found = {}
    for host in s.cluster.workers:
        for path in _live_executor_logs(s, host):
            try:
                log = path.read_text(errors="replace")
            except OSError:
                continue
            started = log.rfind("Executor: Running task")
            if started >= 0 and not any(end in log[started:] for end in TASK_ENDS):
                index, stage, tid = RUNNING.match(log, started).groups()
                synced = re.search(rf"Task {tid} from Stage {stage}\(Attempt \d+\) finished global sync", log[started:])
                found[host.name] = (int(index), int(stage), synced is not None)
    return found


class BarrierWatch:
    """Calls ``act(tasks)`` (``running_tasks``) once the training job's barrier stage (one stage, tasks 0..3: 3
    shards and the coordinator, which is the last) has all its tasks past their first ``allGather`` (the steps have
    begun), ``seconds`` after; a stage acted on once is not acted on again. ``times``: how many stages to act on."""

    def __init__(self, s: Setup, act, times: int = 1, seconds: float = 2.0):
        self.s, self.act, self.times, self.seconds = s, act, times, seconds
        self.since: dict[int, float] = {}
        self.done: list[int] = []  # the stages acted on

    def __call__(self) -> bool:
        tasks = running_tasks(self.s)
        stages = {stage for _, stage, _ in tasks.values()}
        if (len(stages) == 1 and sorted(i for i, _, _ in tasks.values()) == [0, 1, 2, 3]
                and all(synced for _, _, synced in tasks.values())):
            [stage] = stages
            if stage not in self.done:
                first = self.since.setdefault(stage, time.monotonic())
                if time.monotonic() - first >= self.seconds:
                    self.act(tasks)
                    self.done.append(stage)
        return len(self.done) >= self.times


def python_workers(host: Host) -> list[int]:
    """The PySpark daemon's forked Python workers on ``host`` (a worker's parent is the daemon)."""
    found = []
    for pid in host.pids():
        try:
            if b"pyspark.daemon" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if b"pyspark.daemon" in Path(f"/proc/{ppid}/cmdline").read_bytes():
                found.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return found


def info_lines(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]


def test_the_client_unreachable_from_the_executors_fits_with_the_coordinator_in_the_cluster(setup):
    """coordinator='auto' (the default): a task cannot reach the client's address (no route), so the coordinator
    runs in the cluster; the fit's 40 steps of 2 + 1 tasks complete, and the model predicts the test rows."""
    s = setup
    for worker in s.cluster.workers:  # the network as the scenario needs it: no executor has a route to the client
        assert "Network is unreachable" in worker.route_to(s.client.address), worker.route_to(s.client.address)
    assert "Network is unreachable" in s.client.route_to(s.cluster.master.address)  # nor the client to the cluster
    code, stdout, stderr = run_client(s, "fit")
    assert code == 0, stderr[-4000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["wrong_token"] is not None, "a session with a wrong token was let in"
    assert out["wrong_token"].startswith("UNAUTHENTICATED"), out["wrong_token"]
    [chose] = info_lines(stderr, "the coordinator runs in the cluster")
    assert f"{s.client.address}:" in chose and "unreachable" in chose, chose
    assert not info_lines(stderr, "running it again")
    assert out["steps"] == 40 and out["kept"] == [2], out
    assert out["test_rows"] == 200 and out["accuracy"] > 0.3, out  # chance: 0.1
    assert out["saved"]


def test_an_executor_killed_mid_fit_runs_the_job_again_from_the_fits_start(setup):
    """SIGKILL the executor JVM of a host running a shard's task of the barrier job, 2 s into the steps (all its
    tasks past their first allGather): the job fails whole, the client runs it again from the fit's start (2 of 2),
    and the fit completes: its 150 steps, a model that predicts the test rows, saved."""
    s, killed = setup, []

    def kill(tasks):
        host = next(name for name, (index, _, _) in sorted(tasks.items()) if index < 3)  # a shard's task
        [pid] = s.cluster.hosts[host].java_pids("CoarseGrainedExecutorBackend")
        os.kill(pid, signal.SIGKILL)
        killed.append((host, pid))

    code, stdout, stderr = run_client(s, "kill", BarrierWatch(s, kill))
    assert killed, "the barrier stage was not seen running"
    assert code == 0, stderr[-4000:]
    assert info_lines(stderr, "the coordinator runs in the cluster")
    [again] = info_lines(stderr, "running it again from the fit's start")
    assert "(2 of 2)" in again, again
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["steps"] == 150 and out["accuracy"] > 0.3 and out["saved"], out


def test_the_coordinators_task_killed_in_every_attempt_fails_the_fit_with_one_line(setup):
    """SIGKILL the Python worker running the coordinator's task (the barrier stage's last), 2 s into the steps, in
    both attempts that spark.task.maxFailures=2 allows: the fit fails with one line naming it, status 1, and no model
    is saved."""
    s, killed = setup, []

    def kill(tasks):
        [host] = [name for name, (index, _, _) in tasks.items() if index == 3]
        pids = python_workers(s.cluster.hosts[host])
        assert pids, f"no Python worker on {host}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed.append((host, pids))

    model = s.cluster.storage / "model-fail"
    code, stdout, stderr = run_client(s, "fail", BarrierWatch(s, kill, times=MAX_FAILURES))
    assert len(killed) == MAX_FAILURES, killed
    assert code == 1, stderr[-4000:]
    errors = [line for line in stderr.splitlines() if "error" in line.lower()
              and not line.startswith(("INFO ", "WARNING "))]  # the client's log lines (one_job's warning)
    assert len(errors) == 1, stderr[-4000:]
    assert errors[0].startswith("connect_app: error: the training job failed"), errors[0]
    assert "2 of 2" in errors[0] and "coordinator in the cluster" in errors[0], errors[0]
    assert "Traceback" not in stderr, stderr[-4000:]
    assert len(info_lines(stderr, "running it again from the fit's start")) == 1
    assert not stdout.strip()
    assert not model.exists()
