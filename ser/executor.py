"""Run a pure per-item function over many items, locally or (later) on a cluster.

Per-clip work in ser (probing, feature extraction, augmentation) is written as a pure,
picklable, module-level function ``fn(item) -> result``. An executor maps it over items and
yields an :class:`Outcome` per item *in completion order*, so callers stream results to disk
and memory stays bounded. A failure in one item is captured in its outcome, never raised, so a
broken clip cannot stop a run.

To scale out, implement :class:`Executor` over an existing engine (Dask's
``client.map``, Ray's ``remote``, Spark's ``mapPartitions``) and register it in
:data:`EXECUTORS`; nothing else changes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Outcome:
    item: Any
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _run_batch(fn: Callable[[Any], Any], batch: Sequence[Any]) -> list[Outcome]:
    outcomes = []
    for item in batch:
        try:
            outcomes.append(Outcome(item, fn(item)))
        except Exception as exc:  # one bad clip must not stop the others
            outcomes.append(Outcome(item, error=_describe(exc)))
    return outcomes


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Executor:
    """Maps ``fn`` over ``items``; yields one Outcome per item, in completion order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str | None = None,
            total: int | None = None) -> Iterator[Outcome]:
        raise NotImplementedError


class SerialExecutor(Executor):
    def map(self, fn, items, *, desc=None, total=None):
        for item in tqdm(items, desc=desc, total=total, unit="clip", disable=desc is None):
            yield from _run_batch(fn, [item])


class ProcessExecutor(Executor):
    """A local process pool (spawned, so no state leaks in from the parent).

    Items go out in batches, and at most ``2 * workers`` batches are in flight, so the parent
    never holds more than a window of results however many items there are.
    """

    def __init__(self, workers: int = 0, batch_size: int = 8):
        self.workers = workers if workers and workers > 0 else cpu_count()
        self.batch_size = max(1, batch_size)

    def map(self, fn, items, *, desc=None, total=None):
        if self.workers == 1:
            yield from SerialExecutor().map(fn, items, desc=desc, total=total)
            return
        iterator = iter(items)
        progress = tqdm(desc=desc, total=total, unit="clip", disable=desc is None)
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            pending: set[Future] = set()

            def submit_next() -> bool:
                batch = [item for _, item in zip(range(self.batch_size), iterator)]
                if batch:
                    pending.add(pool.submit(_run_batch, fn, batch))
                return bool(batch)

            for _ in range(2 * self.workers):
                if not submit_next():
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    pending.discard(future)
                    for outcome in future.result():
                        progress.update(1)
                        yield outcome
                    submit_next()
        progress.close()


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "serial": lambda workers=0, **_: SerialExecutor(),
    "process": lambda workers=0, **kw: ProcessExecutor(workers, **kw),
}


def make_executor(kind: str = "process", workers: int = 0, **options: Any) -> Executor:
    try:
        factory = EXECUTORS[kind]
    except KeyError:
        raise ValueError(f"unknown executor '{kind}'; choose one of {sorted(EXECUTORS)}") from None
    return factory(workers=workers, **options)
