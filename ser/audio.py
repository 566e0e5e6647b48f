"""The audio front end: one code path from encoded audio to the signal every model sees.

Training, ``ser predict`` and the served model all call :func:`load_audio`, so a clip is
decoded, downmixed, resampled, trimmed and normalized the same way everywhere. A long file on
disk is read in blocks instead (:func:`resampled_blocks`, :func:`stream_extent`,
:func:`cut_ranges`): the same samples and the same edge trim, without holding the recording.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Union

import numpy as np
import soundfile as sf

from ser.params import AudioParams, typed

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview]


# Extensions of containers libsndfile decodes; the content decides the real format later
# (TESS ships AIFF files named .wav), so this only selects which files are meant as audio.
AUDIO_EXTENSIONS: frozenset[str] = frozenset({
    ".wav", ".wave", ".flac", ".aif", ".aiff", ".aifc", ".ogg", ".oga", ".opus", ".mp3",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".nist", ".sph", ".voc", ".htk", ".paf", ".svx",
})


def is_audio(path: str | os.PathLike) -> bool:
    """Whether a file is meant as audio, by its extension (its content is checked when it is read)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


class AudioError(ValueError):
    """An input that cannot be used as audio; the message names the source and the problem."""


def describe_source(source: AudioSource) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def _readable_path(source: str | os.PathLike) -> str:
    path = Path(source)
    if not path.is_file():
        raise AudioError(f"{source}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{source}: empty file (0 bytes)")
    return str(path)


