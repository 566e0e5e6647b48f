"""The web app behind ``ser serve``: a page and a small JSON API over a pool of predictor processes.

    GET  /                the page (upload a file or record from the microphone)
    GET  /api/info        classes, model (and its registered version when known), limits
    GET  /health          status, model, queue depth and capacity, workers (503 when none is up)
    POST /api/predict     multipart field ``file`` -> label, probabilities, windows, and the
                          clip as the model heard it: a waveform envelope (data arrays, drawn
                          by the page) and a log-mel spectrogram (PNG, data URI);
                          ``?timeline=true`` adds ``timeline``: the speech segments, each with
                          start, end, emotion and probabilities (the page always asks for it),
                          or ``{"error": reason}`` when they cannot be found
    WS   /api/stream      live audio in, a label about every second out (see :mod:`ser.serving.stream`)

The app itself never predicts: it admits a request (``serve.max_queue``), hands the clip to an
idle predictor process and relays the answer (see :mod:`ser.serving.pool`), so the event loop
stays free to answer, refuse and time out while every core predicts.

Errors are JSON ``{"detail": message}``: 413 over the size limit, 400 for input that is not
usable audio, 503 with ``Retry-After`` when the queue is full or no worker came free in time,
504 when a prediction ran past ``serve.timeout_s``. Everything the page needs is served from
``ser/serving/static`` (no CDN).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from ser.serving.pool import PredictorPool, Rejected
from ser.serving.stream import StreamHub, StreamLimits

STATIC_DIR = Path(__file__).resolve().parent / "static"


def _model_version(model_info: dict[str, Any] | None) -> str | None:
    return None if not model_info or model_info.get("version") is None else str(model_info["version"])


async def _read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "send the clip as the multipart form field 'file'")
        name = upload.filename or "upload"
        payload = await upload.read(max_bytes + 1)
    finally:
        await form.close()
    if len(payload) > max_bytes:
        raise HTTPException(413, f"{name}: over the upload limit of {max_bytes} bytes (serve.max_bytes)")
    return payload, name


def create_app(pool: PredictorPool, max_bytes: int, model_description: str = "",
               model_info: dict[str, Any] | None = None, *, stream_limits: StreamLimits) -> FastAPI:
    """The app over a started ``pool``. ``model_info`` (registered ``version``, ``run_id``,
    ``metrics``, aliases, ``uri``; None for a folder) is shown as given on the page and in
    ``/api/info`` and ``/health``. ``stream_limits`` bound the live streams."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        pool.close()

    app = FastAPI(title="ser: speech emotion recognition", version="0.2.0", lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    model = pool.model
    described = {"model": model_description, "version": _model_version(model_info), "model_info": model_info}
    hub = StreamHub(pool, stream_limits)

    @app.exception_handler(Rejected)
    async def rejected(_: Request, exc: Rejected) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    # async: the pool's counters belong to the event loop, so they are read there too
    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {"classes": model["classes"], **described, "max_bytes": max_bytes,
                "sample_rate": model["sample_rate"], "window_s": model["window_s"], "hop_s": model["hop_s"],
                "workers": pool.workers, "max_queue": pool.max_queue, "timeout_s": pool.timeout_s,
                "stream": hub.info()}

    @app.get("/health")
    async def health() -> JSONResponse:
        status = {**pool.status(), "streams": hub.status(), **described}
        return JSONResponse(status, status_code=200 if status["status"] in ("ok", "degraded") else 503)

    @app.post("/api/predict")
    async def predict(request: Request, visuals: bool = True, timeline: bool = False) -> Response:
        with pool.admitted() as ticket:  # a full queue is refused before the body is read
            payload, name = await _read_upload(request, max_bytes)
            reply = await pool.run(ticket, (payload, name, visuals, timeline))
        if reply.kind == "bad":
            raise HTTPException(400, reply.body)
        if reply.kind != "ok":
            raise HTTPException(500, reply.body)
        timing = f"queue;dur={1000 * reply.waited_s:.1f}, predict;dur={1000 * reply.ran_s:.1f}"
        return Response(reply.body, media_type="application/json", headers={"Server-Timing": timing})

    @app.websocket("/api/stream")
    async def stream(websocket: WebSocket) -> None:
        await hub.serve(websocket)

    return app
