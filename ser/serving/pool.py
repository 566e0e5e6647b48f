"""The predictor processes of ``ser serve`` behind the async app: admission, waiting, timeouts.

A request goes through three gates, all on the event loop (no locks needed):

1. **admission** (:meth:`PredictorPool.admitted`): at most ``max_queue`` requests are waiting or
   running at once; one more is refused at once with 503 and a ``Retry-After``, before its
   body is read, so latency stays bounded instead of growing with the queue;
2. **waiting** for an idle worker (FIFO): past ``timeout_s`` since admission the request gets
   503 (it never started, so a retry is safe);
3. **running** on the worker: past ``timeout_s`` since admission it gets 504, and the worker,
   which cannot be interrupted mid-clip, is killed and replaced in the background, so a runaway
   clip never keeps a worker.

The pipe calls block, so each runs on a thread of a pool as large as the worker pool.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ser.serving.workers import ModelSpec, WorkerError, WorkerProcess

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one; the messages land in its log
START_TIMEOUT_S = 180.0  # loading the model and warming up, with the machine possibly busy
RESPAWN_ATTEMPTS = 3
RESPAWN_PAUSE_S = 2.0
FIRST_RUN_GUESS_S = 1.0  # Retry-After before any request has been timed


class Rejected(Exception):
    """A request the pool will not answer: HTTP ``status`` with ``message`` (and Retry-After)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


@dataclass
class Ticket:
    """An admitted request: its deadline on the loop's clock."""

    admitted: float
    deadline: float

    def remaining(self, loop: asyncio.AbstractEventLoop) -> float:
        return self.deadline - loop.time()


@dataclass(frozen=True)
class Reply:
    kind: str  # ok | bad | error, as the worker said
    body: Any
    waited_s: float
    ran_s: float
    worker: int


def _error_of(done: asyncio.Future) -> BaseException | None:
    return asyncio.CancelledError() if done.cancelled() else done.exception()


def resolve_workers(workers: int, cores: int) -> int:
    if workers < 0:
        raise ValueError(f"serve.workers must be 0 (every core) or a count, got {workers}")
    return workers or cores


