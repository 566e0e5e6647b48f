"""From audio to an emotion with a probability per class, for short clips and long recordings.

One :class:`Predictor` serves ``ser predict``, the MLflow pyfunc model and the web page, so a
clip is decoded, windowed, featurized and scored the same way by all three. It reads audio with
the shared front end (:func:`ser.audio.load_audio`) and scores it with the training
:class:`~ser.models.bundle.ModelBundle`, so there is one code path from file to probabilities.

Long recordings are cut into windows of ``window_s`` seconds about ``hop_s`` apart; each window
gets a prediction and the recording's answer is the mean of the window probabilities. A clip no
longer than about one window is scored whole, exactly as training clips were.

A file on disk longer than one window is streamed, never held whole: one pass over its blocks
finds what needs the whole signal (the edge trim, so the windows fall where the whole-file path
puts them, and the whole-signal normalization gain), a second cuts the windows from an overlap
buffer and scores them ``WINDOW_BATCH`` at a time, each processed as the whole-file path does.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


import numpy as np

from ser.audio import (AudioError, is_audio, AudioSource, cut_ranges, describe_source, load_audio, normalize,
                       resampled_blocks, stream_extent, streamable_frames)
from ser.params import PredictParams, SegmentParams, typed

# Windows scored per model call: bounds memory for a long recording, keeps calls efficient.
WINDOW_BATCH = 32
# Above this many windows a recording shows a progress bar.
PROGRESS_MIN_WINDOWS = 64

# libsndfile names the in-memory buffer it failed to open; that address means nothing to a user.
_BUFFER_NOISE = re.compile(r"Error opening <_io\.BytesIO object at 0x[0-9a-fA-F]+>: ")

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
    """The answer for one recording; ``error`` is set (and the rest empty) when it failed.
    ``label`` is :data:`UNCERTAIN` when the top probability is under the predictor's
    ``min_confidence``; the probabilities are kept either way."""

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
            "confidence": max(self.probabilities.values()) if self.probabilities else None,
            "probabilities": dict(self.probabilities),
            "duration_s": self.duration_s,
        }
        if with_windows:
            result["windows"] = [
                {"start_s": w.start_s, "end_s": w.end_s, "label": w.label, "probabilities": dict(w.probabilities)}
                for w in self.windows
            ]
        return result


UNCERTAIN = "uncertain"


def answer(probabilities: dict[str, float], min_confidence: float | None) -> str:
    """The most probable class, or :data:`UNCERTAIN` when its probability is under ``min_confidence``."""
    label = max(probabilities, key=probabilities.get)
    return UNCERTAIN if min_confidence is not None and probabilities[label] < min_confidence else label


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


def window_ranges(n_samples: int, sample_rate: int, window_s: float, hop_s: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of the windows of a signal of ``n_samples``; a single
    window is all of it."""
    window = max(1, int(round(window_s * sample_rate)))
    hop = max(1, int(round(hop_s * sample_rate)))
    starts = window_starts(n_samples, window, hop)
    if len(starts) == 1:
        return [(0, n_samples)]
    return [(start, start + window) for start in starts]


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter), pulled lazily."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def iter_audio_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Files named directly (whatever their suffix), and audio files found under folders, sorted."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and is_audio(p))
        else:
            yield path


def progress_bar(iterable: Iterable[Any], show: bool, **bar: Any) -> Iterable[Any]:
    """``iterable`` behind a tqdm bar when ``show``; tqdm.auto (asyncio, a notebook probe) is
    imported only then."""
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **bar)


