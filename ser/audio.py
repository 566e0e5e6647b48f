"""The audio front end: one code path from encoded audio to the signal every model sees.

Training, ``ser predict`` and the served model all call :func:`load_audio`, so a clip is
decoded, downmixed, resampled, trimmed and normalized the same way everywhere.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview]


class AudioError(ValueError):
    """An input that cannot be used as audio; the message names the source and the problem."""


def describe_source(source: AudioSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def decode(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to ``(samples[n, channels] float32, sample_rate)``.

    libsndfile detects the container from the content, not the name, so an AIFF file named
    ``.wav`` (TESS ships two) decodes as what it is.
    """
    name = describe_source(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{name}: empty input (0 bytes)")
        handle: object = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"{name}: no such file")
        if path.stat().st_size == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        handle = str(path)
    try:
        samples, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{name}: cannot decode audio ({exc})") from None
    if samples.size == 0:
        raise AudioError(f"{name}: no audio samples")
    return samples, int(sample_rate)


# The trimming envelope uses 25 ms frames with a 10 ms hop whatever the sample rate, so the
# same params cut the same amount of silence at 16 kHz and at 48 kHz.
_ENVELOPE_FRAME_S = 0.025
_ENVELOPE_HOP_S = 0.010


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``samples[n]`` or ``samples[n, channels]`` to a float32 1-D signal (channel mean)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"expected samples[n] or samples[n, channels], got shape {samples.shape}")
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with soxr (its default high quality); a no-op at the same rate."""
    y = np.asarray(y, dtype=np.float32)
    if int(orig_sr) == int(target_sr):
        return y
    import soxr  # imported here so probing-only users of decode() do not pay for it

    return soxr.resample(y, int(orig_sr), int(target_sr)).astype(np.float32, copy=False)


def trim_silence(y: np.ndarray, sample_rate: int, top_db: float) -> np.ndarray:
    """Cut leading and trailing silence with an energy-envelope mask.

    The envelope is the frame RMS in dB relative to the loudest frame; frames more than
    ``top_db`` below it count as silence, and only the edges are cut (pauses inside the
    utterance are prosody, kept). A clip with no frame above the threshold, e.g. digital
    silence, is returned unchanged rather than emptied.
    """
    y = np.asarray(y, dtype=np.float32)
    frame = max(1, int(round(_ENVELOPE_FRAME_S * sample_rate)))
    hop = max(1, int(round(_ENVELOPE_HOP_S * sample_rate)))
    if y.size < frame:
        return y
    framed = np.lib.stride_tricks.sliding_window_view(y, frame)[::hop]
    energy = np.mean(np.square(framed, dtype=np.float64), axis=1)
    peak = energy.max()
    if peak <= 0.0:
        return y
    loud = np.flatnonzero(10.0 * np.log10(np.maximum(energy, 1e-20) / peak) > -float(top_db))
    start = loud[0] * hop
    stop = min(y.size, loud[-1] * hop + frame)
    return y[start:stop]


def normalize(y: np.ndarray, params: dict) -> np.ndarray:
    """Gain normalization: ``none``, ``peak`` (to ``peak_level``) or ``loudness``.

    ``loudness`` is a simple RMS gain to ``loudness_lufs`` dBFS (no K-weighting or gating:
    close enough to LUFS for speech at one level), then scaled down if needed so no sample
    clips. Silence is returned unchanged (there is no level to normalize).
    """
    mode = str(params["normalize"]).lower()
    y = np.asarray(y, dtype=np.float32)
    if mode == "none":
        return y
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak <= 0.0:
        return y
    if mode == "peak":
        gain = float(params["peak_level"]) / peak
    elif mode == "loudness":
        rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
        gain = 10.0 ** (float(params["loudness_lufs"]) / 20.0) / rms
        gain = min(gain, 1.0 / peak)
    else:
        raise ValueError(f"audio.normalize: unknown mode '{mode}'; choose none, peak or loudness")
    return (y * gain).astype(np.float32, copy=False)


def fixed_length_samples(params: dict) -> int:
    return int(round(float(params["max_seconds"]) * int(params["sample_rate"])))


def fix_length(y: np.ndarray, params: dict) -> np.ndarray:
    """Crop (keeping the centre) or zero-pad (at the end) to ``max_seconds`` at ``sample_rate``."""
    y = np.asarray(y, dtype=np.float32)
    target = fixed_length_samples(params)
    if y.size > target:
        start = (y.size - target) // 2
        return y[start:start + target]
    if y.size < target:
        return np.pad(y, (0, target - y.size))
    return y


def load_audio(source: AudioSource, params: dict) -> np.ndarray:
    """Encoded audio (path or bytes) -> the float32 mono signal every model sees.

    decode -> downmix -> soxr resample to ``sample_rate`` -> optional edge trimming
    (``trim_silence``, ``trim_top_db``) -> normalization (``normalize``). Not cropped: call
    :func:`fix_length` where a fixed shape is needed. Raises :class:`AudioError` naming the
    source for anything unusable.
    """
    samples, source_rate = decode(source)
    y = to_mono(samples)
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{describe_source(source)}: samples contain NaN or infinity")
    y = resample(y, source_rate, int(params["sample_rate"]))
    if y.size == 0:
        raise AudioError(f"{describe_source(source)}: no samples left after resampling")
    if params["trim_silence"]:
        y = trim_silence(y, int(params["sample_rate"]), float(params["trim_top_db"]))
    return normalize(y, params)
