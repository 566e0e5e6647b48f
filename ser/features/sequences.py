"""Frame-level matrices of a fixed number of frames, for CNN / RNN models.

Computed on the signal cropped or padded to ``audio.max_seconds`` (``ser.audio.fix_length``),
so every clip gives the same T = 1 + samples // hop_length.
"""

from __future__ import annotations

import numpy as np

from ser.audio import fix_length, fixed_length_samples
from ser.features import spectral
from ser.params import AudioParams, FeatureParams, typed

SEQUENCE_KINDS = ("logmel", "mfcc", "fbank")


def n_frames(audio_params: AudioParams | dict, params: FeatureParams | dict) -> int:
    """T of every sequence kind: ``audio.max_seconds`` in hops of ``features.hop_length``."""
    _, _, hop_length = spectral.stft_params(params)
    return 1 + fixed_length_samples(audio_params) // hop_length


def sequence_dims(params: FeatureParams | dict) -> dict[str, int]:
    """D of each sequence kind, from the ``features`` section."""
    params = typed(FeatureParams, params, "features")
    return {"logmel": params.n_mels, "mfcc": params.n_mfcc, "fbank": params.n_fbank}


def sequences(y: np.ndarray, audio_params: AudioParams | dict, params: FeatureParams | dict
              ) -> dict[str, np.ndarray]:
    """``{"logmel": (T, n_mels), "mfcc": (T, n_mfcc), "fbank": (T, n_fbank)}``, float32."""
    audio_params = typed(AudioParams, audio_params, "audio")
    params = typed(FeatureParams, params, "features")
    fixed = fix_length(y, audio_params)
    spec = spectral.spectrum(fixed, audio_params.sample_rate, params)
    dims = sequence_dims(params)
    logmel = spectral.log_mel(spec, dims["logmel"])
    mfcc = spectral.mfcc_from_log_mel(logmel, dims["mfcc"])
    fbank = spectral.log_fbank(spec, dims["fbank"])
    return {name: np.ascontiguousarray(matrix.T, dtype=np.float32)
            for name, matrix in (("logmel", logmel), ("mfcc", mfcc), ("fbank", fbank))}
