"""ModelBundle: everything needed to go from a front-end-processed signal to probabilities.

A bundle holds the fitted estimator (its standardization included), the class names, which
features it reads, and the ``audio`` and ``features`` params sections those features were
computed with (typed: :class:`~ser.params.AudioParams`, :class:`~ser.params.FeatureParams`;
the mappings are accepted and typed once). Training saves one; ``ser predict`` and the served
MLflow model load it, so a clip goes through exactly the feature code the model was trained on.

On disk (``save(folder)``)::

    folder/bundle.json      model_type, classes, feature_input, feature_names, target,
                            audio, features (params sections), format version
    folder/estimator/       the estimator's own files (``Estimator.save``)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ser.models.inputs import (FEATURE_INPUTS, SEQUENCE_INPUTS, TABLES, TABULAR_INPUTS,  # noqa: F401
                              extraction_sets, is_feature_input, tabular_sets)
from ser.features.whisper import feature_section
from ser.params import AudioParams, FeatureParams, typed

BUNDLE_FORMAT = 1


@dataclass
class ModelBundle:
    model_type: str
    classes: list[str]
    feature_input: str
    audio: AudioParams  # the section, or its mapping (typed in __post_init__)
    features: FeatureParams
    estimator: Any
    feature_names: list[str] = field(default_factory=list)  # tabular column order; [] for sequences
    target: str = "emotion"
    # "speaker": inputs were standardized per speaker in training (transductive); scoring then
    # needs a batch of one speaker's clips to standardize with (ser predict --normalize-by).
    speaker_norm: str = "none"
    # Probabilities are rescaled by this temperature (ser.training.calibration), fitted in training on the
    # out-of-fold predictions of held-out speakers; 1.0 leaves the estimator's own.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not is_feature_input(self.feature_input):
            raise ValueError(f"unknown feature_input '{self.feature_input}'; choose one of {FEATURE_INPUTS}")
        self.classes = [str(c) for c in self.classes]
        self.audio = typed(AudioParams, self.audio, "audio")
        self.features = feature_section(self.features)  # a registered model's older params too

    # ---- persistence -------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        description = {
            "format": BUNDLE_FORMAT,
            "model_type": self.model_type,
            "classes": self.classes,
            "feature_input": self.feature_input,
            "feature_names": list(self.feature_names),
            "target": self.target,
            "speaker_norm": self.speaker_norm,
            "temperature": self.temperature,
            "audio": self.audio.as_dict(),
            "features": self.features.as_dict(),
        }
        (folder / "bundle.json").write_text(json.dumps(description, indent=2, default=str), encoding="utf-8")
        self.estimator.save(folder / "estimator")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ModelBundle":
        from ser.models.registry import load_estimator

        folder = Path(folder)
        description_path = folder / "bundle.json"
        if not description_path.is_file():
            raise FileNotFoundError(f"{folder}: not a model bundle (no bundle.json)")
        description = json.loads(description_path.read_text(encoding="utf-8"))
        if description.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{description_path}: bundle format {description.get('format')} "
                             f"is not the supported {BUNDLE_FORMAT}")
        estimator = load_estimator(description["model_type"], folder / "estimator")
        return cls(
            model_type=description["model_type"],
            classes=description["classes"],
            feature_input=description["feature_input"],
            audio=typed(AudioParams, description["audio"], "audio", str(description_path)),
            features=feature_section(description["features"]),
            estimator=estimator,
            feature_names=description["feature_names"],
            target=description["target"],
            speaker_norm=description["speaker_norm"],
            temperature=float(description.get("temperature", 1.0)),  # bundles from before calibration
        )

    # ---- inputs --------------------------------------------------------------------------
    @property
    def is_sequence_model_input(self) -> bool:
        return self.feature_input in SEQUENCE_INPUTS

    def inputs_from_extracted(self, extracted: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """Model input from ``ser.features.extract`` outputs (one dict per clip)."""
        if len(extracted) == 0:
            raise ValueError("no clips to build model inputs from")
        if self.is_sequence_model_input:
            rows = [np.asarray(one[self.feature_input], dtype=np.float32) for one in extracted]
            return np.stack(rows).astype(np.float32)
        parts = tabular_sets(self.feature_input)
        rows = [np.concatenate([np.ravel(np.asarray(one[part], dtype=np.float32)) for part in parts])
                for one in extracted]
        inputs = np.stack(rows).astype(np.float32)
        if self.feature_names and inputs.shape[1] != len(self.feature_names):
            raise ValueError(f"feature extraction gave {inputs.shape[1]} values per clip but the model "
                             f"was trained on {len(self.feature_names)} ({self.feature_input})")
        return inputs

    def inputs_from_signals(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        """Model input for front-end-processed signals (``ser.audio.load_audio`` output)."""
        from ser.features.extraction import extract

        sets = extraction_sets(self.feature_input)
        checked = []
        for index, signal in enumerate(signals):
            signal = np.asarray(signal, dtype=np.float32)
            if signal.ndim != 1 or signal.size == 0:
                raise ValueError(f"signal {index}: expected a non-empty 1-D array, got shape {signal.shape}")
            checked.append(signal)
        return self.inputs_from_extracted([extract(signal, self.audio, self.features, sets)
                                           for signal in checked])

    # ---- predictions -----------------------------------------------------------------------
    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        probabilities = np.asarray(self.estimator.predict_proba(np.asarray(inputs, dtype=np.float32)))
        if probabilities.ndim != 2 or probabilities.shape[1] != len(self.classes):
            raise ValueError(f"estimator returned shape {probabilities.shape}; expected (n, {len(self.classes)})")
        if self.temperature != 1.0:
            from ser.training.calibration import with_temperature

            probabilities = with_temperature(probabilities, self.temperature)
        return probabilities

    def predict_proba_signals(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict_proba(self.inputs_from_signals(signals))

    def labels(self, probabilities: np.ndarray) -> list[str]:
        return [self.classes[i] for i in np.argmax(probabilities, axis=1)]

    def predict_signals(self, signals: Sequence[np.ndarray]) -> list[str]:
        return self.labels(self.predict_proba_signals(signals))
