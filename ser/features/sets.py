"""The feature sets, each an object that owns what the pipeline needs to know about it.

A :class:`FeatureSet` knows its name, its version, the arrays it produces (its *kinds*: a table
of one row a clip and/or frame sequences of a fixed shape), the params its numbers depend on
(its cache key), its table's column names, the one-time work a process does before extracting
it (:meth:`FeatureSet.prepare`) and the extraction itself. :data:`FEATURE_SETS` is the one
registry: ``extract``, the cache keys and the features stage loop over it and never name a set,
so a new set is one class here.

Every method takes typed sections (:class:`~ser.params.AudioParams`,
:class:`~ser.params.FeatureParams`); the public entry points (``ser.features.extraction``,
``ser.features.compute``) type what they are handed once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ser.features.functionals import functional_names, functionals
from ser.features.sequences import SEQUENCE_KINDS, n_frames, sequence_dims, sequences
from ser.features.whisper import (encoder_for, encoder_identity, feature_section, frame_count, whisper_features,
                                  whisper_names)
from ser.params import AudioParams, FeatureParams, params_hash, typed

# A frame shape read from the first stored clip (it depends on the model, e.g. the encoder's width).
FROM_FIRST_CLIP = None


class FeatureSet:
    """One feature set. Subclasses set the class attributes and implement :meth:`extract`."""

    name: ClassVar[str]
    # Bump when the set's code changes its numbers, so cached values are recomputed.
    version: ClassVar[int]
    # The ``features`` keys its values depend on; anything else (sets, cache_dir, executor,
    # workers) changes how features are computed, never their values.
    feature_keys: ClassVar[tuple[str, ...]] = ()
    # Whether its arrays depend on the fixed length (``audio.max_seconds``); a set that sees the
    # untruncated signal leaves it out of its key.
    fixed_length: ClassVar[bool] = False
    # Whether it has a table (``<name>.parquet``, one row of values a clip; its kind is its name).
    table: ClassVar[bool] = False
    # The frame-sequence kinds it stores under ``sequences/`` (``<kind>.npy``).
    frame_kinds: ClassVar[tuple[str, ...]] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The arrays it produces: the keys of :meth:`extract`'s result and the kinds in the cache."""
        return ((self.name,) if self.table else ()) + self.frame_kinds

    def hash_params(self, audio: AudioParams, features: FeatureParams) -> dict[str, Any]:
        """Exactly the params that shape the set, as written in params.yaml: its cache key's input."""
        written = features.as_dict()
        return {"set": self.name, "version": self.version,
                "audio": {key: value for key, value in audio.as_dict().items()
                          if self.fixed_length or key != "max_seconds"},
                "features": {key: written[key] for key in self.feature_keys}}

    def params_hash(self, audio: AudioParams, features: FeatureParams) -> str:
        """The set's cache and output version."""
        return params_hash(self.hash_params(audio, features))

    def prepare(self, audio: AudioParams, features: FeatureParams) -> None:
        """One-time work of a process before it extracts the set (default: none)."""

    def extract(self, y: np.ndarray, audio: AudioParams, features: FeatureParams) -> dict[str, np.ndarray]:
        """``{kind: array}`` of a front-end-processed signal, for every kind of :attr:`kinds`."""
        raise NotImplementedError

    def columns(self, features: FeatureParams, values_per_clip: int | None) -> list[str]:
        """Column names of its table, whose clips have ``values_per_clip`` values each (None: no
        clip was stored)."""
        raise ValueError(f"'{self.name}' is not a table set; choose one of "
                         f"{[name for name, one in FEATURE_SETS.items() if one.table]}")

    def frame_shapes(self, audio: AudioParams, features: FeatureParams) -> dict[str, tuple[int, ...] | None]:
        """The shape of one clip's frames for each of :attr:`frame_kinds` (``FROM_FIRST_CLIP``:
        whatever the first stored clip has)."""
        return {}

    def info(self, audio: AudioParams, features: FeatureParams, selected: bool) -> dict[str, Any]:
        """Its entries of a feature folder's ``info.json`` (their empty values when not ``selected``)."""
        return {}


