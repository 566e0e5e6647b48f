"""Run ``ser serve``: snapshot the loaded model, start the predictor processes, serve the app.

The command line loads the model once (resolving an MLflow alias or URI to one version) and
hands the Predictor here; the workers load a copy of its bundle, so all of them serve that
version for the server's whole life, restarts included.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from ser.params import ServeParams, typed
from ser.runtime.executor import cpu_count
from ser.serving.pool import PredictorPool, resolve_workers
from ser.serving.stream import StreamLimits
from ser.serving.workers import snapshot

# Seconds uvicorn waits for requests in progress when told to stop, so a stop stays prompt.
GRACEFUL_STOP_S = 5


def build_pool(predictor, serve_params: ServeParams | dict[str, Any], scratch: str | Path) -> PredictorPool:
    """A started pool over a snapshot of ``predictor`` in ``scratch``, sized by the ``serve:``
    section (raises ValueError, WorkerError)."""
    serve_params = typed(ServeParams, serve_params)
    workers = resolve_workers(serve_params.workers, cpu_count())
    pool = PredictorPool(snapshot(predictor, Path(scratch) / "bundle"), workers=workers,
                         max_queue=serve_params.max_queue, timeout_s=serve_params.timeout_s)
    pool.start()
    return pool


def _exit_on_sigterm(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def run_server(predictor, serve_params: ServeParams | dict[str, Any], *, host: str, port: int,
               model_description: str, model_info: dict[str, Any] | None) -> None:
    """Serve until stopped (Ctrl-C, SIGTERM) with the ``serve:`` section's settings; the workers
    and the snapshot go with the server."""
    serve_params = typed(ServeParams, serve_params)
    import uvicorn

    from ser.serving.app import create_app

    # uvicorn stops gracefully on SIGTERM, then raises it again; as an exception (not the default
    # action, which ends the process on the spot) it lets the snapshot folder below be removed.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="ser-serve-") as scratch:
            pool = build_pool(predictor, serve_params, scratch)
            try:
                limits = StreamLimits.of(serve_params, pool.model["window_s"], pool.model["sample_rate"])
                app = create_app(pool, max_bytes=serve_params.max_bytes, model_description=model_description,
                                 model_info=model_info, stream_limits=limits)
                print(f"ser serve: {model_description} on http://{host}:{port}/ with {pool.workers} predictor "
                      f"processes, at most {pool.max_queue} requests in flight, {pool.timeout_s:g} s each, "
                      f"{limits.max_streams} live streams", file=sys.stderr)
                # wsproto (pinned) for the live streams, whatever else is installed; it cuts frames
                # far over the stream limit before they are buffered whole. No compression: PCM
                # hardly shrinks, and a small compressed frame could inflate past any limit.
                uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=GRACEFUL_STOP_S,
                            ws="wsproto", ws_max_size=limits.transport_max_bytes, ws_per_message_deflate=False)
            finally:
                pool.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
