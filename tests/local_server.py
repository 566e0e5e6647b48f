"""Local server processes for tests and benchmarks: a free loopback port, waiting until a
started server answers, stopping it with everything it spawned, and the memory and CPU time of
its whole process tree (a server and its workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import requests


class ServerError(RuntimeError):
    """A local server exited or never answered."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail early if ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"server exited with {process.returncode} before answering {url}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServerError(f"no answer from {url} within {timeout_s} s")


def stop_process_group(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Stop a server started with ``start_new_session=True`` and its children (``mlflow models
    serve`` runs uvicorn as a child, which a plain terminate would leave behind)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def process_tree(pid: int) -> list:
    """``pid`` and every process under it (psutil handles): a server and its workers."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process's whole tree, e.g. a server and its workers (shared pages
    counted per process)."""
    import psutil

    total = 0
    for process in process_tree(pid):
        try:
            total += process.memory_info().rss
        except psutil.Error:  # a worker being replaced, a child that just ended
            continue
    return total


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time (user + system) so far of each process in ``pid``'s tree."""
    import psutil

    times = {}
    for process in process_tree(pid):
        try:
            cpu = process.cpu_times()
            times[process.pid] = cpu.user + cpu.system
        except psutil.NoSuchProcess:
            continue
    return times
