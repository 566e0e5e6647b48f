"""``extract``: every feature set of one front-end-processed signal, a pure function of its inputs.

The sets themselves are the objects of :data:`ser.features.sets.FEATURE_SETS`; this module types
the sections it is handed and loops over them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ser.audio import AudioSource, load_audio
from ser.features.sets import FEATURE_SETS, FeatureSet, typed_sections
from ser.params import AudioParams, FeatureParams

__all__ = ["FEATURE_SETS", "KINDS_OF_SET", "SET_VERSIONS", "FeatureSet", "check_sets", "extract",
           "extract_clip", "set_params_hash"]

# The arrays each set produces (the keys of extract()'s result, the kinds kept in the cache) and
# each set's version, by name: views of the registry for the modules that read them.
KINDS_OF_SET: dict[str, tuple[str, ...]] = {name: one.kinds for name, one in FEATURE_SETS.items()}
SET_VERSIONS: dict[str, int] = {name: one.version for name, one in FEATURE_SETS.items()}


def check_sets(sets: Iterable[str]) -> tuple[str, ...]:
    sets = tuple(sets)
    unknown = [name for name in sets if name not in FEATURE_SETS]
    if unknown:
        raise ValueError(f"features.sets: unknown set(s) {unknown}; choose from {list(FEATURE_SETS)}")
    return sets


def set_params_hash(set_name: str, audio_params: AudioParams | dict, feature_params: FeatureParams | dict) -> str:
    """Hash of exactly the params that shape ``set_name``: its cache and output version.

    Functionals and eGeMAPS see the untruncated signal, so ``audio.max_seconds`` is not part of
    their hash; sequences and the Whisper frames depend on it. The Whisper set's key holds the
    encoder's model hash, compute type, padding and pooling (:meth:`FeatureSet.hash_params`).
    """
    (set_name,) = check_sets((set_name,))
    return FEATURE_SETS[set_name].params_hash(*typed_sections(audio_params, feature_params))


def extract(y: np.ndarray, audio_params: AudioParams | dict, feature_params: FeatureParams | dict,
            sets: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Features of a signal produced by ``ser.audio.load_audio`` (trimmed, normalized, untruncated).

    Returns ``functionals`` (1-D), ``egemaps`` (88), ``logmel``/``mfcc``/``fbank``
    (T x D, T fixed by ``audio.max_seconds``) and/or ``whisper`` (pooled encoder
    frames) with ``whisper_frames`` (T x depths x d_model) for the requested ``sets`` (None:
    ``features.sets``). ``audio_params`` is the ``audio`` section the signal went
    through (sample rate, fixed length).
    """
    audio, features = typed_sections(audio_params, feature_params)
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"extract expects a non-empty mono signal, got shape {y.shape}")
    result: dict[str, np.ndarray] = {}
    for set_name in check_sets(features.sets if sets is None else sets):
        result.update(FEATURE_SETS[set_name].extract(y, audio, features))
    for kind, values in result.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{kind} features of this signal are not finite (NaN or infinity)")
    return result


def extract_clip(source: AudioSource, audio_params: AudioParams | dict, feature_params: FeatureParams | dict,
                 sets: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Encoded audio -> features through the one front end (what predict and serving call)."""
    audio, features = typed_sections(audio_params, feature_params)
    return extract(load_audio(source, audio), audio, features, sets)
