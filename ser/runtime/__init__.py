"""Where per-clip work runs: in this process, a process pool, or a Ray cluster.

``make_executor(kind, workers, **options)`` returns an :class:`~ser.runtime.executor.Executor`;
``EXECUTORS`` maps the names ``params.yaml`` uses (``serial``, ``process``, ``ray``) to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ser.runtime.executor import Executor, ProcessExecutor, SerialExecutor


def _ray_executor(workers: int = 0, **options: Any) -> Executor:
    # Imported only when chosen: ray is heavy, and the other executors must not need it.
    from ser.runtime.ray_executor import RayExecutor

    return RayExecutor(workers, **options)


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "serial": lambda workers=0, **_: SerialExecutor(),
    "process": lambda workers=0, **kw: ProcessExecutor(workers, **kw),
    "ray": _ray_executor,
}


def make_executor(kind: str = "process", workers: int = 0, **options: Any) -> Executor:
    try:
        factory = EXECUTORS[kind]
    except KeyError:
        raise ValueError(f"unknown executor '{kind}'; choose one of {sorted(EXECUTORS)}") from None
    return factory(workers=workers, **options)
