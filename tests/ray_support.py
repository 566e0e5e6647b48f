"""A real Ray cluster on this machine, node by node with ``ray start`` as on real machines: for
the Ray executor's tests and ``benchmarks/bench_ray.py``.

Every node is a ``ray start --block`` in a process group of its own, with its own ports, under a
temporary folder of the cluster's own; :meth:`LocalCluster.stop` kills exactly those groups and
the workers of their raylets, never ``ray stop`` (which stops every Ray instance of the user).

Ray 2.60 on Linux does not keep such a cluster on loopback: it replaces ``--node-ip-address
127.0.0.1`` by the machine's outward address and listens on every interface, and its one
loopback switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) refuses worker nodes. The driver
reaches the head at 127.0.0.1; the nodes reach each other at the address Ray chose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = Path(sys.executable).with_name("ray")
# One math thread per worker, as the stages set it for their pools.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
# The machine's token (~/.ray/auth_token) on every node and driver: a head that finds one enables
# token auth by itself, and a worker node started without the mode would then be refused.
AUTH = {"RAY_AUTH_MODE": "token"}


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Node:
    """One ``ray start --block`` in a process group of its own: killing the group is losing the
    machine (its raylet, object store and agents; its workers exit with their raylet)."""

    def __init__(self, process: subprocess.Popen, log: Path):
        self.process, self.log = process, log
        self._raylet: psutil.Process | None = None

    @property
    def raylet(self) -> psutil.Process | None:
        """This node's raylet (None once the node is gone)."""
        if self._raylet is None:
            for process in psutil.process_iter(["name"]):
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    if process.info["name"] == "raylet" and os.getpgid(process.pid) == self.process.pid:
                        self._raylet = process
                        break
        return self._raylet if self._raylet is not None and self._raylet.is_running() else None

    def running_tasks(self, function: str = "_run_payload") -> int:
        """Worker processes of this node running a task of ``function`` now (Ray titles them so)."""
        raylet = self.raylet
        if raylet is None:
            return 0
        busy = 0
        with contextlib.suppress(psutil.Error):
            for worker in raylet.children():
                with contextlib.suppress(psutil.Error):
                    busy += worker.cmdline()[:1] == [f"ray::{function}"]
        return busy

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


class LocalCluster:
    """A head and worker nodes, ``cpus_per_node`` CPUs each. Its temporary folder is short: Ray's
    socket paths under it must fit in 107 bytes."""

    def __init__(self, cpus_per_node: int = 1):
        self.cpus_per_node = cpus_per_node
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ser-cluster-", dir="/tmp"))
        self.nodes: list[Node] = []
        self.address: str | None = None
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        self.env.update(ONE_THREAD, **AUTH, RAY_USAGE_STATS_ENABLED="0")

    def _start(self, args: list[str], name: str) -> Node:
        log = self.temp_dir / f"{name}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(
                [str(RAY), "start", "--block", f"--num-cpus={self.cpus_per_node}", "--node-ip-address=127.0.0.1",
                 f"--temp-dir={self.temp_dir}", "--object-store-memory=150000000", "--disable-usage-stats",
                 "--min-worker-port=0", "--max-worker-port=0", *args],
                env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(process, log)
        self.nodes.append(node)
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        return node

    def start_head(self) -> Node:
        gcs, client, dashboard, agent, agent_grpc, env_agent, metrics = free_ports(7)
        head = self._start(["--head", f"--port={gcs}", "--include-dashboard=false",
                            f"--ray-client-server-port={client}", f"--dashboard-port={dashboard}",
                            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}"], "head")
        self.address = f"127.0.0.1:{gcs}"
        return head

    def add_node(self) -> Node:
        agent, agent_grpc, env_agent, metrics = free_ports(4)
        return self._start([f"--address={self.address}", f"--dashboard-agent-listen-port={agent}",
                            f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={env_agent}",
                            f"--metrics-export-port={metrics}"], f"node{len(self.nodes)}")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        workers = []
        for node in self.nodes:  # workers run in sessions of their own, outside the node's group
            raylet = node.raylet
            with contextlib.suppress(psutil.Error):
                workers += raylet.children(recursive=True) if raylet else []
        for node in reversed(self.nodes):
            node.kill()
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.kill()
        psutil.wait_procs(workers, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


