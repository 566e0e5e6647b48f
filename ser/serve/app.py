"""The web app behind ``ser serve``: a page and a small JSON API over one Predictor.

    GET  /                the page (upload a file or record from the microphone)
    GET  /api/info        classes, model, limits
    POST /api/predict     multipart field ``file`` -> label, probabilities, windows, and the
                          clip as the model heard it: a waveform envelope (data arrays, drawn
                          by the page) and a log-mel spectrogram (PNG, data URI)

Errors are JSON ``{"detail": message}``: 413 over the size limit, 400 for input that is not
usable audio. Everything the page needs is served from ``ser/serve/static`` (no CDN).
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ser.audio import AudioError
from ser.predict import Predictor, audio_error_message

STATIC_DIR = Path(__file__).resolve().parent / "static"
WAVEFORM_POINTS = 800
SPECTROGRAM_MAX_COLUMNS = 1200
SPECTROGRAM_MELS = 80


def waveform_envelope(y: np.ndarray, points: int = WAVEFORM_POINTS) -> dict[str, list[float]]:
    """Min and max of ``y`` over ``points`` equal slices: enough to draw any length of audio."""
    if y.size == 0:
        return {"min": [], "max": []}
    edges = np.linspace(0, y.size, min(points, y.size) + 1).astype(int)
    lows = [float(y[a:b].min()) for a, b in zip(edges[:-1], edges[1:])]
    highs = [float(y[a:b].max()) for a, b in zip(edges[:-1], edges[1:])]
    return {"min": [round(v, 4) for v in lows], "max": [round(v, 4) for v in highs]}


def spectrogram_png(y: np.ndarray, sample_rate: int) -> str:
    """A log-mel spectrogram as a ``data:image/png`` URI (low frequencies at the bottom)."""
    import librosa
    from matplotlib import image as mpl_image

    mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, n_fft=512, hop_length=160, win_length=400,
                                         n_mels=SPECTROGRAM_MELS, fmax=sample_rate / 2)
    db = librosa.power_to_db(mel, ref=np.max, top_db=80.0)
    if db.shape[1] > SPECTROGRAM_MAX_COLUMNS:  # long recordings: average frames down to a drawable width
        edges = np.linspace(0, db.shape[1], SPECTROGRAM_MAX_COLUMNS + 1).astype(int)
        db = np.stack([db[:, a:b].mean(axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
    buffer = io.BytesIO()
    mpl_image.imsave(buffer, db, cmap="magma", origin="lower", format="png", vmin=-80.0, vmax=0.0)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(predictor: Predictor, max_bytes: int, model_description: str = "") -> FastAPI:
    lock = threading.Lock()  # one prediction at a time: feature extractors are not all re-entrant
    app = FastAPI(title="ser: speech emotion recognition", version="0.1.0")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"classes": predictor.classes, "model": model_description, "max_bytes": max_bytes,
                "sample_rate": predictor.sample_rate, "window_s": predictor.window_s, "hop_s": predictor.hop_s}

    @app.post("/api/predict")
    def predict(file: UploadFile = File(...), visuals: bool = True) -> dict[str, Any]:
        name = file.filename or "upload"
        payload = file.file.read(max_bytes + 1)
        if len(payload) > max_bytes:
            raise HTTPException(413, f"{name}: over the upload limit of {max_bytes} bytes (serve.max_bytes)")
        try:
            with lock:
                y = predictor.load(payload)
                prediction = predictor.predict_signal(y, name=name)
        except AudioError as exc:
            raise HTTPException(400, audio_error_message(exc, name)) from None
        answer = prediction.to_dict(with_windows=True)
        answer["classes"] = predictor.classes
        if visuals:
            answer["sample_rate"] = predictor.sample_rate
            answer["waveform"] = waveform_envelope(y)
            answer["spectrogram"] = spectrogram_png(y, predictor.sample_rate)
        return answer

    return app
