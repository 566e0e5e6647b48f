"""Local server processes for tests and benchmarks: a free loopback port, waiting until a
started server answers, and stopping it with everything it spawned."""

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
