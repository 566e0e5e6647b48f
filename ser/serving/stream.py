"""Live microphone streams of ``ser serve``: the WebSocket ``/api/stream``.

The protocol, one stream per connection (``?format=s16le`` by default, or ``f32le``):

    server -> {"type": "ready", "sample_rate", "format", "window_s", "every_s", "max_s", "idle_s",
               "max_frame_bytes", "classes"}
    client -> binary frames: mono PCM at ``sample_rate`` (16 kHz), little-endian, int16
              (``s16le``) or float32 (``f32le``), whole samples, at most ``max_frame_bytes`` each
    server -> {"type": "update", "index", "start_s", "end_s", "label", "confidence",
               "probabilities"} after every ``every_s`` seconds of audio, over the last
              ``window_s`` seconds (fewer at the start); ``label`` is null with a ``detail``
              when the window holds no usable audio (silence);
              {"type": "skipped", "end_s", "detail"} when the server was too busy for it
              or scoring it failed

The server closes a stream with a WebSocket close code and a reason naming the limit:
1013 (try again later) past ``serve.max_streams``; 1003 for a text frame or an unknown format;
1007 for an empty frame, a partial sample or a non-finite float; 1009 for a frame over
``serve.stream_max_frame_bytes`` (uvicorn itself cuts frames over four times that, with its own
reason, so a huge frame is never buffered; frames are never compressed, so none inflates past
it); 1008 when the stream reached ``serve.stream_max_s`` (the longer of wall clock and audio
received, so a client sending faster than real time is bounded too) or sent nothing for
``serve.stream_idle_s``.

Each window is scored exactly as an upload is: encoded as a WAV and handed to the same pool
(``serve.max_queue`` admits it, ``serve.timeout_s`` bounds it), so a window's answer is what
``POST /api/predict`` says for the same samples. At most one window per stream is in flight;
while it runs, newer windows replace the one waiting, so a slow server skips updates instead
of falling behind.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from ser.params import ServeParams, typed
from ser.serving.pool import PredictorPool, Rejected

FORMATS = {"s16le": ("<i2", "PCM_16"), "f32le": ("<f4", "FLOAT")}
# uvicorn refuses frames over this many times serve.stream_max_frame_bytes before the app sees
# them; between the two the app closes with a reason naming the setting.
TRANSPORT_FRAME_FACTOR = 4
REASON_BYTES = 123  # the most a WebSocket close frame carries

UNSUPPORTED, INVALID, POLICY, TOO_BIG, INTERNAL, TRY_LATER = 1003, 1007, 1008, 1009, 1011, 1013


@dataclass(frozen=True)
class StreamLimits:
    """The ``serve.max_streams`` / ``serve.stream_*`` settings with the served model's window."""

    max_streams: int
    max_s: float
    idle_s: float
    max_frame_bytes: int
    every_s: float
    window_s: float
    sample_rate: int

    @classmethod
    def of(cls, serve_params: ServeParams | dict[str, Any], window_s: float, sample_rate: int) -> "StreamLimits":
        serve = typed(ServeParams, serve_params)
        return cls(max_streams=serve.max_streams, max_s=float(serve.stream_max_s), idle_s=float(serve.stream_idle_s),
                   max_frame_bytes=serve.stream_max_frame_bytes, every_s=float(serve.stream_every_s),
                   window_s=float(window_s), sample_rate=int(sample_rate))

    @property
    def transport_max_bytes(self) -> int:
        """uvicorn's ``ws_max_size``."""
        return TRANSPORT_FRAME_FACTOR * self.max_frame_bytes