def decode(source: AudioSource) -> tuple[np.ndarray, int]:
    """Decode a file path or encoded bytes to ``(samples[n, channels] float32, sample_rate)``.

    libsndfile detects the container from the content, not the name, so an AIFF file named
    ``.wav`` (TESS ships two) decodes as what it is.
    """
    name = describe_source(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{name}: empty input (0 bytes)")
        handle: object = io.BytesIO(bytes(source))
    else:
        handle = _readable_path(source)
    try:
        samples, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{name}: cannot decode audio ({exc})") from None
    if samples.size == 0:
        raise AudioError(f"{name}: no audio samples")
    return samples, int(sample_rate)


# The trimming envelope uses 25 ms frames with a 10 ms hop whatever the sample rate, so the
# same params cut the same amount of silence at 16 kHz and at 48 kHz.
_ENVELOPE_FRAME_S = 0.025
_ENVELOPE_HOP_S = 0.010


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``samples[n]`` or ``samples[n, channels]`` to a float32 1-D signal (channel mean)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"expected samples[n] or samples[n, channels], got shape {samples.shape}")
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with soxr (its default high quality); a no-op at the same rate."""
    y = np.asarray(y, dtype=np.float32)
    if int(orig_sr) == int(target_sr):
        return y
    import soxr  # imported here so probing-only users of decode() do not pay for it

    return soxr.resample(y, int(orig_sr), int(target_sr)).astype(np.float32, copy=False)


def trim_silence(y: np.ndarray, sample_rate: int, top_db: float) -> np.ndarray:
    """Cut leading and trailing silence with an energy-envelope mask.

    The envelope is the frame RMS in dB relative to the loudest frame; frames more than
    ``top_db`` below it count as silence, and only the edges are cut (pauses inside the
    utterance are prosody, kept). A clip with no frame above the threshold, e.g. digital
    silence, is returned unchanged rather than emptied.
    """
    y = np.asarray(y, dtype=np.float32)
    start, stop = trim_span(y, sample_rate, top_db)
    return y if (start, stop) == (0, y.size) else y[start:stop]


def trim_span(y: np.ndarray, sample_rate: int, top_db: float) -> tuple[int, int]:
    """``(start, stop)``: the samples :func:`trim_silence` keeps (all of them when it keeps the clip whole)."""
    frame, hop = _envelope_sizes(sample_rate)
    if y.size < frame:
        return 0, y.size
    loud = _loud_frames(_frame_energy(_frames(y, frame, hop)), top_db)
    if loud is None:
        return 0, y.size
    return loud[0] * hop, min(y.size, loud[1] * hop + frame)


def envelope_sizes(sample_rate: int) -> tuple[int, int]:
    """Frame and hop (samples) of the energy envelope that trims clips and finds speech segments."""
    return _envelope_sizes(sample_rate)


def frame_energies(blocks: Iterable[np.ndarray], sample_rate: int) -> np.ndarray:
    """Mean square of each envelope frame (:func:`envelope_sizes`) of a signal arriving in blocks.

    One float per hop (100 a second) is kept, not the signal: a ten-minute recording's envelope
    is half a megabyte."""
    frame, hop = _envelope_sizes(sample_rate)
    parts = [_frame_energy(framed) for framed in _envelope_frames(blocks, frame, hop)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float64)


def _envelope_sizes(sample_rate: int) -> tuple[int, int]:
    return max(1, int(round(_ENVELOPE_FRAME_S * sample_rate))), max(1, int(round(_ENVELOPE_HOP_S * sample_rate)))


def _frames(y: np.ndarray, frame: int, hop: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(y, frame)[::hop]


def _frame_energy(framed: np.ndarray) -> np.ndarray:
    return np.mean(np.square(framed, dtype=np.float64), axis=1)


def _loud_frames(energy: np.ndarray, top_db: float) -> tuple[int, int] | None:
    """The first and the last frame within ``top_db`` of the loudest; None when no frame has
    energy (nothing to trim against)."""
    peak = energy.max()
    if peak <= 0.0:
        return None
    loud = np.flatnonzero(_is_loud(energy, peak, top_db))
    return int(loud[0]), int(loud[-1])


def _is_loud(energy: np.ndarray, loudest: float, top_db: float) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(energy, 1e-20) / loudest) > -float(top_db)


def normalize(y: np.ndarray, params: AudioParams | dict) -> np.ndarray:
    """Gain normalization by the ``audio`` section: ``none``, ``peak`` (to ``peak_level``) or
    ``loudness``.

    ``loudness`` is a simple RMS gain to ``loudness_lufs`` dBFS (no K-weighting or gating:
    close enough to LUFS for speech at one level), then scaled down if needed so no sample
    clips. Silence is returned unchanged (there is no level to normalize).
    """
    params = typed(AudioParams, params, "audio")
    mode = params.normalize
    y = np.asarray(y, dtype=np.float32)
    if mode == "none":
        return y
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak <= 0.0:
        return y
    mean_square = float(np.mean(np.square(y, dtype=np.float64))) if mode == "loudness" else 0.0
    return apply_gain(y, _gain(peak, mean_square, params))


def normalize_gain(peak: float, mean_square: float, params: AudioParams | dict) -> float:
    """The factor :func:`normalize` multiplies a signal by, from its peak ``|x|`` and its mean
    square (``mean_square`` is read in ``loudness`` mode only); 1.0 leaves it unchanged."""
    return _gain(peak, mean_square, typed(AudioParams, params, "audio"))


def _gain(peak: float, mean_square: float, params: AudioParams) -> float:
    mode = params.normalize
    if mode == "none" or peak <= 0.0:
        return 1.0
    if mode == "peak":
        return params.peak_level / peak
    if mode == "loudness":
        gain = 10.0 ** (params.loudness_lufs / 20.0) / math.sqrt(mean_square)
        return min(gain, 1.0 / peak)
    raise ValueError(f"audio.normalize: unknown mode '{mode}'; choose none, peak or loudness")


def apply_gain(y: np.ndarray, gain: float) -> np.ndarray:
    # A Python float keeps the product in float32 (NumPy 2 promotion), as every caller's was.
    return (y * float(gain)).astype(np.float32, copy=False)


def fixed_length_samples(params: AudioParams | dict) -> int:
    """Samples in ``audio.max_seconds`` at ``audio.sample_rate``."""
    params = typed(AudioParams, params, "audio")
    return round(params.max_seconds * params.sample_rate)


def fix_length(y: np.ndarray, params: AudioParams | dict) -> np.ndarray:
    """Crop (keeping the centre) or zero-pad (at the end) to ``max_seconds`` at ``sample_rate``."""
    y = np.asarray(y, dtype=np.float32)
    target = fixed_length_samples(params)
    if y.size > target:
        start = (y.size - target) // 2
        return y[start:start + target]
    if y.size < target:
        return np.pad(y, (0, target - y.size))
    return y


def load_audio(source: AudioSource, params: AudioParams | dict) -> np.ndarray:
    """Encoded audio (path or bytes) -> the float32 mono signal every model sees.

    decode -> downmix -> soxr resample to ``sample_rate`` -> optional edge trimming
    (``trim_silence``, ``trim_top_db``) -> normalization (``normalize``). Not cropped: call
    :func:`fix_length` where a fixed shape is needed. Raises :class:`AudioError` naming the
    source for anything unusable.
    """
    params = typed(AudioParams, params, "audio")
    samples, source_rate = decode(source)
    y = to_mono(samples)
    if not np.all(np.isfinite(y)):
        raise AudioError(f"{describe_source(source)}: samples contain NaN or infinity")
    y = resample(y, source_rate, params.sample_rate)
    if y.size == 0:
        raise AudioError(f"{describe_source(source)}: no samples left after resampling")
    if params.trim_silence:
        y = trim_silence(y, params.sample_rate, params.trim_top_db)
    return normalize(y, params)


# ---- streamed front end: long files on disk, never held whole ------------------------------------
# Source frames decoded per read (about 1.4 s at 48 kHz): small enough that a streamed
# recording costs a few megabytes of buffers, large enough that per-call overhead is noise.
STREAM_BLOCK_FRAMES = 1 << 16
# libsndfile 1.2's MP3 reader loses samples between reads (runs of zeros after a block boundary,
# other samples for every read size, seeking or not); one read of the whole file is sound.
_WHOLE_READ_FORMATS = ("MP3",)


def streamable_frames(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(frames, sample_rate)`` from the header of a file that can be read in blocks; None for
    a header that cannot be read (:func:`load_audio` then says what is wrong with the file) and
    for MP3, which is decoded in one read (see ``_WHOLE_READ_FORMATS``)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return None
    if info.format in _WHOLE_READ_FORMATS:
        return None
    return int(info.frames), int(info.samplerate)


def resampled_blocks(path: str | os.PathLike, sample_rate: int) -> Iterator[np.ndarray]:
    """decode -> downmix -> resample of a file on disk, block by block.

    The concatenated blocks equal what :func:`load_audio` has before trimming, bit for bit:
    the downmix is per sample and soxr's stream gives the same samples as its one-shot call.
    An MP3 is decoded in one read (``_WHOLE_READ_FORMATS``), so it is bit for bit too but not
    bounded in memory. Raises :class:`AudioError` naming the file, as :func:`decode` does.
    """
    name = describe_source(path)
    handle = _readable_path(path)
    try:
        sound = sf.SoundFile(handle)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"{name}: cannot decode audio ({exc})") from None
    with sound:
        if sound.samplerate == int(sample_rate):
            step = _Passthrough()
        else:
            import soxr  # imported here, as in resample(), so decode-only users do not pay for it

            step = soxr.ResampleStream(sound.samplerate, int(sample_rate), 1, dtype="float32")
        frames = -1 if sound.format in _WHOLE_READ_FORMATS else STREAM_BLOCK_FRAMES
        decoded = produced = 0
        while True:
            try:
                samples = sound.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
                raise AudioError(f"{name}: cannot decode audio ({exc})") from None
            last = len(samples) == 0
            y = to_mono(samples) if not last else np.empty(0, dtype=np.float32)
            if not np.all(np.isfinite(y)):
                raise AudioError(f"{name}: samples contain NaN or infinity")
            decoded += y.size
            if last and decoded == 0:
                raise AudioError(f"{name}: no audio samples")
            out = step.resample_chunk(np.ascontiguousarray(y), last=last)
            produced += out.size
            if out.size:
                yield out
            if last:
                break
    if produced == 0:
        raise AudioError(f"{name}: no samples left after resampling")


class _Passthrough:
    """The resampler's interface when the file is already at the target rate."""

    @staticmethod
    def resample_chunk(y: np.ndarray, last: bool = False) -> np.ndarray:
        return y


