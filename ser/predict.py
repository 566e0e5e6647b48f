"""From audio to an emotion with a probability per class, for short clips and long recordings.

One :class:`Predictor` serves ``ser predict``, the MLflow pyfunc model and the web page, so a
clip is decoded, windowed, featurized and scored the same way by all three. It reads audio with
the shared front end (:func:`ser.audio.load_audio`) and scores it with the training
:class:`~ser.models.bundle.ModelBundle`, so there is one code path from file to probabilities.

Long recordings are cut into windows of ``window_s`` seconds about ``hop_s`` apart; each window
gets a prediction and the recording's answer is the mean of the window probabilities. A clip no
longer than about one window is scored whole, exactly as training clips were.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import numpy as np
from tqdm.auto import tqdm

from ser.audio import AudioError, AudioSource, describe_source, load_audio, normalize

# Windows scored per model call: bounds memory for a long recording, keeps calls efficient.
WINDOW_BATCH = 32
# Above this many windows a recording shows a progress bar.
PROGRESS_MIN_WINDOWS = 64

# libsndfile names the in-memory buffer it failed to open; that address means nothing to a user.
_BUFFER_NOISE = re.compile(r"Error opening <_io\.BytesIO object at 0x[0-9a-fA-F]+>: ")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd")


def audio_error_message(error: Exception, name: str | None = None) -> str:
    """An AudioError's message for a person: the buffer address dropped, the clip named."""
    message = _BUFFER_NOISE.sub("", str(error))
    if name is not None and message.startswith("<") and " bytes>: " in message:
        message = name + message[message.index(" bytes>: ") + len(" bytes>"):]
    return message


def failure_message(error: Exception, name: str) -> str:
    """One line for a file that could not be predicted: the audio problem, or what went wrong."""
    if isinstance(error, AudioError):
        return audio_error_message(error, name)
    return f"{name}: {type(error).__name__}: {error}"


@dataclass(frozen=True)
class WindowPrediction:
    start_s: float
    end_s: float
    label: str
    probabilities: dict[str, float]


@dataclass
class Prediction:
    """The answer for one recording; ``error`` is set (and the rest empty) when it failed."""

    source: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    windows: list[WindowPrediction] = field(default_factory=list)
    duration_s: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, with_windows: bool = True) -> dict[str, Any]:
        if not self.ok:
            return {"path": self.source, "error": self.error}
        result: dict[str, Any] = {
            "path": self.source,
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "duration_s": self.duration_s,
        }
        if with_windows:
            result["windows"] = [
                {"start_s": w.start_s, "end_s": w.end_s, "label": w.label, "probabilities": dict(w.probabilities)}
                for w in self.windows
            ]
        return result


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Window start offsets (samples) covering ``n_samples``.

    The count is ``1 + round((n - window) / hop)`` and the windows are spread evenly from the
    start to the end, so a clip up to half a hop longer than a window keeps one window (the
    whole clip, as in training) and a long recording is covered edge to edge.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop} samples")
    if n_samples <= window:
        return [0]
    count = 1 + int(round((n_samples - window) / hop))
    if count == 1:
        return [0]
    return [int(round(s)) for s in np.linspace(0, n_samples - window, count)]


