"""Run a pure per-item function over many items, locally or (later) on a cluster.

Per-clip work in ser (probing, feature extraction, augmentation) is written as a pure,
picklable, module-level function ``fn(item) -> result``. An executor maps it over items and
yields an :class:`Outcome` per item *in completion order*, so callers stream results to disk
and memory stays bounded. A failure in one item is captured in its outcome, never raised, so a
broken clip cannot stop a run; that includes a clip that kills the worker process running it.

To scale out, implement :class:`Executor` over an existing engine and register it in
:data:`ser.runtime.EXECUTORS`; nothing else changes. ``ray`` (:mod:`ser.runtime.ray_executor`) runs the same
functions as Ray tasks on a cluster or a local Ray instance.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

WORKER_DIED = "worker process died"
# Pool deaths with no batch coming back in between: past this many, workers cannot run at all
# (an import that crashes, a broken initializer), and quarantining every item would hide it.
MAX_DEATHS_IN_A_ROW = 5
# Seconds a dead worker may leave its pool unbroken before the pool counts as wedged.
WEDGED_S = 5.0


@dataclass(frozen=True)
class Outcome:
    item: Any
    value: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_batch(fn: Callable[[Any], Any], batch: Sequence[Any]) -> list[Outcome]:
    outcomes = []
    for item in batch:
        try:
            outcomes.append(Outcome(item, fn(item)))
        # One bad clip must not stop the others, even one whose code calls sys.exit().
        except (Exception, SystemExit) as exc:
            outcomes.append(Outcome(item, error=describe_error(exc)))
    return outcomes


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---- a numba cache per worker ---------------------------------------------------------------
#
# numba caches a @guvectorize function as two files, the kernel and the ufunc wrapper that calls
# it by a symbol name holding a per-process counter. Two processes compiling the same function
# at once can leave the kernel of one beside the wrapper of the other; every process that loads
# that pair afterwards segfaults (numba issue #10128). librosa compiles five such functions
# (util.utils._localmax, _localmin, __peak_pick, core.audio._zc_wrapper, core.pitch._pi_wrapper)
# with cache=True the moment it is imported, so two pool workers starting together were enough
# to poison the environment's shared cache. Each worker therefore gets a cache folder of its
# own: the first free "slot", held with a lock for the worker's lifetime, so no two live
# processes share one and the slots stay warm from run to run. Warming the shared cache in the
# parent first would not do: two stages (dvc queue -j 2) or two users start pools at once too,
# and a signature the warm-up missed would still be compiled by several workers together.
# Processes that are not pool workers keep numba's usual cache.

_slot_lock: TextIO | None = None  # kept open: the lock is released when the process ends


def _slot_roots() -> Iterator[Path]:
    """Where worker slots may live, best first: under ``NUMBA_CACHE_DIR`` when it is set (so a
    redirected cache stays redirected), else the user's cache folder, else a per-user folder in
    the temporary directory (for a home folder that cannot be written)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        yield Path(os.environ["NUMBA_CACHE_DIR"]) / "ser-workers"
        return
    try:
        yield Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ser" / "numba-workers"
    except RuntimeError:  # no home folder at all
        pass
    yield Path(tempfile.gettempdir()) / f"ser-numba-workers-{os.getuid()}"


def _claim_slot() -> Path | None:
    """The first slot folder no live process holds, locked until this process ends; None
    without flock (not POSIX) or with no writable root."""
    try:
        import fcntl
    except ImportError:
        return None
    global _slot_lock
    for root in _slot_roots():
        try:
            root.mkdir(parents=True, exist_ok=True)
            for index in itertools.count():
                handle = open(root / f"slot-{index}.lock", "a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live process holds this slot
                    handle.close()
                    continue
                _slot_lock = handle
                return root / f"slot-{index}"
        except OSError:  # not writable, or no locks there (some network file systems)
            continue
    return None


def use_private_numba_cache() -> str:
    """Point this process's numba cache at a folder no other live process writes; returns it.

    The pool initializer of :class:`ProcessExecutor`; call it first thing in any other worker
    process that may use librosa. numba reads ``NUMBA_CACHE_DIR`` when it is imported and a
    cached function's folder when the function is defined, so this must run before librosa's
    submodules are imported in the process (ser imports them lazily).
    """
    slot = _claim_slot()
    folder = str(slot) if slot is not None else tempfile.mkdtemp(prefix="ser-numba-")
    os.environ["NUMBA_CACHE_DIR"] = folder
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba came in early (e.g. the parent's main module imported it)
        config.CACHE_DIR = folder
    return folder


# ---- executors ------------------------------------------------------------------------------

class Executor:
    """Maps ``fn`` over ``items``; yields one Outcome per item, in completion order."""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, desc: str | None = None,
            total: int | None = None) -> Iterator[Outcome]:
        raise NotImplementedError


class SerialExecutor(Executor):
    def map(self, fn, items, *, desc=None, total=None):
        for item in tqdm(items, desc=desc, total=total, unit="clip", disable=desc is None):
            yield from run_batch(fn, [item])


def _exit_with_parent() -> None:
    """Ends this worker when the process that started it dies. A parent stopped by SIGTERM or
    SIGKILL cannot shut its pool down, and its workers would otherwise wait for work forever."""
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp_wait([parent.sentinel])  # readable once the parent is gone
        os._exit(1)

    threading.Thread(target=watch, name="ser-exit-with-parent", daemon=True).start()


def init_worker_process() -> None:
    """What every spawned worker of ser does first: its own numba cache, and an end with its parent."""
    use_private_numba_cache()
    _exit_with_parent()


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=init_worker_process)


