"""The one way ser starts or joins Ray (per-clip work and hyper-parameter search alike), on
loopback unless given a cluster's address."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ser.runtime.executor import cpu_count


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While this process starts a Ray instance of its own, or joins one on this machine's loopback.

    Ray on Linux replaces 127.0.0.1 by the machine's outward address and then listens on every
    interface (or, joining, waits for a GCS that does not listen there), unless its single-machine
    switch is off: what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` does when ray is imported, and what
    the processes Ray starts read from their environment. Ray reads the switch from its module
    while it starts, so both are flipped for ``ray.init`` only: a later connection to a real
    cluster from this process is unaffected. And quiet: Ray turns token authentication on for an
    instance it starts and says so at WARNING level on every start.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    saved_level = auth_log.level
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    auth_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env
        auth_log.setLevel(saved_level)


def is_loopback(address: str) -> bool:
    import ipaddress

    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "auto"
        return False


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int, *, ship_code: bool = False,
                quiet: bool = False) -> Iterator[str]:
    """Ray for this process: the cluster at ``address``, else a local one on loopback
    (``num_cpus`` cores, 0 = all). Yields a description. Only what this started is stopped: a
    local Ray is shut down, a cluster is only disconnected from, a Ray already initialized here
    is left alone. ``ship_code``: a cluster's workers import this checkout's ser (the code that
    scores a search's trials), whatever is installed there. ``quiet``: no worker output on the
    driver, errors only."""
    import ray

    if ray.is_initialized():
        yield "the Ray this process had already started"
        return
    options: dict = ({"log_to_driver": False, "logging_level": logging.ERROR} if quiet
                     else {"logging_level": logging.WARNING})
    scratch = None
    if address:
        if ship_code:
            options["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parents[1])],
                                      "excludes": ["__pycache__"]}
        # A cluster on this machine's loopback is only reachable as such: left to itself, Ray rewrites
        # 127.0.0.1 into the machine's routable address and waits for a GCS that does not listen there.
        with loopback_only() if is_loopback(address) else contextlib.nullcontext():
            ray.init(address=address, **options)
        description = f"Ray cluster {address}"
    else:
        # Ray's socket paths live under its temp dir and must stay short: not the project folder.
        scratch = tempfile.mkdtemp(prefix="ser-ray-")
        with loopback_only():
            ray.init(address="local", num_cpus=num_cpus or cpu_count(), include_dashboard=False,
                     _temp_dir=scratch, _node_ip_address="127.0.0.1", **options)
        description = f"local Ray on 127.0.0.1 ({num_cpus or cpu_count()} cores)"
    try:
        yield description
    finally:
        ray.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
