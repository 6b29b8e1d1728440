"""A Spark standalone cluster of separate hosts on one Linux machine, for tests. Needs root.

Each host is a network namespace with one address on a private bridge (the bridge lives in a namespace
of its own: nothing is added to the root namespace) and a mount namespace with a private tmpfs on /tmp.
Shared between hosts: the installed software, and one folder (``storage``) standing for the cluster's
storage. Worker hosts also get an empty folder over this checkout's virtualenv ``bin/``, so their
executors have only the system ``python3`` unless the application ships an environment.

Every process is started by this module inside a host, every wait is bounded, and ``stop`` ends exactly
the processes that live in the hosts' namespaces (found by their namespace, not by name), then deletes
the namespaces, also after a failure.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyspark

SPARK_HOME = Path(pyspark.__file__).parent
PACKED_ENV = Path(__file__).resolve().parent.parent / "dist" / "mnist_lenet_spark_env.tar.gz"  # make pack: the executors' Python
SUBNET = "10.77.0"  # only ever inside this module's namespaces
PRIVATE_SUBNETS = "10.78"  # 10.78.N.0/24: the private link of the host of index N (``Cluster.add_private_host``)
MASTER_PORT = 7077


class ClusterError(RuntimeError):
    pass


def wait_for_executors(spark, count: int, seconds: float = 120) -> None:
    """Until ``count`` executors have registered with the driver of ``spark`` (each first fetches and unpacks
    the application's environment); ClusterError after ``seconds``."""
    deadline = time.time() + seconds
    while spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1 < count:  # less the driver's entry
        if time.time() > deadline:
            raise ClusterError(f"{count} executors did not all register in {seconds:.0f} s")
        time.sleep(0.5)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def can_create_namespaces() -> str | None:
    """None if this process can build the cluster, else why not."""
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    name = f"mspcheck{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        return f"cannot create a network namespace: {getattr(e, 'stderr', e)}".strip()
    _ip("netns", "del", name, check=False)
    return None


class Host:
    """One host: its namespaces are held by a bounded ``sleep``; ``run`` starts a command inside them. On the
    bridge, or (``peer``) joined only to ``peer`` by a cable of its own on a subnet of its own
    (``Cluster.add_private_host``)."""

    def __init__(self, cluster: Cluster, name: str, index: int, hide: list[str], keep: list[str],
                 peer: Host | None = None):
        self.cluster, self.name, self.peer = cluster, name, peer
        self.netns = f"{cluster.prefix}-{name}"
        self.link = f"{cluster.prefix[-6:]}{name}"[:15]  # the bridge's (or the peer's) end of this host's cable
        _ip("netns", "add", self.netns)
        try:
            self._plug(cluster, index, peer)
        except BaseException:  # the namespace is not the cluster's yet: its stop would not delete it
            _ip("netns", "del", self.netns, check=False)
            raise
        _ip("-n", self.netns, "link", "set", "lo", "up")
        tmpfs = "mount -t tmpfs -o size=8g,mode=1777 tmpfs /tmp"
        if keep:  # bound back from the old /tmp, which the shell still reaches through its working directory
            tmpfs = (f"cd '{keep[0]}' && {tmpfs} && mkdir -p '{keep[0]}' && "
                     f"mount --no-canonicalize --bind . '{keep[0]}' && cd /")
        hides = "".join(f" && mount -t tmpfs -o size=1m tmpfs '{d}'" for d in hide)
        script = f"{tmpfs}{hides} && echo ready && exec sleep 7200"
        self.holder = subprocess.Popen(["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
                                        "private", "--", "sh", "-c", script], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, start_new_session=True)
        ready, _, _ = select.select([self.holder.stdout], [], [], 20)
        if not ready or self.holder.stdout.readline().strip() != "ready":
            os.killpg(self.holder.pid, signal.SIGKILL)
            _, err = self.holder.communicate(timeout=10)
            _ip("netns", "del", self.netns, check=False)
            raise ClusterError(f"host {name} did not start: {err.strip()}")
        self.net_inode = os.stat(f"/proc/{self.holder.pid}/ns/net").st_ino

    def _plug(self, cluster: Cluster, index: int, peer: Host | None) -> None:
        """This host's cable and address (``eth0``)."""
        if peer is None:
            self.address, self.link_ns = f"{SUBNET}.{index}", cluster.bridge_ns
            _ip("-n", self.link_ns, "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns",
                self.netns)
            _ip("-n", self.link_ns, "link", "set", self.link, "master", "br0", "up")
        else:  # the peer's end gets .1 of the subnet; the peer forwards nothing (no other host reaches this one)
            subnet = f"{PRIVATE_SUBNETS}.{index}"
            self.address, self.peer_address, self.link_ns = f"{subnet}.2", f"{subnet}.1", peer.netns
            _ip("-n", self.link_ns, "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns",
                self.netns)
            _ip("-n", self.link_ns, "addr", "add", f"{self.peer_address}/24", "dev", self.link)
            _ip("-n", self.link_ns, "link", "set", self.link, "up")
            forward = subprocess.run(["ip", "netns", "exec", self.link_ns, "sysctl", "-n", "-w",
                                      "net.ipv4.ip_forward=0"], capture_output=True, text=True, timeout=30)
            if forward.returncode != 0:
                raise ClusterError(f"cannot turn forwarding off on host {peer.name}: {forward.stderr.strip()}")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", self.netns, "link", "set", "eth0", "up")

    def run(self, argv: list[str], env: dict | None = None, cwd: str | os.PathLike = "/", **popen) -> subprocess.Popen:
        """Start ``argv`` on this host (its network and its /tmp) in ``cwd``, in a process group of its own."""
        env = {**self.cluster.base_env(self), **(env or {})}
        command = ["nsenter", "-t", str(self.holder.pid), "-m", "-n", f"--wd={cwd}", "--", "env", "-i",
                   *[f"{k}={v}" for k, v in env.items()], *argv]
        return subprocess.Popen(command, start_new_session=True, **popen)

    def check_output(self, argv: list[str], timeout: float = 60) -> str:
        out = self.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            text, _ = out.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(out.pid, signal.SIGKILL)
            out.communicate()
            raise
        return text

    def pids(self) -> list[int]:
        """Processes living in this host's network namespace (the holder excluded)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != self.holder.pid:
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino == self.net_inode:
                        found.append(int(entry))
                except OSError:  # gone meanwhile
                    pass
        return found

    def java_pids(self, main_class: str) -> list[int]:
        """This host's JVMs whose command line names ``main_class``."""
        out = []
        for pid in self.pids():
            try:
                if main_class.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
            except OSError:
                pass
        return out

    def set_link(self, up: bool) -> None:
        """Plug or pull this host's cable (the bridge's end, or the peer's)."""
        _ip("-n", self.link_ns, "link", "set", self.link, "up" if up else "down")

    def route_to(self, address: str) -> str:
        """``ip route get`` of ``address`` in this host's network namespace (looks up the routes; sends nothing):
        the route, or the error, such as "RTNETLINK answers: Network is unreachable"."""
        out = _ip("-n", self.netns, "route", "get", address, check=False)
        return (out.stdout or out.stderr).strip()

    def tmp_files(self) -> list[str]:
        """The files in this host's /tmp (a running worker keeps an empty folder of its own there)."""
        prune = [arg for d in self.cluster.keep for arg in ("-path", d, "-prune", "-o")]  # a checkout kept there
        return sorted(self.check_output(["find", "/tmp", "-mindepth", "1", *prune, "-not", "-type", "d", "-print"])
                      .split())

    def stop(self) -> None:
        stop_processes([self])
        self.release()

    def release(self) -> None:
        """Ends the namespace holder and deletes the namespace (its processes stopped first: ``stop_processes``)."""
        if self.holder.poll() is None:
            os.killpg(self.holder.pid, signal.SIGKILL)
        self.holder.wait(timeout=10)
        _ip("netns", "del", self.netns, check=False)


def stop_processes(hosts) -> None:
    """SIGTERM every process in these hosts' namespaces, wait up to 15 s for all to end, then SIGKILL what is left
    and wait up to 10 s more."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        for host in hosts:
            for pid in host.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.time() + wait
        while any(host.pids() for host in hosts) and time.time() < deadline:
            time.sleep(0.2)


class Cluster:
    """A master host, ``workers`` one-core worker hosts and a driver host; ``add_worker`` adds one more."""

    def __init__(self, storage: Path, workers: int = 3, worker_memory: str = "1g", keep: str | None = None):
        """``keep``: a folder under /tmp (this checkout, say) that every host must still see."""
        self.keep = [keep] if keep and Path(keep).resolve().is_relative_to("/tmp") else []
        self.prefix = f"msp{uuid.uuid4().hex[:6]}"
        self.storage = Path(storage)
        self.bridge_ns = f"{self.prefix}-bridge"
        self.worker_memory = worker_memory
        self.hosts: dict[str, Host] = {}
        self.venv_bin = str(Path(sys.executable).parent)
        try:
            _ip("netns", "add", self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
            self.master = self.add_host("master")
            self.master_url = f"spark://{self.master.address}:{MASTER_PORT}"
            self.driver = self.add_host("driver")
            self.master.run([str(SPARK_HOME / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                             "--host", self.master.address, "--port", str(MASTER_PORT), "--webui-port", "8080"],
                            stdout=self._log("master"), stderr=subprocess.STDOUT)
            self.workers: list[Host] = []
            for _ in range(workers):
                self.add_worker()
        except BaseException:
            self.stop()
            raise

    def add_host(self, name: str, hide: list[str] = ()) -> Host:
        """A new host on the bridge (for a server the cluster needs, such as a store)."""
        host = Host(self, name, len(self.hosts) + 2, list(hide), self.keep)
        self.hosts[name] = host
        return host

    def add_private_host(self, name: str, peer: Host, hide: list[str] = ()) -> Host:
        """A new host off the bridge, joined only to ``peer`` by a cable of its own on a subnet of its own
        (``PRIVATE_SUBNETS``.N.0/24: the host is .2, ``peer`` .1; neither has a default route and ``peer`` does
        not forward): ``peer`` reaches it, no other host does (a client outside the cluster's network, say)."""
        host = Host(self, name, len(self.hosts) + 2, list(hide), self.keep, peer=peer)
        self.hosts[name] = host
        return host

    def _log(self, name: str):
        folder = self.storage / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f"{name}.log", "ab")

    def base_env(self, host: Host) -> dict:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "SPARK_HOME": str(SPARK_HOME),
                "SPARK_LOCAL_IP": host.address, "SPARK_LOCAL_HOSTNAME": host.address,
                "SPARK_LOG_DIR": str(self.storage / "logs" / host.name), "SPARK_NO_DAEMONIZE": "1",
                **({"JAVA_HOME": os.environ["JAVA_HOME"]} if "JAVA_HOME" in os.environ else {})}

    def add_worker(self) -> Host:
        """A new one-core worker host, registered with the master (waits up to 60 s)."""
        name = f"worker{len(self.workers) + 1}"
        host = self.add_host(name, hide=[self.venv_bin])
        work = self.storage / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        host.run([str(SPARK_HOME / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                  self.master_url, "--host", host.address, "--cores", "1", "--memory", self.worker_memory,
                  "--webui-port", "8081", "--work-dir", str(work)], stdout=self._log(name), stderr=subprocess.STDOUT)
        self.workers.append(host)
        self._wait_for_log("master", f"Registering worker {host.address}", 60)
        return host

    def _wait_for_log(self, name: str, text: str, seconds: float) -> None:
        path = self.storage / "logs" / f"{name}.log"
        deadline = time.time() + seconds
        while time.time() < deadline:
            if path.is_file() and text in path.read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise ClusterError(f"{text!r} not in {path} after {seconds} s")

    def executor_pids(self) -> dict[str, list[int]]:
        return {h.name: h.java_pids("CoarseGrainedExecutorBackend") for h in self.workers}

    def stop(self) -> None:
        hosts = list(reversed(list(self.hosts.values())))
        stop_processes(hosts)  # every host at once: one shared wait, not one per host
        for host in hosts:
            try:
                host.release()
            except Exception:  # the rest must still go
                pass
        _ip("netns", "del", self.bridge_ns, check=False)
