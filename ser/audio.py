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
