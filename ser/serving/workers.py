"""Predictor processes behind ``ser serve``: each loads the model once and scores one clip at a time.

The server talks to a worker over a pipe: it sends ``(payload, name, visuals, timeline)`` and gets back
``("ok", json_bytes)``, ``("bad", message)`` (audio the front end refuses: HTTP 400) or
``("error", message)``. Workers are spawned, not forked (nothing is inherited from a server that
already runs threads), run their math on one thread (so N workers x 1 thread = N cores), ignore
Ctrl-C (the server stops them) and exit when the pipe closes, so a server killed outright does
not leave them behind.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# Every math library a worker may load reads one of these before it sizes its thread pool.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
WARMUP_SECONDS = 1.0


class WorkerError(RuntimeError):
    """A worker could not load the model, or died."""


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: a ModelBundle folder, windowed like the server's predictor."""

    bundle_dir: str
    window_s: float
    hop_s: float
    min_confidence: float | None = None
    segments: dict[str, Any] | None = None  # predict.segments, for timelines


def snapshot(predictor, folder: str | os.PathLike) -> ModelSpec:
    """Save the loaded model to ``folder`` for the workers. Every worker, restarts included, loads
    this copy, so all serve the model the server loaded even if its source moves on meanwhile (a
    new registered version, a retrained ``data/train/model``)."""
    predictor.bundle.save(folder)
    segments = None if predictor.segments is None else predictor.segments.as_dict()
    return ModelSpec(str(Path(folder)), predictor.window_s, predictor.hop_s, predictor.min_confidence, segments)


def _load(spec: ModelSpec):
    from ser.serving.predict import Predictor

    predictor = Predictor.from_bundle_dir(spec.bundle_dir, window_s=spec.window_s, hop_s=spec.hop_s,
                                          min_confidence=spec.min_confidence)
    if spec.segments is not None:
        from ser.params import SegmentParams, typed

        predictor.segments = typed(SegmentParams, spec.segments, "predict.segments")
    return predictor.use_threads(1)  # ONNX Runtime sizes its pool from the bundle, not from the variables


def _warm_up(predictor) -> None:
    """One prediction with visuals, so the encoder, openSMILE and matplotlib are loaded before the
    first request (and its timeout) starts, and a model that cannot score one clip fails here."""
    import numpy as np

    rate = predictor.sample_rate
    t = np.arange(int(rate * WARMUP_SECONDS)) / rate
    phase = 2 * np.pi * np.cumsum(140.0 + 40.0 * t) / rate
    y = (0.4 * sum(np.sin(k * phase) / k for k in (1, 2, 3))).astype(np.float32)
    _answer_signal(predictor, y, "warm-up", visuals=True)


def _answer_signal(predictor, y, name: str, visuals: bool) -> dict[str, Any]:
    from ser.serving.visuals import spectrogram_png, waveform_envelope

    answer = predictor.predict_signal(y, name=name).to_dict(with_windows=True)
    answer["classes"] = predictor.classes
    if visuals:
        answer["sample_rate"] = predictor.sample_rate
        answer["waveform"] = waveform_envelope(y)
        answer["spectrogram"] = spectrogram_png(y, predictor.sample_rate)
    return answer


def answer(predictor, payload: bytes, name: str, visuals: bool, timeline: bool = False) -> tuple[str, Any]:
    """What the server sends back for one upload; the JSON is encoded here, off the event loop.
    ``timeline``: also its speech segments, each with an emotion (see :mod:`ser.serving.timeline`);
    when they cannot be found, ``timeline`` is ``{"error": reason}`` and the rest of the answer stands."""
    from ser.audio import AudioError
    from ser.serving.predict import audio_error_message

    started = time.time()
    try:
        y = predictor.load(payload)
        result = _answer_signal(predictor, y, name, visuals)
    except AudioError as exc:
        return "bad", audio_error_message(exc, name)
    if timeline:  # a timeline that fails leaves the clip's own answer standing, with the reason
        try:
            result["timeline"] = _timeline(predictor, payload, name)
        except AudioError as exc:
            result["timeline"] = {"error": audio_error_message(exc, name)}
        except Exception as exc:
            result["timeline"] = {"error": f"{type(exc).__name__}: {exc}"}
    result["served_by"] = {"worker": os.getpid(), "started": started, "finished": time.time()}
    return "ok", json.dumps(result).encode("utf-8")


def _timeline(predictor, payload: bytes, name: str) -> dict[str, Any]:
    from ser.serving.timeline import timeline

    if predictor.segments is None:
        raise ValueError("this server was started without predict.segments; it cannot draw timelines")
    return timeline(predictor, payload, predictor.segments, name).to_dict()


def _thread_report() -> dict[str, Any]:
    from threadpoolctl import threadpool_info

    from ser.features.whisper import loaded_encoders

    # Read back from the runtime's own sessions (those the warm-up opened), not from the params.
    encoder_threads = sorted({encoder.session.get_session_options().intra_op_num_threads
                              for encoder in loaded_encoders()})
    return {"onnxruntime": encoder_threads or None,
            "native_pools": sorted({int(pool["num_threads"]) for pool in threadpool_info()}),
            **{name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}


def serve_forever(conn: Connection, spec: ModelSpec) -> None:
    """A worker's life: load, warm up, say ready, then answer jobs until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    from ser.runtime.executor import use_private_numba_cache

    # Workers start together; a numba cache shared while they compile librosa can be corrupted.
    use_private_numba_cache()
    started = time.monotonic()
    try:
        from threadpoolctl import threadpool_limits

        predictor = _load(spec)
        _warm_up(predictor)
        threadpool_limits(1)  # any pool a library sized without reading the variables
        info = {"pid": os.getpid(), "classes": predictor.classes, "sample_rate": predictor.sample_rate,
                "window_s": predictor.window_s, "hop_s": predictor.hop_s, "min_confidence": predictor.min_confidence,
                "load_s": round(time.monotonic() - started, 2), "threads": _thread_report()}
    except Exception as exc:  # tell the server why, instead of dying silently
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if job is None:
            return
        try:
            reply = answer(predictor, *job)
        except Exception as exc:  # one bad clip must not take the worker down
            reply = ("error", f"{job[1]}: {type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class WorkerProcess:
    """The server's handle on one worker: start it, wait for it, call it, kill it."""

    def __init__(self, spec: ModelSpec, slot: int):
        context = mp.get_context("spawn")
        self.slot = slot
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve_forever, args=(child, spec), name=f"ser-serve-worker-{slot}",
                                       daemon=True)
        self.process.start()
        child.close()  # only the worker holds its end, so its death reads as EOF here
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        if not self.conn.poll(timeout_s):
            raise WorkerError(f"worker {self.slot} did not load the model within {timeout_s:g} s")
        try:
            kind, info = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            raise WorkerError(f"worker {self.slot} exited with code {self.process.exitcode} while loading "
                              "the model") from None
        if kind != "ready":
            raise WorkerError(f"worker {self.slot} could not load the model: {info}")
        self.info = info
        return info

    def call(self, job: tuple, timeout_s: float) -> tuple[str, Any]:
        """Send one job and wait up to ``timeout_s`` (TimeoutError); EOFError/OSError: it died."""
        self.conn.send(job)
        if not self.conn.poll(max(timeout_s, 0.0)):
            raise TimeoutError
        return self.conn.recv()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask it to exit (it finishes the clip in hand first), then kill it if it has not."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout_s)
        self.kill()