class StreamClosed(Exception):
    """Close the stream with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame carries (123 bytes of UTF-8)."""
    data = text.encode("utf-8")
    return text if len(data) <= REASON_BYTES else data[:REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def wav_of(samples: bytes, dtype: str, sample_rate: int) -> bytes:
    """Raw little-endian PCM as a WAV of the same samples (int16 stays int16, float32 float32)."""
    import soundfile as sf

    buffer = io.BytesIO()
    subtype = next(sub for d, sub in FORMATS.values() if d == dtype)
    sf.write(buffer, np.frombuffer(samples, dtype=dtype), sample_rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def check_frame(frame: bytes, fmt: str, max_frame_bytes: int) -> None:
    """Raise StreamClosed for a frame that is not whole samples of ``fmt`` within the size limit."""
    dtype = FORMATS[fmt][0]
    width = np.dtype(dtype).itemsize
    if len(frame) > max_frame_bytes:
        raise StreamClosed(TOO_BIG, f"frame of {len(frame)} bytes is over serve.stream_max_frame_bytes = "
                                    f"{max_frame_bytes}")
    if not frame:
        raise StreamClosed(INVALID, "empty frame: send audio samples")
    if len(frame) % width:
        raise StreamClosed(INVALID, f"frame of {len(frame)} bytes is not whole {fmt} samples ({width} bytes each)")
    if fmt == "f32le" and not np.isfinite(np.frombuffer(frame, dtype=dtype)).all():
        raise StreamClosed(INVALID, "frame holds NaN or infinite samples")


class StreamHub:
    """The live streams of one server: the count, the limits and what became of them."""

    def __init__(self, pool: PredictorPool, limits: StreamLimits):
        self.pool, self.limits = pool, limits
        self.live = 0
        self.outcomes: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def status(self) -> dict[str, Any]:
        return {"live": self.live, "max": self.limits.max_streams, "closed": dict(self.outcomes)}

    def info(self) -> dict[str, Any]:
        limits = self.limits
        return {"max_streams": limits.max_streams, "max_s": limits.max_s, "idle_s": limits.idle_s,
                "max_frame_bytes": limits.max_frame_bytes, "every_s": limits.every_s, "window_s": limits.window_s,
                "sample_rate": limits.sample_rate, "formats": sorted(FORMATS)}

    async def serve(self, websocket: WebSocket) -> None:
        """One connection, from accept to close; never raises for what a client sent."""
        await websocket.accept()
        limits = self.limits
        if self.live >= limits.max_streams:
            self.outcomes["refused_busy"] += 1
            reason = (f"server busy: {self.live} live streams, the most it takes (serve.max_streams); try again later"
                      if limits.max_streams else "live streams are off on this server (serve.max_streams = 0)")
            await _close(websocket, TRY_LATER, reason)
            return
        self.live += 1
        try:
            stream = _Stream(self, websocket, next(self._ids))
            outcome = await stream.run()
        finally:
            self.live -= 1
        self.outcomes[outcome] += 1


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    try:
        await websocket.close(code, close_reason(reason))
    except (RuntimeError, WebSocketDisconnect, OSError):  # already closed by the client
        pass


class _Stream:
    """One live stream: receives frames, keeps the last window, has it scored every ``every_s``."""

    def __init__(self, hub: StreamHub, websocket: WebSocket, number: int):
        self.hub, self.websocket, self.number = hub, websocket, number
        limits = hub.limits
        fmt = websocket.query_params.get("format", "s16le")
        self.format = fmt
        self.dtype = FORMATS[fmt][0] if fmt in FORMATS else None
        self.width = np.dtype(self.dtype).itemsize if self.dtype else 0
        self.window_bytes = int(round(limits.window_s * limits.sample_rate)) * self.width
        self.every_samples = max(1, int(round(limits.every_s * limits.sample_rate)))
        self.buffer = bytearray()
        self.received = 0  # samples
        self.next_due = self.every_samples
        self.pending: tuple[bytes, int] | None = None  # (window, end sample) waiting to be scored
        self.due = asyncio.Event()
        self.index = 0

    async def run(self) -> str:
        limits = self.hub.limits
        if self.dtype is None:
            await _close(self.websocket, UNSUPPORTED, f"unknown format '{self.format}': use s16le or f32le")
            return "bad_format"
        await self._send({"type": "ready", "sample_rate": limits.sample_rate, "format": self.format,
                          "window_s": limits.window_s, "every_s": limits.every_s, "max_s": limits.max_s,
                          "idle_s": limits.idle_s, "max_frame_bytes": limits.max_frame_bytes,
                          "classes": self.hub.pool.model.get("classes", [])})
        scorer = asyncio.create_task(self._score_loop())
        try:
            await self._receive_loop()
        except StreamClosed as closing:
            await _close(self.websocket, closing.code, closing.reason)
            return {TOO_BIG: "frame_too_big", INVALID: "bad_frame", UNSUPPORTED: "bad_frame"}.get(
                closing.code, "limit" if closing.code == POLICY else "error")
        except WebSocketDisconnect as disconnect:
            # uvicorn ends the connection itself with 1009 for a frame over its ws_max_size
            return "frame_too_big" if disconnect.code == TOO_BIG else "client_closed"
        finally:
            scorer.cancel()
            try:
                await scorer
            except (asyncio.CancelledError, Exception):  # the scorer's own end is not this stream's outcome
                pass
        return "client_closed"

    async def _receive_loop(self) -> None:
        limits = self.hub.limits
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            elapsed = loop.time() - started
            if limits.max_s - max(elapsed, self.received / limits.sample_rate) <= 0:
                raise StreamClosed(POLICY, f"the stream reached serve.stream_max_s = {limits.max_s:g} s")
            # Only the wall clock runs out while waiting: audio received does not grow meanwhile.
            clock_left = limits.max_s - elapsed
            try:
                message = await asyncio.wait_for(self.websocket.receive(), min(limits.idle_s, clock_left))
            except TimeoutError:
                if clock_left < limits.idle_s:
                    continue  # the wall clock ran out first: the top of the loop says so
                raise StreamClosed(POLICY, f"no audio for serve.stream_idle_s = {limits.idle_s:g} s") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
            frame = message.get("bytes")
            if frame is None:
                raise StreamClosed(UNSUPPORTED, f"text frame: send audio as binary frames of 16 kHz mono {self.format}")
            check_frame(frame, self.format, limits.max_frame_bytes)
            self._add(frame)

    def _add(self, frame: bytes) -> None:
        self.buffer += frame
        if len(self.buffer) > self.window_bytes:
            del self.buffer[:len(self.buffer) - self.window_bytes]
        self.received += len(frame) // self.width
        if self.received >= self.next_due:
            # A window not yet taken by the scorer is replaced: the newest audio is what counts live.
            self.pending = (bytes(self.buffer), self.received)
            self.due.set()
            self.next_due = (self.received // self.every_samples + 1) * self.every_samples

    async def _score_loop(self) -> None:
        pool, rate = self.hub.pool, self.hub.limits.sample_rate
        while True:
            await self.due.wait()
            self.due.clear()
            window, end = self.pending
            start = end - len(window) // self.width
            span = {"start_s": round(start / rate, 4), "end_s": round(end / rate, 4)}
            name = f"stream {self.number} window {span['start_s']:.2f}-{span['end_s']:.2f} s"
            try:
                with pool.admitted() as ticket:
                    reply = await pool.run(ticket, (wav_of(window, self.dtype, rate), name, False))
                if reply.kind == "ok":
                    answer = json.loads(reply.body)
                    scored = dict(label=answer["label"], confidence=answer["confidence"],
                                  probabilities=answer["probabilities"])
                else:  # silence the front end trims to nothing, or a window the model could not score
                    scored = dict(label=None, confidence=None, probabilities=None, detail=str(reply.body))
            except Rejected as exc:
                await self._send({"type": "skipped", **span, "detail": exc.message})
                continue
            except Exception as exc:  # one window that failed (or its answer) must not end the updates
                await self._send({"type": "skipped", **span, "detail": f"{type(exc).__name__}: {exc}"})
                continue
            self.index += 1
            await self._send({"type": "update", "index": self.index, **span, **scored})

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.websocket.send_text(json.dumps(message))
        except (RuntimeError, WebSocketDisconnect, OSError):  # closing: the receive loop says why
            pass
