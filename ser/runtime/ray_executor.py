"""Per-clip work on a Ray cluster: :class:`RayExecutor`, the ``ray`` entry of :data:`ser.runtime.EXECUTORS`.

Where it runs. Given an address (the ``ray_address`` of ``data:`` / ``features:``, else
``$RAY_ADDRESS``) the executor joins that cluster as a driver and leaves it running when the map
ends. Without one it starts a Ray instance on this machine with ``workers`` CPUs (0 = every
core), listening on 127.0.0.1 only and with no dashboard, and stops it at the end. When this
process is already connected (a caller, or a Ray Tune trial, ran ``ray.init``) that connection
is used and left alone. ``ray`` is imported only when a map starts.

What travels. Each task carries a batch of items as they are: for ser's stages, absolute clip
paths and the params (``harmonize`` probes paths under ``data/raw`` resolved; ``features`` and
``augment`` resolve metadata paths against the repository root), never audio. Workers therefore
do not depend on the driver's working directory, but every node must see the clips at the same
absolute path as the driver: the repository (or at least ``data/raw``) on shared storage mounted
at the same path on every machine, or the same tree synced or ``dvc pull``-ed to that path.
Every node also runs the same Python environment with ``ser`` installed (``requirements.txt``
plus ``pip install -e .``, or one container image): Ray imports the per-clip function and the
item classes by name. Shipping the audio through the object store was rejected: the driver
would read the whole corpus through one disk and one network link, and the per-clip functions
take paths. Results come back to the driver, which alone writes the cache and the outputs, so
workers need no write access to the repository.

Guarantees, as :class:`~ser.runtime.executor.ProcessExecutor` gives them: at most two batches per
cluster CPU are in flight (``ray.wait`` back-pressure), so the driver holds a window of results
however many items there are; a failing item is an :class:`~ser.runtime.executor.Outcome` with its
error; a task whose worker process or node is lost is retried by Ray (``max_retries``), and
should it still fail with a Ray system error its items are retried one per task, so only an
item that keeps killing its worker fails, with :data:`~ser.runtime.executor.WORKER_DIED` and the Ray
error that ended it. Every item ends up with exactly one outcome, unless tasks keep coming back
without results (five in a row with none finishing in between: workers that cannot import
``ser``, a node environment that differs): the map then stops with an error rather than failing
the whole corpus clip by clip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

from ser.params import DataParams, FeatureParams, typed
from ser.runtime.executor import (WORKER_DIED, DeathCount, Executor, Outcome, cpu_count, describe_error, run_batch,
                                  use_private_numba_cache)
from ser.runtime.ray_session import ray_session

# Batches in flight per cluster CPU: one running, one queued on its node so no CPU waits for the
# driver between tasks.
IN_FLIGHT_PER_CPU = 2

_numba_cache_set = False  # per Ray worker process


def _run_payload(payload: bytes) -> list[tuple[Any, str | None]]:
    """One Ray task: a batch through ``run_batch`` in a Ray worker process.

    ``fn`` and the batch arrive pickled by the driver rather than as task arguments, which Ray
    unpickles before this body runs: unpickling imports their modules (and, through them,
    possibly librosa), and the private numba cache must be in place before that. Only values
    and errors go back; the driver pairs them with the items it kept.
    """
    global _numba_cache_set
    if not _numba_cache_set:
        use_private_numba_cache()
        _numba_cache_set = True
    import cloudpickle

    fn, batch = cloudpickle.loads(payload)
    return [(outcome.value, outcome.error) for outcome in run_batch(fn, batch)]


def ray_options(section: DataParams | FeatureParams | dict[str, Any]) -> dict[str, Any]:
    """The :func:`ser.runtime.make_executor` options in a ``data:`` or ``features:`` section:
    the cluster address when it names the Ray executor, none for the others (they take none)."""
    if not isinstance(section, (DataParams, FeatureParams)):
        # Both sections name an executor; only ``features:`` has feature ``sets``.
        section = typed(FeatureParams if "sets" in section else DataParams, section)
    return {"address": section.ray_address} if section.executor == "ray" else {}


def _lost_work(ray) -> tuple[type[BaseException], ...]:
    """Ray errors meaning the work was lost rather than failed: its worker process or node died,
    or its result went with a node. Ray has already retried such a task ``max_retries`` times."""
    errors = ray.exceptions
    return (errors.WorkerCrashedError, errors.NodeDiedError, errors.ObjectLostError,
            errors.OutOfMemoryError, errors.LocalRayletDiedError, errors.RaySystemError)


class _Streak(DeathCount):
    """Ray tasks that came back without results since one last came back with them. Past
    :data:`~ser.runtime.executor.MAX_DEATHS_IN_A_ROW` the workers cannot run the work at all (``ser``
    missing or different on a node, a worker that crashes on start), and failing every clip of
    the corpus one by one would hide that."""

    how = ""

    def failed(self, how: str, reason: str) -> None:
        self.how = how
        self.died(reason)

    def hopeless(self, reason: str) -> str:
        return (f"{self.in_a_row} Ray tasks in a row {self.how}, with no work finished in between "
                f"(last: {reason}); the workers cannot run at all: is the same environment, "
                "with ser installed, on every node?")


def _summary(error: BaseException) -> str:
    """``Type: first line`` of a Ray error (their messages run to paragraphs of advice)."""
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


class RayExecutor(Executor):
    """Batches of items as Ray tasks (one CPU each) on a cluster or a local Ray instance.

    ``workers`` sizes a local instance only; on a cluster, its CPUs decide. ``address``
    (``host:port``) wins over ``$RAY_ADDRESS``. ``max_retries``: Ray's retries of a task whose
    worker or node died, before its items are retried one per task.
    """

    def __init__(self, workers: int = 0, batch_size: int = 8, address: str | None = None,
                 max_retries: int = 3):
        self.workers = workers if workers and workers > 0 else cpu_count()
        self.batch_size = max(1, batch_size)
        self.address = address
        self.max_retries = max(0, max_retries)

    def map(self, fn, items, *, desc=None, total=None):
        import ray

        with ray_session(self.address or os.environ.get("RAY_ADDRESS"), self.workers):
            yield from self._map(ray, fn, items, desc, total)

    def _map(self, ray, fn, items, desc, total):
        progress = tqdm(desc=desc, total=total, unit="clip", disable=desc is None)
        try:
            task = ray.remote(_run_payload).options(num_cpus=1, max_retries=self.max_retries)
            streak, lost = _Streak(), []
            iterator = iter(items)
            batches = iter(lambda: list(itertools.islice(iterator, self.batch_size)), [])
            for outcome in self._run(ray, task, fn, batches, lost, streak):
                progress.update(1)
                yield outcome
            if lost:
                tqdm.write(f"warning: {WORKER_DIED} on the Ray cluster ({lost[0][1]}); retrying the "
                           f"{len(lost)} item(s) of its task(s) one per task")
            for outcome in self._run(ray, task, fn, ([item] for item, _ in lost), None, streak):
                progress.update(1)
                yield outcome
        finally:
            progress.close()

    def _window(self, ray) -> int:
        """Tasks to keep in flight: read again as tasks finish, as nodes join or leave."""
        return max(1, int(IN_FLIGHT_PER_CPU * ray.cluster_resources().get("CPU", 1)))

    def _run(self, ray, task, fn: Callable[[Any], Any], batches: Iterable[list], lost: list | None,
             streak: _Streak) -> Iterator[Outcome]:
        """Every batch through ``task``, a window at a time. A batch whose task was lost (see
        :func:`_lost_work`) goes to ``lost`` as ``(item, reason)`` pairs; with ``lost=None``
        (batches of one, already retried) its item fails with that reason."""
        import cloudpickle

        lost_work = _lost_work(ray)
        batches = iter(batches)
        pending: dict[Any, list] = {}

        def fill() -> None:
            window = self._window(ray)
            while len(pending) < window:
                batch = next(batches, None)
                if batch is None:
                    return
                pending[task.remote(cloudpickle.dumps((fn, batch)))] = batch

        try:
            fill()
            while pending:
                # A timeout, so that Ctrl-C is seen while every task is still running.
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    batch = pending.pop(ref)
                    try:
                        results = ray.get(ref)
                    except lost_work as error:
                        reason = _summary(error)
                        if lost is not None:
                            lost.extend((item, reason) for item in batch)
                        else:
                            yield Outcome(batch[0], error=f"{WORKER_DIED} on the Ray cluster ({reason}) "
                                                          f"while running this item, also when retried alone")
                        streak.failed("lost their worker", reason)
                        continue
                    except ray.exceptions.RayError as error:
                        # Outside fn (which run_batch guards): fn or the items cannot be imported
                        # on the worker, a result cannot be pickled, a runtime environment cannot
                        # be set up. Every item of the batch fails with it, as in the process pool.
                        cause = getattr(error, "cause", None) or error
                        message = describe_error(cause) if cause is not error else _summary(error)
                        for item in batch:
                            yield Outcome(item, error=message)
                        streak.failed("failed outside the per-clip function", message)
                        continue
                    streak.survived()
                    for item, (value, error) in zip(batch, results):
                        yield Outcome(item, value, error)
                fill()
        except BaseException:
            # Interrupted, or the caller stopped reading: a cluster must not go on computing for
            # nobody. force=True ends running tasks too (they are pure; nothing is half-written).
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