def split_windows(y: np.ndarray, sample_rate: int, window_s: float, hop_s: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of the windows of ``y``; a single window is all of ``y``."""
    window = max(1, int(round(window_s * sample_rate)))
    hop = max(1, int(round(hop_s * sample_rate)))
    starts = window_starts(len(y), window, hop)
    if len(starts) == 1:
        return [(0, len(y))]
    return [(start, start + window) for start in starts]


def iter_audio_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly (whatever their suffix), and audio files found under folders, sorted."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            yield path


class Predictor:
    """Scores audio with a :class:`~ser.models.bundle.ModelBundle` (window by window)."""

    def __init__(self, bundle: Any, window_s: float, hop_s: float):
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"predict.window_s and predict.hop_s must be positive, got {window_s}, {hop_s}")
        self.bundle = bundle
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)

    @classmethod
    def from_bundle_dir(cls, folder: str | os.PathLike, **settings: float) -> "Predictor":
        from ser.models.bundle import ModelBundle

        return cls(ModelBundle.load(folder), **settings)

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.classes)

    @property
    def sample_rate(self) -> int:
        return int(self.bundle.audio["sample_rate"])

    def load(self, source: AudioSource) -> np.ndarray:
        """The front-end signal the model sees (raises :class:`AudioError`)."""
        return load_audio(source, self.bundle.audio)

    def probabilities_of_windows(self, signals: Sequence[np.ndarray], progress: str | None = None) -> np.ndarray:
        batches = range(0, len(signals), WINDOW_BATCH)
        show = progress is not None and len(signals) >= PROGRESS_MIN_WINDOWS
        rows = [
            self.bundle.predict_proba_signals(signals[i:i + WINDOW_BATCH])
            for i in tqdm(batches, desc=progress, unit="batch", disable=not show)
        ]
        return np.concatenate(rows, axis=0).astype(np.float64)

    def _windows(self, y: np.ndarray) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
        ranges = split_windows(y, self.sample_rate, self.window_s, self.hop_s)
        signals = [y[start:end] for start, end in ranges]
        if len(signals) > 1:
            # Training clips were normalized one by one; so is each window of a long recording.
            signals = [normalize(signal, self.bundle.audio) for signal in signals]
        return ranges, signals

    def _prediction(self, name: str, y: np.ndarray, ranges: list[tuple[int, int]],
                    window_probabilities: np.ndarray) -> Prediction:
        aggregate = window_probabilities.mean(axis=0)
        aggregate = aggregate / aggregate.sum()
        classes = self.classes
        windows = [
            WindowPrediction(
                start_s=round(start / self.sample_rate, 4),
                end_s=round(end / self.sample_rate, 4),
                label=classes[int(np.argmax(p))],
                probabilities={c: float(v) for c, v in zip(classes, p)},
            )
            for (start, end), p in zip(ranges, window_probabilities)
        ]
        return Prediction(
            source=name,
            label=classes[int(np.argmax(aggregate))],
            probabilities={c: float(v) for c, v in zip(classes, aggregate)},
            windows=windows,
            duration_s=round(len(y) / self.sample_rate, 4),
        )

    def _check_no_speaker_norm(self) -> None:
        if self.bundle.speaker_norm != "none":
            raise ValueError("this model was trained on per-speaker normalized features (train.speaker_norm: "
                             f"{self.bundle.speaker_norm}, transductive): it scores a batch of one speaker's "
                             "recordings, not a single clip; use ser predict --normalize-by folder with one "
                             "speaker's clips per folder")

    def predict_signal(self, y: np.ndarray, name: str = "<signal>") -> Prediction:
        """Predict a front-end-processed signal: one prediction per window plus the mean."""
        self._check_no_speaker_norm()
        ranges, signals = self._windows(y)
        return self._prediction(name, y, ranges, self.probabilities_of_windows(signals, progress=f"windows of {name}"))

    def predict_group(self, sources: Sequence[str | os.PathLike]) -> list[Prediction]:
        """Predict recordings of ONE speaker together, standardizing the model inputs with the
        group's own statistics (``--normalize-by folder``; transductive, for a model trained with
        ``train.speaker_norm: speaker``). A file that fails is reported; the others go on."""
        from ser.normalize import standardize_groups

        loaded, failed = [], {}
        for source in sources:
            name = str(source)
            try:
                y = self.load(source)
                ranges, signals = self._windows(y)
                loaded.append((name, y, ranges, self.bundle.inputs_from_signals(signals)))
            except Exception as exc:  # one bad file must not stop the others
                failed[name] = failure_message(exc, name)
        results: dict[str, Prediction] = {n: Prediction(source=n, error=e) for n, e in failed.items()}
        if len(loaded) == 1:
            name = loaded[0][0]
            results[name] = Prediction(source=name, error=f"{name}: --normalize-by needs at least two readable "
                                                          "recordings of the speaker in its group, found one")
        elif loaded:
            rows = np.concatenate([inputs for *_, inputs in loaded])
            rows = standardize_groups(rows, ["group"] * len(rows))
            probabilities = self.bundle.predict_proba(rows).astype(np.float64)
            offset = 0
            for name, y, ranges, inputs in loaded:
                results[name] = self._prediction(name, y, ranges, probabilities[offset:offset + len(inputs)])
                offset += len(inputs)
        return [results[str(source)] for source in sources]

    def predict_source(self, source: AudioSource, name: str | None = None) -> Prediction:
        """Predict a path or encoded bytes; raises :class:`AudioError` for unusable audio."""
        name = name or describe_source(source)
        return self.predict_signal(self.load(source), name=name)

    def predict_paths(self, paths: Iterable[str | os.PathLike], progress: bool = True,
                      normalize_by: str | None = None) -> list[Prediction]:
        """Predict many files; a file that fails gets a Prediction with ``error``, the rest go on.

        ``normalize_by="folder"``: the files of each folder are one speaker's, standardized
        together (see :meth:`predict_group`)."""
        files = list(iter_audio_files(paths))
        if normalize_by is not None:
            if normalize_by != "folder":
                raise ValueError(f"--normalize-by: unknown grouping '{normalize_by}'; use folder")
            if self.bundle.speaker_norm == "none":
                raise ValueError("--normalize-by folder needs a model trained with train.speaker_norm: speaker; "
                                 "this one was trained on unnormalized features")
            groups: dict[Path, list[Path]] = {}
            for path in files:
                groups.setdefault(path.parent, []).append(path)
            by_name = {}
            for folder in tqdm(sorted(groups), desc="speaker folders", unit="folder", disable=not progress):
                by_name.update({p.source: p for p in self.predict_group(groups[folder])})
            return [by_name[str(path)] for path in files]
        results = []
        for path in tqdm(files, desc="predicting", unit="file", disable=not progress or len(files) < 2):
            results.append(self.try_predict(path, str(path)))
        return results

    def try_predict(self, source: AudioSource, name: str) -> Prediction:
        try:
            return self.predict_source(source, name)
        except Exception as exc:  # one bad file must not stop the others; say what happened
            return Prediction(source=name, error=failure_message(exc, name))


def load_bundle_predictor(folder: str | os.PathLike, predict_params: dict[str, Any]) -> Predictor:
    """A Predictor over a ModelBundle folder, windowed as the ``predict:`` section says."""
    return Predictor.from_bundle_dir(folder, window_s=predict_params["window_s"], hop_s=predict_params["hop_s"])
