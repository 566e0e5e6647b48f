"""``extract``: every feature set of one front-end-processed signal, a pure function of its inputs."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ser.audio import AudioSource, load_audio
from ser.params import params_hash
from ser.features.functionals import functionals
from ser.features.sequences import SEQUENCE_KINDS, sequences
from ser.features.whisper import encoder_identity, whisper_features

FEATURE_SETS = ("functionals", "egemaps", "sequences", "whisper")

# The arrays each set produces: the keys of extract()'s result, and the kinds kept in the cache.
KINDS_OF_SET: dict[str, tuple[str, ...]] = {
    "functionals": ("functionals",),
    "egemaps": ("egemaps",),
    "sequences": SEQUENCE_KINDS,
    "whisper": ("whisper", "whisper_frames"),
}

# Bump a set's version when its code changes its numbers, so cached values are recomputed.
SET_VERSIONS = {"functionals": 1, "egemaps": 1, "sequences": 1, "whisper": 3}

# The feature params each set depends on; anything else (sets, cache_dir, executor, workers)
# changes how features are computed, never their values.
_FEATURE_KEYS_OF_SET = {
    "functionals": ("n_mfcc", "n_mels", "n_fft", "win_length", "hop_length", "contrast_fmin",
                    "contrast_bands"),
    "egemaps": (),
    "sequences": ("n_mfcc", "n_mels", "n_fbank", "n_fft", "win_length", "hop_length"),
    "whisper": (),  # its own sub-section, through encoder_identity (model hash included)
}
# Sets whose arrays depend on the fixed length (audio.max_seconds).
_FIXED_LENGTH_SETS = ("sequences", "whisper")


def check_sets(sets: Iterable[str]) -> tuple[str, ...]:
    sets = tuple(sets)
    unknown = [name for name in sets if name not in FEATURE_SETS]
    if unknown:
        raise ValueError(f"features.sets: unknown set(s) {unknown}; choose from {list(FEATURE_SETS)}")
    return sets


def set_params_hash(set_name: str, audio_params: dict, feature_params: dict) -> str:
    """Hash of exactly the params that shape ``set_name``: its cache and output version.

    Functionals and eGeMAPS see the untruncated signal, so ``audio.max_seconds`` is not part of
    their hash; sequences and the Whisper frames depend on it. The Whisper set's key holds the
    encoder's model hash, compute type, padding and pooling.
    """
    audio = {key: value for key, value in audio_params.items()
             if set_name in _FIXED_LENGTH_SETS or key != "max_seconds"}
    features = {key: feature_params[key] for key in _FEATURE_KEYS_OF_SET[set_name]}
    if set_name == "whisper":
        features["encoder"] = encoder_identity(feature_params)
    return params_hash({"set": set_name, "version": SET_VERSIONS[set_name], "audio": audio,
                        "features": features})


def extract(y: np.ndarray, audio_params: dict, feature_params: dict,
            sets: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Features of a signal produced by ``ser.audio.load_audio`` (trimmed, normalized, untruncated).

    Returns ``functionals`` (1-D), ``egemaps`` (88), ``logmel``/``mfcc``/``fbank``
    (T x D, T fixed by ``audio_params["max_seconds"]``) and/or ``whisper`` (pooled encoder
    frames) with ``whisper_frames`` (T x depths x d_model) for the requested ``sets`` (None:
    ``feature_params["sets"]``). ``audio_params`` is the ``audio:`` section the signal went
    through (sample rate, fixed length).
    """
    audio = audio_params
    sample_rate = int(audio["sample_rate"])
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"extract expects a non-empty mono signal, got shape {y.shape}")
    result: dict[str, np.ndarray] = {}
    for set_name in check_sets(feature_params["sets"] if sets is None else sets):
        if set_name == "functionals":
            result["functionals"] = functionals(y, sample_rate, feature_params)
        elif set_name == "egemaps":
            from ser.features.egemaps import egemaps  # openSMILE: loaded only for models that read it

            result["egemaps"] = egemaps(y, sample_rate)
        elif set_name == "whisper":
            result.update(whisper_features(y, sample_rate, audio, feature_params))
        else:
            result.update(sequences(y, audio, feature_params))
    for kind, values in result.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{kind} features of this signal are not finite (NaN or infinity)")
    return result


def extract_clip(source: AudioSource, audio_params: dict, feature_params: dict,
                 sets: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Encoded audio -> features through the one front end (what predict and serving call)."""
    return extract(load_audio(source, audio_params), audio_params, feature_params, sets)
