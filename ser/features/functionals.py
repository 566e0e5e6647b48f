"""Utterance-level functionals: mean and standard deviation over frames of the seeds' descriptors.

MFCC (+ deltas, delta-deltas), chroma, log-mel, spectral contrast, tonnetz, zero-crossing rate,
RMS energy, spectral centroid, bandwidth, roll-off, flatness, flux, spectral entropy, energy
entropy and chroma deviation, all from one STFT (:mod:`ser.features.spectral`).
"""

from __future__ import annotations

import librosa
import numpy as np

from ser.features import spectral
from ser.params import FeatureParams, typed

STATISTICS = ("mean", "std")
# Energy entropy splits each frame into this many sub-frames (pyAudioAnalysis's choice).
ENERGY_ENTROPY_SUBFRAMES = 10
_EPS = 1e-12

SCALAR_DESCRIPTORS = ("zcr", "rms", "centroid", "bandwidth", "rolloff", "flatness", "flux",
                      "spectral_entropy", "energy_entropy", "chroma_deviation")


def contrast_settings(params: FeatureParams | dict, sample_rate: int) -> tuple[float, int]:
    """(fmin, n_bands) of spectral contrast; bands are octaves and must stay below Nyquist."""
    params = typed(FeatureParams, params, "features")
    fmin, n_bands = params.contrast_fmin, params.contrast_bands
    if fmin * 2.0 ** n_bands >= sample_rate / 2:
        raise ValueError(f"features.contrast_fmin={fmin} with contrast_bands={n_bands} exceeds the "
                         f"Nyquist frequency of {sample_rate} Hz audio; lower one of them")
    return fmin, n_bands


def descriptor_sizes(params: FeatureParams | dict) -> list[tuple[str, int]]:
    """(descriptor, dimension) in output order; names and values are both built from this."""
    params = typed(FeatureParams, params, "features")
    n_mfcc = params.n_mfcc
    return [
        ("mfcc", n_mfcc), ("mfcc_delta", n_mfcc), ("mfcc_delta2", n_mfcc),
        ("chroma", 12), ("logmel", params.n_mels),
        ("contrast", params.contrast_bands + 1), ("tonnetz", 6),
        *[(name, 1) for name in SCALAR_DESCRIPTORS],
    ]


def functional_names(params: FeatureParams | dict) -> list[str]:
    """The column names of the ``functionals`` table, in value order."""
    names = []
    for descriptor, size in descriptor_sizes(params):
        for index in range(size):
            stem = descriptor if size == 1 else f"{descriptor}_{index:02d}"
            names.extend(f"{stem}_{stat}" for stat in STATISTICS)
    return names


def _entropy(distribution: np.ndarray, axis: int) -> np.ndarray:
    """Normalized Shannon entropy (0..1) of non-negative weights along ``axis``; 0 for all-zero."""
    total = distribution.sum(axis=axis, keepdims=True)
    p = distribution / np.maximum(total, _EPS)
    h = -np.sum(p * np.log2(np.maximum(p, _EPS)), axis=axis)
    return h / np.log2(distribution.shape[axis])


def energy_entropy(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    sub = max(1, frame_length // ENERGY_ENTROPY_SUBFRAMES)
    frame_length = sub * ENERGY_ENTROPY_SUBFRAMES
    if y.size < frame_length:
        y = np.pad(y, (0, frame_length - y.size))
    frames = librosa.util.frame(y, frame_length=frame_length, hop_length=hop_length)
    sub_energy = np.square(frames.reshape(ENERGY_ENTROPY_SUBFRAMES, sub, -1)).sum(axis=1)
    return _entropy(sub_energy, axis=0)


def frame_descriptors(y: np.ndarray, sample_rate: int, params: FeatureParams | dict) -> list[np.ndarray]:
    """Every frame-level descriptor as a (dimension, frames) matrix, in descriptor_sizes order."""
    params = typed(FeatureParams, params, "features")
    n_fft, win_length, hop_length = spectral.stft_params(params)
    spec = spectral.spectrum(y, sample_rate, params)
    logmel = spectral.log_mel(spec, params.n_mels)
    mfcc = spectral.mfcc_from_log_mel(logmel, params.n_mfcc)
    # mode="nearest" keeps deltas defined for clips shorter than the 9-frame window
    delta = librosa.feature.delta(mfcc, mode="nearest")
    delta2 = librosa.feature.delta(mfcc, order=2, mode="nearest")
    chroma = spectral.chroma(spec)
    fmin, n_bands = contrast_settings(params, sample_rate)
    contrast = librosa.feature.spectral_contrast(S=spec.magnitude, sr=sample_rate, n_fft=n_fft,
                                                 fmin=fmin, n_bands=n_bands)
    tonnetz = librosa.feature.tonnetz(chroma=chroma)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=win_length, hop_length=hop_length)
    rms = librosa.feature.rms(S=spec.magnitude, frame_length=n_fft)
    centroid = librosa.feature.spectral_centroid(S=spec.magnitude, sr=sample_rate, n_fft=n_fft)
    bandwidth = librosa.feature.spectral_bandwidth(S=spec.magnitude, sr=sample_rate, n_fft=n_fft)
    rolloff = librosa.feature.spectral_rolloff(S=spec.magnitude, sr=sample_rate, n_fft=n_fft)
    flatness = librosa.feature.spectral_flatness(S=spec.magnitude)
    flux = librosa.onset.onset_strength(S=logmel, sr=sample_rate)[np.newaxis, :]
    spectral_entropy = _entropy(spec.power, axis=0)[np.newaxis, :]
    energy_ent = energy_entropy(y, win_length, hop_length)[np.newaxis, :]
    chroma_deviation = chroma.std(axis=0, keepdims=True)
    return [mfcc, delta, delta2, chroma, logmel, contrast, tonnetz, zcr, rms, centroid,
            bandwidth, rolloff, flatness, flux, spectral_entropy, energy_ent, chroma_deviation]


def functionals(y: np.ndarray, sample_rate: int, params: FeatureParams | dict) -> np.ndarray:
    """The functional vector of a front-end-processed signal, ordered as functional_names."""
    parts = []
    for matrix in frame_descriptors(y, sample_rate, params):
        stats = np.stack([matrix.mean(axis=1), matrix.std(axis=1)], axis=1)  # (dim, 2)
        parts.append(stats.reshape(-1))
    return np.concatenate(parts).astype(np.float32)
