"""The audio front end: every input format comes out mono at the target rate, and trimming,
normalization and fixed length behave as specified."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import ser.audio as audio_module
from ser.audio import (AudioError, cut_ranges, decode, fix_length, load_audio, normalize, resample,
                       resampled_blocks, stream_extent, to_mono, trim_silence)

AUDIO = {"sample_rate": 16000, "trim_silence": False, "trim_top_db": 40, "normalize": "none",
         "peak_level": 0.95, "loudness_lufs": -23.0, "max_seconds": 3.0}


def tone(sample_rate: int, seconds: float, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sample_rate * seconds))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(y: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    return float(np.fft.rfftfreq(y.size, 1 / sample_rate)[np.argmax(spectrum)])


# (file name, sample rate, channels, soundfile format, subtype)
FORMATS = [
    ("stereo48k.wav", 48000, 2, "WAV", "PCM_16"),
    ("eight_bit.wav", 22050, 1, "WAV", "PCM_U8"),
    ("pcm24.wav", 44100, 1, "WAV", "PCM_24"),
    ("float.wav", 16000, 1, "WAV", "FLOAT"),
    ("rate96k.wav", 96000, 1, "WAV", "PCM_16"),
    ("aiff_named.wav", 24414, 1, "AIFF", "PCM_16"),  # TESS ships AIFF files named .wav
    ("clip.flac", 48000, 2, "FLAC", "PCM_16"),
    ("clip.mp3", 44100, 2, "MP3", "MPEG_LAYER_III"),
    ("clip.ogg", 32000, 1, "OGG", "VORBIS"),
]


@pytest.mark.parametrize("name,rate,channels,container,subtype", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_comes_out_mono_at_the_target_rate(tmp_path, name, rate, channels, container, subtype):
    seconds = 1.0
    y = tone(rate, seconds)
    data = np.stack([y, y], axis=1) if channels == 2 else y
    path = tmp_path / name
    sf.write(path, data, rate, format=container, subtype=subtype)

    out = load_audio(path, AUDIO)

    assert out.dtype == np.float32 and out.ndim == 1
    # lossy codecs add encoder delay and padding; PCM keeps the length to the sample
    tolerance = 0.12 if container in ("MP3", "OGG") else 0.002
    assert abs(out.size / 16000 - seconds) <= tolerance
    assert abs(dominant_frequency(out, 16000) - 440.0) < 5.0
    assert 0.3 < np.max(np.abs(out)) < 0.7  # level survives decoding (8-bit included)


def test_bytes_and_path_give_the_same_signal(tmp_path):
    path = tmp_path / "clip.flac"
    sf.write(path, tone(48000, 0.5), 48000)
    from_path = load_audio(path, AUDIO)
    from_bytes = load_audio(path.read_bytes(), AUDIO)
    np.testing.assert_array_equal(from_path, from_bytes)


def test_downmix_is_the_channel_mean():
    left = np.linspace(-1, 1, 100, dtype=np.float32)
    right = np.ones(100, dtype=np.float32) * 0.5
    mono = to_mono(np.stack([left, right], axis=1))
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    np.testing.assert_array_equal(to_mono(left[:, None]), left)


def test_resample_keeps_a_tone_and_changes_the_length():
    y = tone(48000, 1.0, frequency=1000.0)
    out = resample(y, 48000, 16000)
    assert out.size == 16000
    assert abs(dominant_frequency(out, 16000) - 1000.0) < 2.0
    np.testing.assert_array_equal(resample(y, 16000, 16000), y)  # same rate: untouched


def test_target_rate_is_a_param(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(44100, 1.0), 44100)
    assert load_audio(path, {**AUDIO, "sample_rate": 8000}).size == 8000


def test_trimming_cuts_silent_edges_and_keeps_inner_pauses():
    sr = 16000
    silence = np.zeros(sr // 2, dtype=np.float32)
    pause = np.zeros(sr // 4, dtype=np.float32)
    speech = np.concatenate([tone(sr, 0.5), pause, tone(sr, 0.5)])
    trimmed = trim_silence(np.concatenate([silence, speech, silence]), sr, top_db=40)
    # edges are cut to within one 25 ms envelope frame; the 250 ms inner pause stays
    assert speech.size <= trimmed.size <= speech.size + int(0.05 * sr)
    assert np.count_nonzero(np.abs(trimmed) < 1e-6) >= pause.size


def test_trim_threshold_is_relative_to_the_loudest_frame():
    sr = 16000
    quiet = tone(sr, 0.5, amplitude=0.5 * 10 ** (-30 / 20))  # 30 dB below the loud part
    y = np.concatenate([quiet, tone(sr, 0.5)])
    assert trim_silence(y, sr, top_db=40).size >= y.size - int(0.03 * sr)  # kept at 40 dB
    assert trim_silence(y, sr, top_db=20).size <= sr // 2 + int(0.03 * sr)  # cut at 20 dB


def test_all_silent_clip_survives_trimming_and_normalization(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, dtype=np.float32), 16000)
    out = load_audio(path, {**AUDIO, "trim_silence": True, "normalize": "peak"})
    assert out.size == 16000 and not np.any(out)
    assert not np.any(normalize(out, {**AUDIO, "normalize": "loudness"}))


def test_peak_normalization():
    out = normalize(tone(16000, 0.5, amplitude=0.1), {**AUDIO, "normalize": "peak", "peak_level": 0.95})
    assert np.max(np.abs(out)) == pytest.approx(0.95, rel=1e-5)


def test_loudness_normalization_reaches_the_target_and_never_clips():
    params = {**AUDIO, "normalize": "loudness", "loudness_lufs": -23.0}
    out = normalize(tone(16000, 0.5, amplitude=0.01), params)
    rms_db = 20 * np.log10(np.sqrt(np.mean(out.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(-23.0, abs=0.05)
    # a sparse click needs a gain that would clip it: the gain stops at full scale
    click = np.zeros(16000, dtype=np.float32)
    click[100] = 0.01
    loud = normalize(click, {**params, "loudness_lufs": -3.0})
    assert np.max(np.abs(loud)) <= 1.0 + 1e-6


def test_unknown_normalization_is_a_clear_error():
    with pytest.raises(ValueError, match="audio.normalize"):
        normalize(tone(16000, 0.1), {**AUDIO, "normalize": "loudest"})


def test_fix_length_crops_the_centre_and_pads_the_end():
    params = {**AUDIO, "sample_rate": 10, "max_seconds": 1.0}
    long = np.arange(16, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(long, params), np.arange(3, 13))
    short = np.arange(1, 5, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(short, params), [1, 2, 3, 4, 0, 0, 0, 0, 0, 0])
    exact = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(exact, params), exact)


@pytest.mark.parametrize("content,problem", [
    (None, "no such file"),
    (b"", "empty"),
    (b"RIFF....WAVEfmt this is not audio at all" * 10, "cannot decode"),
])
def test_bad_input_is_an_audio_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "broken.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=problem) as raised:
        load_audio(path, AUDIO)
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_bad_bytes_are_an_audio_error():
    with pytest.raises(AudioError, match="bytes"):
        load_audio(b"\x00\x01garbage", AUDIO)
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"", AUDIO)


def test_decode_keeps_channels_and_rate():
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((480, 2), dtype=np.float32), 48000, format="WAV")
    samples, rate = decode(buffer.getvalue())
    assert samples.shape == (480, 2) and rate == 48000


@pytest.mark.mirror
@pytest.mark.parametrize("relative", [
    "tess/OAF_food_fear.wav",                          # 96 kHz WAV
    "tess/YAF_germ_angry.wav",                         # AIFF named .wav
    "tess/YAF_neat_fear.wav",                          # AIFF named .wav
    "ravdess/Actor_01/03-01-02-01-01-02-01.flac",      # stereo, 48 kHz
])
def test_odd_real_clips_come_out_mono_16k(real_mirror, relative):
    path = real_mirror / relative
    samples, rate = decode(path)
    out = load_audio(path, {**AUDIO, "trim_silence": True, "normalize": "peak"})
    assert out.ndim == 1 and out.dtype == np.float32
    assert 0.5 < out.size / 16000 <= samples.shape[0] / rate + 1e-3
    assert np.max(np.abs(out)) == pytest.approx(0.95, rel=1e-4)


# ---- the streamed front end: long files read in blocks, the same signal as load_audio -------------
MODES = [(mode, trim) for mode in ("peak", "loudness", "none") for trim in (True, False)]


@pytest.fixture
def small_blocks(monkeypatch):
    """Odd, small decode blocks: envelope frames, windows and resampler chunks straddle block edges."""
    monkeypatch.setattr(audio_module, "STREAM_BLOCK_FRAMES", 4099)


def streamed(path: Path, rate: int = 16000) -> np.ndarray:
    return np.concatenate(list(resampled_blocks(path, rate)))


def assert_stream_reproduces_load_audio(path: Path, mode: str, trim: bool, **overrides) -> None:
    """The streamed pass finds load_audio's trim and gain: the same samples, bit for bit.

    In ``loudness`` mode the mean square is summed in another order (per frame and block), but the
    gain is rounded to float32 before it multiplies, so the samples still agree exactly."""
    params = {**AUDIO, "normalize": mode, "trim_silence": trim, **overrides}
    extent = stream_extent(path, params)
    whole = streamed(path)
    expected = load_audio(path, params)
    assert extent.n_samples == expected.size
    np.testing.assert_array_equal(extent.front_end(whole[extent.start:extent.stop]), expected)


def speech_with_silent_edges(mirror: Path, rate: int, seconds: float = 20.0) -> np.ndarray:
    """Real speech (RAVDESS actor 11, clips back to back) at ``rate`` between 1 s and 0.3 s of silence."""
    pieces, total = [], 0
    for path in sorted((mirror / "ravdess" / "Actor_11").glob("*.flac")):
        samples, source_rate = decode(path)
        pieces.append(resample(to_mono(samples), source_rate, rate))
        total += pieces[-1].size
        if total >= seconds * rate:
            break
    return np.concatenate([np.zeros(rate, np.float32), *pieces, np.zeros(int(0.3 * rate), np.float32)])


STREAMED_FILES = [("speech48k.flac", 48000, 1, "PCM_16"), ("stereo44k.wav", 44100, 2, "FLOAT"),
                  ("speech16k.wav", 16000, 1, "PCM_16")]


@pytest.mark.mirror
@pytest.mark.parametrize("name,rate,channels,subtype", STREAMED_FILES, ids=[f[0] for f in STREAMED_FILES])
def test_a_streamed_file_gives_load_audios_samples_trim_and_gain(tmp_path, real_mirror, small_blocks, name, rate,
                                                                  channels, subtype):
    y = speech_with_silent_edges(real_mirror, rate)
    path = tmp_path / name
    sf.write(path, np.stack([y, 0.5 * np.roll(y, 11)], axis=1) if channels == 2 else y, rate, subtype=subtype)

    samples, source_rate = decode(path)
    np.testing.assert_array_equal(streamed(path), resample(to_mono(samples), source_rate, 16000))
    for mode, trim in MODES:
        assert_stream_reproduces_load_audio(path, mode, trim)


# (signal at 48 kHz, audio params that differ from AUDIO)
EDGE_CASES = {
    "tone_with_silent_edges": (np.concatenate([np.zeros(24000), tone(48000, 2.0, amplitude=0.2), np.zeros(9000)]),
                               {}),
    "digital_silence": (np.zeros(48000 * 3), {}),
    "silence_then_one_sample": (np.concatenate([np.zeros(48000 * 3), [0.0, 0.3]]), {}),  # past the last full frame
    "shorter_than_a_frame": (tone(48000, 0.01), {}),
    # A 0.5 ms click louder than the tone yet trimmed off (at 6 dB): the gain must come from the peak
    # of the samples kept, not of the whole file.
    "a_click_in_the_trimmed_edge": (np.concatenate([np.full(24, 0.15), np.zeros(4800),
                                                    tone(48000, 1.0, amplitude=0.1)]), {"trim_top_db": 6}),
    "a_click_in_the_trimmed_tail": (np.concatenate([tone(48000, 1.0, amplitude=0.1), np.zeros(2400),
                                                    np.full(24, 0.15), np.zeros(4800)]), {"trim_top_db": 6}),
}


@pytest.mark.parametrize("block_frames", [4099, audio_module.STREAM_BLOCK_FRAMES])
@pytest.mark.parametrize("case", list(EDGE_CASES))
@pytest.mark.parametrize("mode,trim", MODES)
def test_streamed_trim_and_gain_on_edge_cases(tmp_path, monkeypatch, case, mode, trim, block_frames):
    monkeypatch.setattr(audio_module, "STREAM_BLOCK_FRAMES", block_frames)
    signal, overrides = EDGE_CASES[case]
    path = tmp_path / f"{case}.wav"
    sf.write(path, signal.astype(np.float32), 48000, subtype="FLOAT")
    assert_stream_reproduces_load_audio(path, mode, trim, **overrides)


def test_an_mp3_is_read_in_one_go_because_block_reads_lose_samples(tmp_path, small_blocks):
    rate = 44100
    t = np.arange(12 * rate) / rate
    y = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t)))).astype(np.float32)
    path = tmp_path / "talk.mp3"
    sf.write(path, np.stack([y, 0.5 * y], axis=1), rate, format="MP3", subtype="MPEG_LAYER_III")
    assert audio_module.streamable_frames(path) is None  # ser predict decodes it whole
    np.testing.assert_array_equal(streamed(path), load_audio(path, AUDIO))


def test_cut_ranges_gives_every_range_whatever_the_block_sizes():
    rng = np.random.default_rng(3)
    y = rng.standard_normal(50_003).astype(np.float32)
    edges = np.cumsum(rng.integers(1, 3000, size=200))
    blocks = np.split(y, edges[edges < y.size])
    ranges = [(start, start + 3000) for start in range(0, y.size - 3000, 1499)] + [(47_000, 50_003)]

    pieces = list(cut_ranges(iter(blocks), ranges, "x.wav"))

    assert len(pieces) == len(ranges)
    for (start, end), piece in zip(ranges, pieces):
        np.testing.assert_array_equal(piece, y[start:end])
    with pytest.raises(AudioError, match=r"x\.wav: the audio ended at sample 50003"):
        list(cut_ranges(iter(blocks), [(0, 10), (49_000, 50_004)], "x.wav"))


@pytest.mark.parametrize("content,problem", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"RIFF....WAVEfmt this is not audio at all" * 10, "cannot decode"),
    ("nan", "NaN or infinity"),
])
def test_a_bad_file_streamed_is_the_same_audio_error_as_loaded(tmp_path, content, problem):
    path = tmp_path / "broken.wav"
    if content == "nan":
        sf.write(path, np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), 16000, subtype="FLOAT")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=problem) as loaded:
        load_audio(path, AUDIO)
    with pytest.raises(AudioError, match=problem) as streamed_error:
        stream_extent(path, AUDIO)
    assert str(streamed_error.value) == str(loaded.value) and str(path) in str(streamed_error.value)