class Functionals(FeatureSet):
    """Utterance-level mean and std of spectral descriptors (:mod:`ser.features.functionals`)."""

    name = "functionals"
    version = 1
    feature_keys = ("n_mfcc", "n_mels", "n_fft", "win_length", "hop_length", "contrast_fmin", "contrast_bands")
    table = True

    def extract(self, y, audio, features):
        return {"functionals": functionals(y, audio.sample_rate, features)}

    def columns(self, features, values_per_clip):
        return functional_names(features)

    def info(self, audio, features, selected):
        return {"functionals": len(functional_names(features)) if selected else 0}


class Egemaps(FeatureSet):
    """The 88 eGeMAPSv02 functionals of openSMILE (:mod:`ser.features.egemaps`), imported only
    where the set is used: openSMILE is a large load that most models never read."""

    name = "egemaps"
    version = 1
    table = True

    def prepare(self, audio, features):
        import ser.features.egemaps  # noqa: F401  openSMILE loaded once, before any worker

    def extract(self, y, audio, features):
        from ser.features.egemaps import egemaps

        return {"egemaps": egemaps(y, audio.sample_rate)}

    def columns(self, features, values_per_clip):
        from ser.features.egemaps import EGEMAPS_NAMES

        return list(EGEMAPS_NAMES)

    def info(self, audio, features, selected):
        from ser.features.egemaps import EGEMAPS_NAMES

        return {"egemaps": len(EGEMAPS_NAMES) if selected else 0}


class Sequences(FeatureSet):
    """Fixed-length log-mel, MFCC and filter-bank frames (:mod:`ser.features.sequences`)."""

    name = "sequences"
    version = 1
    feature_keys = ("n_mfcc", "n_mels", "n_fbank", "n_fft", "win_length", "hop_length")
    fixed_length = True
    frame_kinds = SEQUENCE_KINDS

    def extract(self, y, audio, features):
        return sequences(y, audio, features)

    def frame_shapes(self, audio, features):
        frames = n_frames(audio, features)
        return {kind: (frames, dim) for kind, dim in sequence_dims(features).items()}

    def info(self, audio, features, selected):
        return {"sequence_frames": n_frames(audio, features) if selected else 0,
                "sequence_dims": sequence_dims(features) if selected else {}}


class Whisper(FeatureSet):
    """Pooled Whisper encoder frames and the frames themselves (:mod:`ser.features.whisper`)."""

    name = "whisper"
    version = 3
    fixed_length = True  # whisper_frames are cropped or padded to audio.max_seconds
    table = True
    frame_kinds = ("whisper_frames",)

    def hash_params(self, audio, features):
        key = super().hash_params(audio, features)
        # its own sub-section, through the encoder's identity (the model's hash included)
        key["features"]["encoder"] = encoder_identity(features)
        return key

    def prepare(self, audio, features):
        encoder_for(features.whisper)  # join and verify the weights, build the graph

    def extract(self, y, audio, features):
        return whisper_features(y, audio.sample_rate, audio, features)

    def columns(self, features, values_per_clip):
        if values_per_clip is None:
            return []
        layers = list(features.whisper.layers)
        return whisper_names(values_per_clip // (2 * len(layers)), layers)

    def frame_shapes(self, audio, features):
        return {"whisper_frames": FROM_FIRST_CLIP}  # (T, depths, d_model): d_model is the encoder's

    def info(self, audio, features, selected):
        return {"whisper_frames": frame_count(audio, features) if selected else 0}


# In this order: info.json lists the sets' entries so.
FEATURE_SETS: dict[str, FeatureSet] = {one.name: one for one in (Functionals(), Egemaps(), Sequences(), Whisper())}


def typed_sections(audio: AudioParams | dict, features: FeatureParams | dict) -> tuple[AudioParams, FeatureParams]:
    """The ``audio`` and ``features`` sections typed, as the sets' methods take them; features
    params logged before a key existed are completed as they were meant (``whisper.layers``:
    :func:`ser.features.whisper.feature_section`)."""
    return typed(AudioParams, audio, "audio"), feature_section(features)