class Predictor:
    """Scores audio with a :class:`~ser.models.bundle.ModelBundle` (window by window)."""

    def __init__(self, bundle: Any, window_s: float, hop_s: float, min_confidence: float | None = None):
        if window_s <= 0 or hop_s <= 0:
            raise ValueError(f"predict.window_s and predict.hop_s must be positive, got {window_s}, {hop_s}")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"predict.min_confidence must be between 0 and 1 (or null), got {min_confidence}")
        self.bundle = bundle
        self.window_s = float(window_s)
        self.hop_s = float(hop_s)
        self.min_confidence = None if min_confidence is None else float(min_confidence)
        # How a timeline finds speech (predict.segments); set by whoever knows the params.
        self.segments: SegmentParams | None = None

    def use_threads(self, threads: int) -> "Predictor":
        """Run the encoder (if the model has one) on ``threads`` intra-op threads: every core for
        a lone process answering one request at a time, one for each of a server's workers."""
        features = self.bundle.features
        # Every features section names the encoder's threads; only a model reading the encoder uses them.
        whisper = features.whisper.model_copy(update={"threads": max(1, int(threads))})
        self.bundle.features = features.model_copy(update={"whisper": whisper})
        return self

    @classmethod
    def from_bundle_dir(cls, folder: str | os.PathLike, **settings: float) -> "Predictor":
        from ser.models.bundle import ModelBundle

        return cls(ModelBundle.load(folder), **settings)

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.classes)

    @property
    def sample_rate(self) -> int:
        return self.bundle.audio.sample_rate

    def load(self, source: AudioSource) -> np.ndarray:
        """The front-end signal the model sees (raises :class:`AudioError`)."""
        return load_audio(source, self.bundle.audio)

    def probabilities_of_windows(self, signals: Iterable[np.ndarray], progress: str | None = None,
                                 count: int | None = None) -> np.ndarray:
        """One row per window, ``WINDOW_BATCH`` windows per model call. ``signals`` may be a
        generator (a streamed recording, windows cut as they are scored); ``count`` is then its length."""
        if count is None:
            signals = list(signals)
            count = len(signals)
        show = progress is not None and count >= PROGRESS_MIN_WINDOWS
        rows = [
            self.bundle.predict_proba_signals(batch)
            for batch in progress_bar(batches(signals, WINDOW_BATCH), show, total=math.ceil(count / WINDOW_BATCH),
                                   desc=progress, unit="batch")
        ]
        return np.concatenate(rows, axis=0).astype(np.float64)

    def streams(self, source: AudioSource) -> bool:
        """Whether ``source`` is scored streamed: a file on disk longer than one window.

        Bytes stay whole: they are in memory already and bounded (``serve.max_bytes``). A clip
        of one window is read whole too, so it is scored bit for bit as before; so is an MP3,
        which libsndfile cannot read in blocks faithfully, and a file whose header cannot be
        read, for :func:`load_audio` to say what is wrong.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            return False
        header = streamable_frames(source)
        if header is None or header[0] <= 0:
            return False
        frames, rate = header
        longest = math.ceil(frames * self.sample_rate / rate)  # before trimming, which only shortens
        return len(window_ranges(longest, self.sample_rate, self.window_s, self.hop_s)) > 1

    def _streamed_windows(self, path: AudioSource) -> tuple[int, list[tuple[int, int]], Iterator[np.ndarray]]:
        # Pass 1: where load_audio's signal lies (the trim) and its gain; the windows need its length.
        extent = stream_extent(path, self.bundle.audio)
        ranges = window_ranges(extent.n_samples, self.sample_rate, self.window_s, self.hop_s)
        in_file = [(extent.start + start, extent.start + end) for start, end in ranges]
        # Pass 2: the same samples load_audio would hold at those windows, cut as they stream by.
        cut = cut_ranges(resampled_blocks(path, self.sample_rate), in_file, describe_source(path))
        signals = (extent.front_end(signal) for signal in cut)
        if len(ranges) > 1:  # as _windows does: each window normalized like a training clip
            signals = (normalize(signal, self.bundle.audio) for signal in signals)
        return extent.n_samples, ranges, signals

    def window_signals(self, source: AudioSource) -> tuple[int, list[tuple[int, int]], Iterable[np.ndarray]]:
        """``(n_samples, window ranges, window signals)`` of the front-end signal; the signals
        are produced lazily when the file is streamed."""
        if self.streams(source):
            return self._streamed_windows(source)
        y = self.load(source)
        ranges, signals = self._windows(y)
        return len(y), ranges, signals

    def _windows(self, y: np.ndarray) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
        ranges = window_ranges(len(y), self.sample_rate, self.window_s, self.hop_s)
        signals = [y[start:end] for start, end in ranges]
        if len(signals) > 1:
            # Training clips were normalized one by one; so is each window of a long recording.
            signals = [normalize(signal, self.bundle.audio) for signal in signals]
        return ranges, signals

    def _prediction(self, name: str, n_samples: int, ranges: list[tuple[int, int]],
                    window_probabilities: np.ndarray) -> Prediction:
        aggregate = window_probabilities.mean(axis=0)
        aggregate = aggregate / aggregate.sum()
        classes = self.classes
        windows = []
        for (start, end), p in zip(ranges, window_probabilities):
            probabilities = {c: float(v) for c, v in zip(classes, p)}
            windows.append(WindowPrediction(start_s=round(start / self.sample_rate, 4),
                                            end_s=round(end / self.sample_rate, 4),
                                            label=answer(probabilities, self.min_confidence),
                                            probabilities=probabilities))
        probabilities = {c: float(v) for c, v in zip(classes, aggregate)}
        return Prediction(
            source=name,
            label=answer(probabilities, self.min_confidence),
            probabilities=probabilities,
            windows=windows,
            duration_s=round(n_samples / self.sample_rate, 4),
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
        return self._prediction(name, len(y), ranges,
                                self.probabilities_of_windows(signals, progress=f"windows of {name}"))

    def predict_group(self, sources: Sequence[str | os.PathLike]) -> list[Prediction]:
        """Predict recordings of ONE speaker together, standardizing the model inputs with the
        group's own statistics (``--normalize-by folder``; transductive, for a model trained with
        ``train.speaker_norm: speaker``). A file that fails is reported; the others go on."""
        from ser.features.speaker_norm import standardize_groups

        loaded, failed = [], {}
        for source in sources:
            name = str(source)
            try:
                n_samples, ranges, signals = self.window_signals(source)
                inputs = np.concatenate([self.bundle.inputs_from_signals(batch)
                                         for batch in batches(signals, WINDOW_BATCH)])
                loaded.append((name, n_samples, ranges, inputs))
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
            for name, n_samples, ranges, inputs in loaded:
                results[name] = self._prediction(name, n_samples, ranges, probabilities[offset:offset + len(inputs)])
                offset += len(inputs)
        return [results[str(source)] for source in sources]

    def predict_source(self, source: AudioSource, name: str | None = None) -> Prediction:
        """Predict a path or encoded bytes; raises :class:`AudioError` for unusable audio.

        A long file on disk is streamed (see :meth:`streams`): memory stays flat in its length."""
        name = name or describe_source(source)
        if not self.streams(source):
            return self.predict_signal(self.load(source), name=name)
        self._check_no_speaker_norm()
        n_samples, ranges, signals = self._streamed_windows(source)
        probabilities = self.probabilities_of_windows(signals, progress=f"windows of {name}", count=len(ranges))
        return self._prediction(name, n_samples, ranges, probabilities)

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
            for folder in progress_bar(sorted(groups), progress, desc="speaker folders", unit="folder"):
                by_name.update({p.source: p for p in self.predict_group(groups[folder])})
            return [by_name[str(path)] for path in files]
        results = []
        for path in progress_bar(files, progress and len(files) >= 2, desc="predicting", unit="file"):
            results.append(self.try_predict(path, str(path)))
        return results

    def try_predict(self, source: AudioSource, name: str) -> Prediction:
        try:
            return self.predict_source(source, name)
        except Exception as exc:  # one bad file must not stop the others; say what happened
            return Prediction(source=name, error=failure_message(exc, name))


def load_bundle_predictor(folder: str | os.PathLike, predict_params: PredictParams | dict[str, Any]) -> Predictor:
    """A Predictor over a ModelBundle folder, windowed as the ``predict:`` section says."""
    predict_params = typed(PredictParams, predict_params)
    predictor = Predictor.from_bundle_dir(folder, window_s=predict_params.window_s, hop_s=predict_params.hop_s,
                                          min_confidence=predict_params.min_confidence)
    predictor.segments = predict_params.segments
    return predictor
