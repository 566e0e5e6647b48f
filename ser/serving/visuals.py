"""What the page draws of a clip as the model heard it: a waveform envelope and a log-mel
spectrogram. Computed in the predictor processes, beside the prediction."""

from __future__ import annotations

import base64
import io

import numpy as np

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