@dataclass(frozen=True)
class StreamExtent:
    """Where :func:`load_audio`'s signal lies in a file's resampled samples (``start``, ``stop``:
    the edge trim) and the ``gain`` its normalization multiplies them by."""

    start: int
    stop: int
    gain: float

    @property
    def n_samples(self) -> int:
        return self.stop - self.start

    def front_end(self, samples: np.ndarray) -> np.ndarray:
        """:func:`load_audio`'s signal at these resampled samples (taken from within the extent)."""
        return samples if self.gain == 1.0 else apply_gain(samples, self.gain)


class _Tally:
    """Length, peak ``|x|`` and (when asked) sum of squares of the blocks passing through."""

    def __init__(self, squares: bool):
        self.squares = squares
        self.n_samples, self.peak, self.sum_squares = 0, 0.0, 0.0

    def count(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            self.n_samples += block.size
            self.peak = max(self.peak, float(np.max(np.abs(block))))
            if self.squares:
                self.sum_squares += float(np.sum(np.square(block, dtype=np.float64)))
            yield block


def _envelope_frames(blocks: Iterable[np.ndarray], frame: int, hop: int) -> Iterator[np.ndarray]:
    """:func:`trim_silence`'s frames of a signal arriving in blocks, a block's worth at a time
    (``[k, frame]`` views, valid until the next is asked for); samples wait for their frame."""
    carry = np.empty(0, dtype=np.float32)
    for block in blocks:
        pending = np.concatenate([carry, block])
        if pending.size >= frame:
            framed = _frames(pending, frame, hop)
            yield framed
            pending = pending[len(framed) * hop:]
        carry = pending


def _loud_span(frames: Iterable[np.ndarray], frame: int, hop: int, loudest: float, top_db: float,
               squares: bool) -> tuple[int, int, float, float]:
    """First and last loud frame, as :func:`_loud_frames` finds them once the loudest frame's
    energy is known, with the peak ``|x|`` of the samples they span and (``squares``) their sum of
    squares: the first hop of each frame up to the last, then all of the last frame."""
    first = last = None
    offset, peak, total, peak_so_far, total_so_far = 0, 0.0, 0.0, 0.0, 0.0
    for framed in frames:
        energy = _frame_energy(framed)
        loud = np.flatnonzero(_is_loud(energy, loudest, top_db))
        if first is None and loud.size == 0:
            offset += len(framed)
            continue
        if first is None:
            first = offset + int(loud[0])
        since = first - offset if first >= offset else 0  # this block's frames from the first loud one on
        peaks = np.max(np.abs(framed[since:]), axis=1)
        hop_squares = np.sum(np.square(framed[since:, :hop], dtype=np.float64), axis=1) if squares else None
        if loud.size:  # the span now reaches this block's last loud frame
            end = int(loud[-1]) - since
            last = offset + int(loud[-1])
            peak = max(peak_so_far, float(peaks[:end + 1].max()))
            if squares:
                total = total_so_far + float(hop_squares[:end].sum()) + float(energy[since + end]) * frame
        peak_so_far = max(peak_so_far, float(peaks.max()))
        if squares:
            total_so_far += float(hop_squares.sum())
        offset += len(framed)
    return first, last, peak, total


def stream_extent(path: str | os.PathLike, params: AudioParams | dict) -> StreamExtent:
    """Where :func:`load_audio`'s signal lies in a file's resampled samples and the gain it gets.

    The edge trim and the normalization read the whole signal, so the file is streamed for
    them: once for its length, peak and loudest envelope frame, and, when trimming, once more
    for the loud frames' span (the threshold is relative to the loudest frame) and its peak.
    Only running values are kept, so memory does not grow with the file.
    """
    params = typed(AudioParams, params, "audio")
    rate = params.sample_rate
    frame, hop = _envelope_sizes(rate)
    squares = params.normalize == "loudness"
    tally = _Tally(squares)
    blocks = tally.count(resampled_blocks(path, rate))
    loudest = 0.0
    if params.trim_silence:
        for framed in _envelope_frames(blocks, frame, hop):
            loudest = max(loudest, float(_frame_energy(framed).max()))
    else:
        for _ in blocks:  # the tally is all that is wanted
            pass
    if loudest <= 0.0:  # not trimming, shorter than a frame or all silence: load_audio keeps it all
        return StreamExtent(0, tally.n_samples, _gain(tally.peak, tally.sum_squares / tally.n_samples, params))
    frames = _envelope_frames(resampled_blocks(path, rate), frame, hop)
    first, last, peak, sum_squares = _loud_span(frames, frame, hop, loudest, params.trim_top_db, squares)
    start, stop = first * hop, min(tally.n_samples, last * hop + frame)
    return StreamExtent(start, stop, _gain(peak, sum_squares / (stop - start), params))


def cut_ranges(blocks: Iterable[np.ndarray], ranges: Sequence[tuple[int, int]], name: str) -> Iterator[np.ndarray]:
    """The samples of each ``(start, end)`` range of a signal that arrives in blocks.

    Ranges must be sorted by start and end (overlapping windows are); only the samples from
    the next range's start on are kept, so memory is one window plus a hop and a block.
    """
    buffer, buffer_start, index = np.empty(0, dtype=np.float32), 0, 0
    for block in blocks:
        if index == len(ranges):
            return
        buffer = np.concatenate([buffer, block])
        while index < len(ranges) and ranges[index][1] <= buffer_start + buffer.size:
            start, end = ranges[index]
            yield buffer[start - buffer_start:end - buffer_start].copy()
            index += 1
        keep_from = ranges[index][0] if index < len(ranges) else buffer_start + buffer.size
        drop = min(buffer.size, keep_from - buffer_start)
        buffer, buffer_start = buffer[drop:], buffer_start + drop
    if index < len(ranges):
        raise AudioError(f"{name}: the audio ended at sample {buffer_start + buffer.size}, before its window "
                         f"{ranges[index]} (did the file change while it was read?)")
