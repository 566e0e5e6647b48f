"""One short-time spectrum per signal, and the filter banks derived from it.

Every spectral descriptor (mel, MFCC, chroma, contrast, centroid, ...) is computed from the
same STFT, so a clip pays for one transform per signal, not one per descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import librosa
import numpy as np

from ser.params import FeatureParams, typed

# log10 floor for filter-bank energies: -100 dB, far below anything a 16-bit recording holds.
LOG_FLOOR = 1e-10


@dataclass(frozen=True)
class Spectrum:
    magnitude: np.ndarray  # (n_fft // 2 + 1, T)
    power: np.ndarray      # magnitude ** 2
    sample_rate: int
    n_fft: int


def stft_params(params: FeatureParams | dict) -> tuple[int, int, int]:
    """``(n_fft, win_length, hop_length)`` of the ``features`` section, checked."""
    params = typed(FeatureParams, params, "features")
    n_fft, win_length, hop_length = params.n_fft, params.win_length, params.hop_length
    if win_length > n_fft:
        raise ValueError(f"features.win_length ({win_length}) must not exceed n_fft ({n_fft})")
    return n_fft, win_length, hop_length


def spectrum(y: np.ndarray, sample_rate: int, params: FeatureParams | dict) -> Spectrum:
    n_fft, win_length, hop_length = stft_params(params)
    if y.size < n_fft:  # too short to frame at all: pad, a few ms of silence changes nothing
        y = np.pad(y, (0, n_fft - y.size))
    magnitude = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
                                    center=True))
    return Spectrum(magnitude, np.square(magnitude), int(sample_rate), n_fft)


@lru_cache(maxsize=16)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, htk: bool = False) -> np.ndarray:
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, htk=htk).astype(np.float32)


@lru_cache(maxsize=16)
def chroma_basis(sample_rate: int, n_fft: int) -> np.ndarray:
    # tuning fixed at 0: estimating it per clip (chroma_stft's default) costs more than the
    # whole rest of the spectrum and speech has no tuning to estimate.
    return librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=0.0).astype(np.float32)


def log_mel(spec: Spectrum, n_mels: int) -> np.ndarray:
    """Log-mel power in dB (librosa's ``power_to_db``, 80 dB dynamic range)."""
    mel = mel_basis(spec.sample_rate, spec.n_fft, n_mels) @ spec.power
    return librosa.power_to_db(mel, top_db=80.0)


def log_fbank(spec: Spectrum, n_filters: int) -> np.ndarray:
    """Log (natural) HTK-mel filter-bank energies of the power spectrum, as ``logfbank`` does."""
    energies = mel_basis(spec.sample_rate, spec.n_fft, n_filters, True) @ (spec.power / spec.n_fft)
    return np.log(np.maximum(energies, LOG_FLOOR))


def mfcc_from_log_mel(logmel: np.ndarray, n_mfcc: int) -> np.ndarray:
    return librosa.feature.mfcc(S=logmel, n_mfcc=n_mfcc)


def chroma(spec: Spectrum) -> np.ndarray:
    return librosa.util.normalize(chroma_basis(spec.sample_rate, spec.n_fft) @ spec.power,
                                  norm=np.inf, axis=0)
