"""A long recording as a timeline: its speech segments, each with an emotion, start and end.

Segments come from the front end's own energy envelope (the 25 ms / 10 ms frames that trim
clips) with hysteresis: frames within ``on_db`` of the recording's loudest frame start a
segment, which then extends outward while its frames stay within ``off_db`` of the segment's
own loudest frame; no segment frame lies less than ``above_floor_db`` over the noise floor (the
recording's quietest tenth of frames); runs closer than ``min_silence_s`` are joined and
segments shorter than ``min_speech_s`` dropped. It was chosen
over WebRTC's VAD by a measured comparison (benchmarks/bench_vad.py, docs/RESULTS.md).

Each segment is scored as :class:`~ser.serving.predict.Predictor` scores a recording: windows
of ``window_s`` about ``hop_s`` apart placed inside the segment (one window, the whole segment,
when it is short), each normalized like a training clip; the segment's probabilities are the
mean of its windows'. Times are seconds in the file (before the front end's edge trim).

A file on disk is streamed twice, never held: once for the envelope (one float per 10 ms),
once to cut the segments' windows as they go by. An MP3 (which is decoded in one read, see
:func:`ser.audio.streamable_frames`) and uploaded bytes are loaded whole instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ser.audio import (AudioSource, cut_ranges, describe_source, envelope_sizes, frame_energies, load_audio, normalize,
                       resampled_blocks, streamable_frames, trim_span)
from ser.params import SegmentParams, typed
from ser.serving.predict import (WindowPrediction, answer, failure_message, iter_audio_files, progress_bar,
                                 window_ranges)

FLOOR_PERCENTILE = 10


@dataclass(frozen=True)
class Segment(WindowPrediction):
    """A stretch of speech: a window prediction over the segment, smoothed across its windows."""

    windows: int

    @property
    def confidence(self) -> float:
        return max(self.probabilities.values())


@dataclass
class Timeline:
    source: str
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    # Where the front end's signal (after its edge trim: what the page's waveform shows) starts;
    # known for audio scored in memory.
    front_end_start_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.source, "duration_s": self.duration_s, "front_end_start_s": self.front_end_start_s,
                "segments": [{"start_s": s.start_s, "end_s": s.end_s, "label": s.label,
                              "confidence": s.confidence, "probabilities": dict(s.probabilities),
                              "windows": s.windows} for s in self.segments]}


def speech_segments(energy: np.ndarray, n_samples: int, sample_rate: int,
                    segments: SegmentParams | dict[str, Any]) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of speech from the envelope's frame energies (mean squares).

    Hysteresis in two levels: frames within ``on_db`` of the recording's loudest frame start
    segments (runs closer than ``min_silence_s`` joined); each then extends outward while the
    frames stay within ``off_db`` of its own loudest frame, as the front end's trim keeps a clip,
    so a soft onset next to a loud neighbour is not cut. Neither level reaches below
    ``above_floor_db`` over the noise floor (the recording's quietest tenth of frames)."""
    settings = typed(SegmentParams, segments, "predict.segments")
    frame, hop = envelope_sizes(sample_rate)
    if energy.size == 0 or energy.max() <= 0.0:
        return []
    db = 10.0 * np.log10(np.maximum(energy, 1e-20) / energy.max())
    gap = max(1, int(round(settings.min_silence_s * sample_rate / hop)))
    # The noise floor: the quietest tenth of the frames is taken as pause, however long the speech.
    floor = float(np.percentile(db, FLOOR_PERCENTILE)) + float(settings.above_floor_db)
    runs = _join(_runs((db > -float(settings.on_db)) & (db > floor)), gap)
    grown = []
    for index, (a, b) in enumerate(runs):
        left = runs[index - 1][1] if index else 0
        right = runs[index + 1][0] if index + 1 < len(runs) else db.size
        near = (db > db[a:b].max() - float(settings.off_db)) & (db > floor)
        for frame_index in np.flatnonzero(near[left:a])[::-1] + left:  # outward, pauses under min_silence_s
            if a - frame_index > gap:
                break
            a = int(frame_index)
        for frame_index in np.flatnonzero(near[b:right]) + b:
            if frame_index + 1 - b > gap:
                break
            b = int(frame_index) + 1
        grown.append((a, b))
    ranges = [(a * hop, min(n_samples, (b - 1) * hop + frame)) for a, b in _join(grown, gap)]
    shortest = settings.min_speech_s * sample_rate
    return [(start, end) for start, end in ranges if end - start >= shortest]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[a, b)`` index ranges where ``mask`` is true."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _join(runs: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    joined: list[tuple[int, int]] = []
    for a, b in runs:
        if joined and a - joined[-1][1] < gap:
            joined[-1] = (joined[-1][0], max(b, joined[-1][1]))
        else:
            joined.append((a, b))
    return joined


def _streams(source: AudioSource) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return False
    header = streamable_frames(source)
    return header is not None and header[0] > 0


def _unprocessed(predictor, source: AudioSource) -> np.ndarray:
    """The decoded, downmixed, resampled signal (no trim, no gain): the file's own time axis."""
    audio = predictor.bundle.audio.model_copy(update={"trim_silence": False, "normalize": "none"})
    return load_audio(source, audio)