def _workers(pool: ProcessPoolExecutor) -> list:
    """The pool's worker processes (none once shut down, which forgets them)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _abandon(pool: ProcessPoolExecutor) -> None:
    """Kill ``pool``'s workers and let its manager thread finish without them.

    A worker killed while it writes a batch's result leaves half a message in the result pipe.
    The pool's manager thread then waits for the rest, and since this process also holds the
    pipe's write end, no end-of-file ever tells it the writers are gone: the thread, and with it
    every wait on the pool and the interpreter's exit (which joins it), would hang for ever.
    Closing our write end turns that wait into an end-of-file once the workers are dead, which
    the pool reports as broken. Only for a pool that takes no more work: new workers inherit
    that end."""
    for process in _workers(pool):
        process.kill()
    queue = getattr(pool, "_result_queue", None)
    writer = getattr(queue, "_writer", None)
    if writer is not None:
        writer.close()


def _close(pool: ProcessPoolExecutor, abandon: bool) -> None:
    """Shut ``pool`` down; when the caller is unwinding (Ctrl-C, an error downstream) the
    workers are killed rather than waited for, so an interrupted stage stops at once."""
    if abandon:
        _abandon(pool)
    pool.shutdown(wait=not abandon, cancel_futures=True)


def _exit_status(pool: ProcessPoolExecutor) -> str:
    """How a broken pool's worker died (read before shutdown, which forgets the processes)."""
    processes = _workers(pool)
    deadline = time.monotonic() + 5
    # The pool's manager thread reaps the workers too. When it wins the race, our own wait finds
    # no child left and the exit code appears on the shared process object a moment later.
    while True:
        for process in processes:  # a broken pool stops all its workers: this waits for the reaping
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        if all(p.exitcode is not None for p in processes) or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    codes = [p.exitcode for p in processes if p.exitcode]
    # Once one worker dies the pool sends SIGTERM to the others: those are not the cause.
    codes.sort(key=lambda code: code == -signal.SIGTERM)
    if not codes:
        return "exit status unknown"
    code = codes[0]
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _wait_for_some(pool: ProcessPoolExecutor, futures) -> tuple[set[Future], bool]:
    """The finished futures among ``futures`` (at least one), and whether ``pool`` had to be
    abandoned to get them. A dead worker breaks its pool within milliseconds; one dead for
    :data:`WEDGED_S` with the pool still whole died writing its result (see :func:`_abandon`),
    so the pool is abandoned and its futures fail as broken."""
    dead_since, abandoned = None, False
    while True:
        done, _ = wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
        if done:
            return done, abandoned
        if abandoned or all(process.is_alive() for process in _workers(pool)):
            dead_since = None
        elif dead_since is None:
            dead_since = time.monotonic()
        elif time.monotonic() - dead_since > WEDGED_S:
            _abandon(pool)
            abandoned = True


def _batch_outcomes(batch: Sequence[Any], future: Future) -> list[Outcome]:
    """The outcomes of a finished batch; an exception from the worker machinery itself
    (a result that cannot be pickled, ``SystemExit`` in ``fn``) fails each of its items."""
    error = future.exception()
    if error is None:
        return future.result()
    return [Outcome(item, error=describe_error(error)) for item in batch]


class DeathCount:
    """Counts pool deaths since a batch last came back (see :data:`MAX_DEATHS_IN_A_ROW`)."""

    def __init__(self) -> None:
        self.in_a_row = 0

    def survived(self) -> None:
        self.in_a_row = 0

    def died(self, status: str) -> None:
        self.in_a_row += 1
        if self.in_a_row >= MAX_DEATHS_IN_A_ROW:
            raise RuntimeError(self.hopeless(status))

    def hopeless(self, status: str) -> str:
        """The error that stops the run, ``status`` being how the last death happened."""
        return (f"{WORKER_DIED} {self.in_a_row} times in a row with no work finished "
                f"in between (last: {status}); the workers cannot run at all")