class PredictorPool:
    """``workers`` predictor processes with a bounded queue and a per-request deadline."""

    def __init__(self, spec: ModelSpec, workers: int, max_queue: int, timeout_s: float,
                 start_timeout_s: float = START_TIMEOUT_S):
        if workers < 1:
            raise ValueError(f"serve.workers: need at least one predictor process, got {workers}")
        if max_queue < workers:
            raise ValueError(f"serve.max_queue ({max_queue}) is below the {workers} workers: some would never "
                             "get a request; raise serve.max_queue or lower serve.workers")
        if timeout_s <= 0:
            raise ValueError(f"serve.timeout_s must be positive, got {timeout_s}")
        self.spec, self.workers, self.max_queue, self.timeout_s = spec, workers, max_queue, float(timeout_s)
        self.start_timeout_s = start_timeout_s
        self._alive: dict[int, WorkerProcess] = {}
        self._restarting: set[int] = set()
        self._idle: asyncio.Queue[WorkerProcess] = asyncio.Queue()
        self._io = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ser-serve-pipe")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._running = 0
        self._run_s = FIRST_RUN_GUESS_S
        self._closing = False
        self.restarts = 0
        self.outcomes: Counter[str] = Counter()
        self.started_at = time.time()
        self.model: dict[str, Any] = {}  # what the first worker reported: classes, rates, threads

    # ---- life ------------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start every worker and wait until all have loaded the model (they load in parallel).
        Returns the first worker's description of the model; raises WorkerError."""
        starting = [WorkerProcess(self.spec, slot) for slot in range(self.workers)]
        try:
            for worker in starting:
                worker.wait_ready(self.start_timeout_s)
        except WorkerError:
            for worker in starting:
                worker.kill()
            raise
        for worker in starting:
            self._alive[worker.slot] = worker
            self._idle.put_nowait(worker)
        self.model = starting[0].info
        return self.model

    def close(self) -> None:
        """Stop every worker (idempotent); restarts under way give up."""
        if self._closing:
            return
        self._closing = True
        for worker in list(self._alive.values()):
            worker.stop()
        self._alive.clear()
        self._io.shutdown(wait=False, cancel_futures=True)

    # ---- a request ---------------------------------------------------------------------------
    def retry_after(self) -> int:
        """Seconds until the queue has drained, by the recent time per clip (at least 1)."""
        return max(1, math.ceil(self._run_s * self._pending / max(1, len(self._alive))))

    @contextmanager
    def admitted(self) -> Iterator[Ticket]:
        """Admit one request for the ``with`` block, or raise Rejected(503) at once."""
        if self._closing:
            raise Rejected(503, "the server is shutting down", retry_after=5)
        if self._pending >= self.max_queue:
            self.outcomes["refused_full"] += 1
            wait = self.retry_after()
            raise Rejected(503, f"server busy: {self._pending} requests are waiting or running, the most it "
                                f"takes (serve.max_queue); retry in {wait} s", retry_after=wait)
        now = asyncio.get_running_loop().time()
        self._pending += 1
        try:
            yield Ticket(admitted=now, deadline=now + self.timeout_s)
        finally:
            self._pending -= 1

    async def run(self, ticket: Ticket, job: tuple) -> Reply:
        """Wait for an idle worker and run ``job`` on it, both within the ticket's deadline."""
        loop = self._loop = asyncio.get_running_loop()
        try:
            worker = await asyncio.wait_for(self._idle.get(), max(ticket.remaining(loop), 0.0))
        except TimeoutError:
            raise self._waited_too_long() from None
        started = loop.time()
        if ticket.remaining(loop) <= 0:  # its time ran out as the worker came free: do not start it
            self._idle.put_nowait(worker)
            raise self._waited_too_long()
        self._running += 1
        call = loop.run_in_executor(self._io, worker.call, job, ticket.remaining(loop))
        try:
            kind, body = await asyncio.shield(call)
        except asyncio.CancelledError:  # the request went away; the worker comes back when done
            call.add_done_callback(lambda done: self._settle(worker, _error_of(done)))
            raise
        except Exception as exc:
            self._settle(worker, exc)
            raise self._failure(exc) from None
        ran = loop.time() - started
        self._run_s = 0.8 * self._run_s + 0.2 * ran
        self._settle(worker, None)
        self.outcomes[kind] += 1
        return Reply(kind, body, waited_s=started - ticket.admitted, ran_s=ran, worker=worker.pid or 0)

    def _settle(self, worker: WorkerProcess, error: BaseException | None) -> None:
        """A call ended: the worker goes back to the idle queue, or is replaced if it failed."""
        self._running -= 1
        if error is None and not self._closing:
            self._idle.put_nowait(worker)
        elif error is not None:
            self._replace(worker, "ran past serve.timeout_s" if isinstance(error, TimeoutError) else
                          f"died ({type(error).__name__})")

    def _waited_too_long(self) -> Rejected:
        self.outcomes["waited_too_long"] += 1
        return Rejected(503, f"no predictor process was free within serve.timeout_s = {self.timeout_s:g} s "
                             f"({len(self._alive)} of {self.workers} up, all busy); retry later",
                        retry_after=self.retry_after())

    def _failure(self, error: BaseException) -> Rejected:
        if isinstance(error, TimeoutError):
            self.outcomes["timed_out"] += 1
            return Rejected(504, f"the prediction took longer than serve.timeout_s = {self.timeout_s:g} s; "
                                 "it was stopped and its predictor process restarted")
        self.outcomes["worker_lost"] += 1
        return Rejected(503, f"the predictor process handling this clip died ({type(error).__name__}); "
                             "it is being restarted; retry", retry_after=self.retry_after())

    # ---- restarts ------------------------------------------------------------------------------
    def _replace(self, worker: WorkerProcess, reason: str) -> None:
        self._alive.pop(worker.slot, None)
        if self._closing:
            worker.kill()
            return
        self.restarts += 1
        self._restarting.add(worker.slot)
        log.warning("ser serve: predictor process %s (pid %s) %s; starting a new one", worker.slot, worker.pid,
                    reason)
        threading.Thread(target=self._respawn, args=(worker,), name=f"ser-serve-respawn-{worker.slot}",
                         daemon=True).start()

    def _respawn(self, old: WorkerProcess) -> None:
        """On a thread: kill ``old`` and start its successor (loading takes seconds)."""
        old.kill()
        for attempt in range(1, RESPAWN_ATTEMPTS + 1):
            if self._closing:
                break
            fresh = WorkerProcess(self.spec, old.slot)
            try:
                fresh.wait_ready(self.start_timeout_s)
            except WorkerError as exc:
                fresh.kill()
                log.error("ser serve: restart %d of predictor process %s failed: %s", attempt, old.slot, exc)
                time.sleep(RESPAWN_PAUSE_S)
                continue
            if self._call_on_loop(self._welcome, fresh):
                return
            fresh.kill()
            return
        self._call_on_loop(self._restarting.discard, old.slot)  # given up: the pool runs one short

    def _call_on_loop(self, function, *args) -> bool:
        try:
            self._loop.call_soon_threadsafe(function, *args)
            return True
        except RuntimeError:  # the loop is closed: the server has stopped
            return False

    def _welcome(self, worker: WorkerProcess) -> None:
        self._restarting.discard(worker.slot)
        if self._closing:
            worker.kill()
            return
        self._alive[worker.slot] = worker
        self._idle.put_nowait(worker)
        log.info("ser serve: predictor process %s is back (pid %s)", worker.slot, worker.pid)

    # ---- reporting -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        up = len(self._alive)
        state = "ok" if up == self.workers else "degraded" if up else "down"
        return {
            "status": "stopping" if self._closing else state,
            "queue": {"depth": self._pending, "running": self._running, "waiting": self._pending - self._running,
                      "capacity": self.max_queue},
            "workers": {"configured": self.workers, "up": up, "busy": self._running,
                        "restarting": len(self._restarting), "restarts": self.restarts,
                        "pids": sorted(w.pid for w in self._alive.values() if w.pid),
                        "threads_per_worker": self.model.get("threads")},
            "timeout_s": self.timeout_s,
            "requests": dict(self.outcomes),
            "uptime_s": round(time.time() - self.started_at, 1),
        }