def timeline(predictor, source: AudioSource, segments: SegmentParams | dict[str, Any],
             name: str | None = None) -> Timeline:
    """The timeline of a path or encoded bytes; raises :class:`~ser.audio.AudioError` for unusable audio."""
    settings = typed(SegmentParams, segments, "predict.segments")
    name = name or describe_source(source)
    if predictor.bundle.speaker_norm != "none":
        raise ValueError(f"{name}: this model standardizes a speaker's recordings together (train.speaker_norm: "
                         f"{predictor.bundle.speaker_norm}, transductive); a timeline scores one recording alone")
    rate = predictor.sample_rate
    streamed = _streams(source)
    y = None if streamed else _unprocessed(predictor, source)

    def blocks() -> Iterator[np.ndarray]:  # one pass over the signal; a file is read twice, never held
        return resampled_blocks(source, rate) if y is None else iter([y])

    energy, n_samples = _envelope(blocks(), rate)
    spans = speech_segments(energy, n_samples, rate, settings)
    result = Timeline(source=name, duration_s=round(n_samples / rate, 4))
    if not streamed:
        audio = predictor.bundle.audio
        start = trim_span(y, rate, audio.trim_top_db)[0] if audio.trim_silence else 0
        result.front_end_start_s = round(start / rate, 4)
    if not spans:
        return result
    windows: list[tuple[int, int]] = []
    owner: list[int] = []
    for index, (start, end) in enumerate(spans):
        for a, b in window_ranges(end - start, rate, predictor.window_s, predictor.hop_s):
            windows.append((start + a, start + b))
            owner.append(index)
    # Every window is normalized, a one-window segment included: a segment is then scored as that
    # stretch cut out as a clip of its own would be (load_audio normalizes a clip whole).
    signals: Iterator[np.ndarray] = (normalize(s, predictor.bundle.audio)
                                     for s in cut_ranges(blocks(), windows, name))
    progress = f"timeline of {name}" if streamed else None
    probabilities = predictor.probabilities_of_windows(signals, progress=progress, count=len(windows))
    owner_array = np.asarray(owner)
    classes = predictor.classes
    for index, (start, end) in enumerate(spans):
        mean = probabilities[owner_array == index].mean(axis=0)
        by_class = {c: float(v) for c, v in zip(classes, mean / mean.sum())}
        result.segments.append(Segment(start_s=round(start / rate, 3), end_s=round(end / rate, 3),
                                       label=answer(by_class, predictor.min_confidence), probabilities=by_class,
                                       windows=int((owner_array == index).sum())))
    return result


def _envelope(blocks, rate: int) -> tuple[np.ndarray, int]:
    counted = _Counted(blocks)
    return frame_energies(counted, rate), counted.n_samples


class _Counted:
    """Blocks passed through, their samples counted."""

    def __init__(self, blocks):
        self.blocks, self.n_samples = blocks, 0

    def __iter__(self):
        for block in self.blocks:
            self.n_samples += block.size
            yield block


@dataclass
class TimelineResult:
    source: str
    timeline: Timeline | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def timeline_paths(predictor, paths, segments: SegmentParams | dict[str, Any],
                   progress: bool = True) -> list[TimelineResult]:
    """The timeline of every audio file under ``paths``; a file that fails gets its error, the rest go on."""
    settings = typed(SegmentParams, segments, "predict.segments")
    files = list(iter_audio_files(paths))
    results = []
    for path in progress_bar(files, progress and len(files) >= 2, desc="timelines", unit="file"):
        name = str(path)
        try:
            results.append(TimelineResult(name, timeline(predictor, path, settings, name)))
        except Exception as exc:  # one bad file must not stop the others; say what happened
            results.append(TimelineResult(name, error=failure_message(exc, name)))
    return results


def assemble(clips: list[np.ndarray], sample_rate: int, gaps_s: list[float], noise_dbfs: float | None = -60.0,
             seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A recording of ``clips`` (front-end signals) with a pause before each and after the last,
    ``gaps_s`` seconds long in turn, filled with white noise at ``noise_dbfs`` RMS (None: zeros).
    Returns the recording and each clip's ``(start, end)`` samples in it: the truth a timeline
    of it should find (the example in the report, the tests and benchmarks/bench_vad.py)."""
    rng = np.random.default_rng(seed)

    def pause(index: int) -> np.ndarray:
        n = int(round(gaps_s[index % len(gaps_s)] * sample_rate))
        if noise_dbfs is None:
            return np.zeros(n, dtype=np.float32)
        return (rng.standard_normal(n) * 10.0 ** (noise_dbfs / 20.0)).astype(np.float32)

    pieces, truth, at = [], [], 0
    for index, clip in enumerate(clips):
        gap = pause(index)
        pieces += [gap, np.asarray(clip, dtype=np.float32)]
        truth.append((at + gap.size, at + gap.size + clip.size))
        at += gap.size + clip.size
    pieces.append(pause(len(clips)))
    return np.concatenate(pieces), truth