class ProcessExecutor(Executor):
    """A local process pool (spawned, so no state leaks in from the parent).

    Items go out in batches, and at most ``2 * workers`` batches are in flight, so the parent
    never holds more than a window of results however many items there are.

    A worker that dies (a crash in native code, the OOM killer) breaks the whole pool and every
    batch in flight with it. The pool is replaced and the stream goes on; the lost items are
    retried at the end one at a time in a one-worker pool, so an item that kills its worker
    again is known for certain and fails with :data:`WORKER_DIED`, while the others complete.
    """

    def __init__(self, workers: int = 0, batch_size: int = 8):
        self.workers = workers if workers and workers > 0 else cpu_count()
        self.batch_size = max(1, batch_size)

    def map(self, fn, items, *, desc=None, total=None):
        if self.workers == 1:
            yield from SerialExecutor().map(fn, items, desc=desc, total=total)
            return
        progress = tqdm(desc=desc, total=total, unit="clip", disable=desc is None)
        deaths, lost = DeathCount(), []
        try:
            for outcome in self._stream(fn, iter(items), lost, deaths):
                progress.update(1)
                yield outcome
            if lost:
                tqdm.write(f"warning: {WORKER_DIED}; retrying its {len(lost)} unfinished item(s) one at a time")
            for outcome in self._retry_alone(fn, lost, deaths):
                progress.update(1)
                yield outcome
        finally:
            progress.close()

    def _stream(self, fn, iterator: Iterator[Any], lost: list, deaths: DeathCount) -> Iterator[Outcome]:
        """Every item through batches, on a new pool whenever one breaks; the items of the
        batches a broken pool took down are appended to ``lost``."""
        while True:
            pool = _spawn_pool(self.workers)
            try:
                broken = yield from self._fill(pool, fn, iterator, lost, deaths)
                if broken:
                    deaths.died(_exit_status(pool))
            except BaseException:
                _close(pool, abandon=True)
                raise
            _close(pool, abandon=False)
            if not broken:
                return

    def _fill(self, pool: ProcessPoolExecutor, fn, iterator: Iterator[Any], lost: list,
              deaths: DeathCount) -> Generator[Outcome, None, bool]:
        """Keeps ``2 * workers`` batches in flight on ``pool`` until the items run out or the
        pool breaks; returns whether it broke."""
        pending: dict[Future, list] = {}
        broken = False

        def submit_next() -> bool:
            batch = list(itertools.islice(iterator, self.batch_size))
            if batch:
                try:
                    pending[pool.submit(run_batch, fn, batch)] = batch
                except BrokenProcessPool:  # it broke since the last look
                    lost.extend(batch)
                    return False
            return True

        for _ in range(2 * self.workers):
            if not submit_next():
                broken = True
                break
        while pending:
            done, abandoned = _wait_for_some(pool, pending)
            broken = broken or abandoned
            for future in done:
                batch = pending.pop(future)
                if isinstance(future.exception(), BrokenProcessPool):
                    lost.extend(batch)
                    broken = True
                    continue
                deaths.survived()
                yield from _batch_outcomes(batch, future)
                if not broken and not submit_next():
                    broken = True
        return broken

    def _retry_alone(self, fn, lost: Sequence[Any], deaths: DeathCount) -> Iterator[Outcome]:
        """Each lost item alone on a one-worker pool: if that worker dies, the item killed it."""
        pool = None
        try:
            for item in lost:
                pool = pool or _spawn_pool(1)
                try:
                    future = pool.submit(run_batch, fn, [item])
                except BrokenProcessPool:  # the idle worker died, through no fault of this item
                    _close(pool, abandon=False)
                    pool = _spawn_pool(1)
                    future = pool.submit(run_batch, fn, [item])
                _wait_for_some(pool, [future])
                if isinstance(future.exception(), BrokenProcessPool):
                    status = _exit_status(pool)
                    yield Outcome(item, error=f"{WORKER_DIED} ({status}) while running this item, "
                                              f"also when retried alone")
                    _close(pool, abandon=False)
                    pool = None
                    deaths.died(status)
                    continue
                deaths.survived()
                yield from _batch_outcomes([item], future)
        except BaseException:
            if pool is not None:
                _close(pool, abandon=True)
            raise
        if pool is not None:
            _close(pool, abandon=False)
