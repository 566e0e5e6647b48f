"""Features: known signals give known descriptor values; the stage machinery (cache, executor,
quarantine, streamed outputs) computes exactly what it must and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import opensmile
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import lfilter

from ser.runtime import make_executor
from ser.features import (EGEMAPS_NAMES, compute_features, extract, extract_clip, functional_names,
                          load_failures, load_sequences, load_table, n_frames)
from ser.features.cache import FeatureCache
from tests.params_support import REPO, params as project_params, section

SR = 16000
AUDIO = {"sample_rate": SR, "trim_silence": True, "trim_top_db": 40, "normalize": "peak",
         "peak_level": 0.95, "loudness_lufs": -23.0, "max_seconds": 3.0}
# The library types a features section whole: params.yaml's completes what these tests leave out (whisper).
FEATURES = {**section("features"), "sets": ["functionals", "egemaps", "sequences"], "n_mfcc": 40, "n_mels": 64, "n_fbank": 40,
            "n_fft": 512, "win_length": 400, "hop_length": 160, "contrast_fmin": 100.0,
            "contrast_bands": 6, "cache_dir": None, "executor": "serial", "workers": 1}


def tone(seconds: float, frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def vowel(seconds: float = 1.5, f0: tuple[float, float] = (110.0, 170.0), seed: int = 0) -> np.ndarray:
    """A crude voiced utterance: a glottal pulse train with a gliding F0 through three formant
    resonators, with a syllable-rate envelope; enough for openSMILE to find voicing."""
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    pitch = np.linspace(*f0, n)
    phase = np.cumsum(pitch) / SR
    source = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    signal = source + 0.002 * rng.standard_normal(n)
    for formant, bandwidth in ((700, 110), (1220, 120), (2600, 160)):
        r = np.exp(-np.pi * bandwidth / SR)
        theta = 2 * np.pi * formant / SR
        signal = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], signal)
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / SR)
    signal = signal * envelope
    return (0.8 * signal / np.max(np.abs(signal))).astype(np.float32)


def named(y: np.ndarray, params: dict = FEATURES) -> dict[str, float]:
    values = extract(y, AUDIO, params, ["functionals"])["functionals"]
    return dict(zip(functional_names(params), values))


# ---- known signals -------------------------------------------------------------------------

def test_sine_440_has_chroma_peaked_at_a_and_steady_zcr_near_880_per_second():
    f = named(tone(2.0))
    chroma = [f[f"chroma_{i:02d}_mean"] for i in range(12)]
    assert int(np.argmax(chroma)) == 9  # C, C#, D, ..., A is the 10th pitch class
    assert f["zcr_mean"] * SR == pytest.approx(880, rel=0.03)
    assert f["zcr_std"] * SR < 0.1 * 880  # steady apart from the padded edge frames


def test_white_noise_is_flat_and_a_sine_is_not():
    noise = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.1
    assert named(noise)["flatness_mean"] > 0.3
    assert named(tone(2.0))["flatness_mean"] < 0.01
    assert named(noise)["spectral_entropy_mean"] > named(tone(2.0))["spectral_entropy_mean"] + 0.3


def test_silence_has_zero_rms_and_finite_functionals():
    f = named(np.zeros(2 * SR, dtype=np.float32))
    assert f["rms_mean"] == 0.0 and f["rms_std"] == 0.0
    assert f["zcr_mean"] == 0.0
    assert all(np.isfinite(v) for v in f.values())


# Click periods that do not divide the 10 ms hop, so the 25 ms frames see every phase of the
# train and count its crossings without aliasing.
@pytest.mark.parametrize("period", [130, 290])
def test_click_train_zcr_follows_the_click_rate(period):
    y = np.zeros(2 * SR, dtype=np.float32)
    y[::period] = 0.9       # a bipolar click: up, then down, then back to zero:
    y[1::period] = -0.9     # two sign changes per click
    assert named(y)["zcr_mean"] * SR == pytest.approx(2 * SR / period, rel=0.05)


def test_centroid_follows_frequency_and_rms_follows_amplitude():
    low, high = named(tone(1.0, 300.0)), named(tone(1.0, 3000.0))
    assert low["centroid_mean"] < 600 < 2500 < high["centroid_mean"]
    quiet, loud = named(tone(1.0, amplitude=0.1)), named(tone(1.0, amplitude=0.4))
    assert loud["rms_mean"] == pytest.approx(4 * quiet["rms_mean"], rel=0.02)


@pytest.mark.parametrize("seconds", [0.05, 0.3, 3.0, 5.0])
def test_shapes_are_fixed_and_values_finite_for_any_length(seconds):
    out = extract(vowel(seconds), AUDIO, FEATURES, ["functionals", "sequences"])
    frames = n_frames(AUDIO, FEATURES)
    assert frames == 1 + 3 * SR // 160
    assert out["functionals"].shape == (len(functional_names(FEATURES)),)
    assert out["mfcc"].shape == (frames, 40)
    assert out["logmel"].shape == (frames, 64)
    assert out["fbank"].shape == (frames, 40)
    for value in out.values():
        assert value.dtype == np.float32 and np.all(np.isfinite(value))


def test_each_set_object_describes_what_it_extracts():
    """The registry's objects own their kinds, table columns and frame shapes: what extract gives."""
    from ser.features import FEATURE_SETS, FeatureSet
    from ser.params import AudioParams, FeatureParams, typed

    audio, features = typed(AudioParams, AUDIO), typed(FeatureParams, FEATURES)
    y = vowel(2.0)
    for name in ("functionals", "egemaps", "sequences"):
        feature_set = FEATURE_SETS[name]
        assert isinstance(feature_set, FeatureSet) and feature_set.name == name
        out = extract(y, AUDIO, FEATURES, [name])
        assert tuple(out) == feature_set.kinds
        if feature_set.table:
            assert len(feature_set.columns(features, out[name].size)) == out[name].size
        for kind, shape in feature_set.frame_shapes(audio, features).items():
            assert out[kind].shape == shape
    # the typed sections and their mappings give the same arrays
    typed_out = extract(y, audio, features, ["functionals", "sequences"])
    for kind, values in extract(y, AUDIO, FEATURES, ["functionals", "sequences"]).items():
        np.testing.assert_array_equal(typed_out[kind], values)


def test_functional_names_follow_params():
    names = functional_names(FEATURES)
    assert len(names) == len(set(names))
    assert {"mfcc_39_mean", "mfcc_delta_00_std", "mfcc_delta2_39_mean", "tonnetz_05_std",
            "contrast_06_mean", "chroma_deviation_mean", "energy_entropy_std", "flux_mean"} <= set(names)
    fewer = functional_names({**FEATURES, "n_mfcc": 13})
    assert len(names) - len(fewer) == (40 - 13) * 3 * 2
    assert extract(tone(1.0), AUDIO, {**FEATURES, "n_mfcc": 13}, ["functionals"])["functionals"].size == len(fewer)


def test_contrast_bands_beyond_nyquist_are_a_clear_error():
    with pytest.raises(ValueError, match="contrast"):
        extract(tone(0.5), AUDIO, {**FEATURES, "contrast_fmin": 200.0}, ["functionals"])


def test_sequences_use_the_fixed_length_signal():
    y = vowel(4.0)
    start = (y.size - 3 * SR) // 2
    whole = extract(y, AUDIO, FEATURES, ["sequences"])
    centre = extract(y[start:start + 3 * SR], AUDIO, FEATURES, ["sequences"])
    np.testing.assert_allclose(whole["mfcc"], centre["mfcc"], atol=1e-4)


def test_egemaps_gives_88_finite_values_named_as_opensmile_names_them():
    values = extract(vowel(2.0), AUDIO, FEATURES, ["egemaps"])["egemaps"]
    assert values.shape == (88,) and np.all(np.isfinite(values))
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    assert list(EGEMAPS_NAMES) == list(smile.feature_names)
    by_name = dict(zip(EGEMAPS_NAMES, values))
    # F0 of the synthetic vowel glides 110 -> 170 Hz: 24..31.5 semitones above 27.5 Hz
    assert 24 < by_name["F0semitoneFrom27.5Hz_sma3nz_amean"] < 31.5
    assert by_name["VoicedSegmentsPerSec"] > 0


def test_reused_opensmile_graph_gives_exactly_what_opensmile_gives():
    from concurrent.futures import ThreadPoolExecutor

    from ser.features.egemaps import egemaps

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    signals = [vowel(0.6 + 0.7 * i, f0=(90 + 25 * i, 150 + 25 * i), seed=i) for i in range(4)]
    expected = [smile.process_signal(y, SR).to_numpy(dtype=np.float32).reshape(-1) for y in signals]
    for order in (range(4), reversed(range(4))):  # the graph keeps no state from one clip to the next
        for i in order:
            np.testing.assert_array_equal(egemaps(signals[i], SR), expected[i])
    with pytest.raises(ValueError, match="eGeMAPS undefined"):
        egemaps(np.zeros(80, dtype=np.float32), SR)  # 5 ms: no frame at all
    np.testing.assert_array_equal(egemaps(signals[0], SR), expected[0])  # and it recovers
    with ThreadPoolExecutor(2) as pool:  # one graph per thread: safe for a threaded server
        for values, reference in zip(pool.map(lambda y: egemaps(y, SR), signals * 2), expected * 2):
            np.testing.assert_array_equal(values, reference)


def test_extract_clip_is_load_audio_then_extract(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, np.concatenate([np.zeros(SR // 2), vowel(1.0), np.zeros(SR // 2)]), SR)
    direct = extract_clip(path, AUDIO, FEATURES, ["functionals"])
    from ser.audio import load_audio
    np.testing.assert_array_equal(direct["functionals"],
                                  extract(load_audio(path, AUDIO), AUDIO, FEATURES, ["functionals"])["functionals"])


# ---- the stage machinery -------------------------------------------------------------------

def write_corpus(folder: Path, count: int = 5) -> pd.DataFrame:
    """Small clips (varied rates and channels) plus a metadata table as harmonize writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    emotions = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    for i in range(count):
        rate = (16000, 48000, 22050)[i % 3]
        y = vowel(1.0 + 0.25 * i, f0=(100 + 10 * i, 160 + 10 * i), seed=i)
        y = np.concatenate([np.zeros(SR // 4, dtype=np.float32), y])
        from ser.audio import resample
        y = resample(y, SR, rate)
        data = np.stack([y, 0.5 * y], axis=1) if i % 2 else y
        path = folder / f"clip{i}.flac"
        sf.write(path, data, rate)
        rows.append(clip_row(f"toy_clip{i}", path, f"toy_{i % 3}", emotions[i % 6], rate, data))
    return pd.DataFrame(rows)


def clip_row(utterance_id: str, path: Path, speaker: str, emotion: str, rate: int = SR,
             data: np.ndarray | None = None, status: str = "ok", problem: str | None = None) -> dict:
    import hashlib
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes() if data is not None
                            else utterance_id.encode()).hexdigest()
    return {"utterance_id": utterance_id, "corpus": "toy", "path": str(path), "speaker": speaker,
            "gender": "female" if speaker.endswith(("0", "2")) else "male", "emotion": emotion,
            "emotion_raw": emotion, "intensity": "normal", "statement": "toy", "language": "en",
            "sample_rate": rate, "channels": 1, "duration_s": 1.0, "pcm_sha256": digest,
            "duplicate_of": None, "status": status, "problem": problem}


@pytest.fixture()
def corpus(tmp_path) -> pd.DataFrame:
    metadata = write_corpus(tmp_path / "audio")
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    quarantined = tmp_path / "audio" / "quarantined.wav"
    sf.write(quarantined, np.zeros(100, dtype=np.float32), SR)
    extra = [clip_row("toy_broken", broken, "toy_0", "sad"),
             clip_row("toy_quarantined", quarantined, "toy_1", "sad", status="quarantined",
                      problem="too short")]
    return pd.concat([metadata, pd.DataFrame(extra)], ignore_index=True)


def run(metadata, out, cache, **overrides):
    return compute_features(metadata, out, AUDIO, {**FEATURES, **overrides}, root=REPO, cache_dir=cache,
                            executor=make_executor("serial"), progress=False)


def test_stage_writes_every_set_quarantines_failures_and_skips_bad_status(tmp_path, corpus):
    out = tmp_path / "features"
    summary = run(corpus, out, tmp_path / "cache")
    good = sorted(f"toy_clip{i}" for i in range(5))

    functionals = load_table(out, "functionals")
    assert functionals.index.tolist() == good
    assert functionals.columns.tolist() == functional_names(FEATURES)
    assert (functionals.dtypes == np.float32).all() and np.isfinite(functionals.to_numpy()).all()
    egemaps = load_table(out, "egemaps")
    assert egemaps.index.tolist() == good and egemaps.shape[1] == 88
    for kind, dim in (("logmel", 64), ("mfcc", 40), ("fbank", 40)):
        ids, array = load_sequences(out, kind)
        assert ids == good and array.shape == (5, 301, dim) and array.dtype == np.float32

    failures = load_failures(out)
    assert failures["utterance_id"].tolist() == ["toy_broken"]
    assert "broken.wav" in failures["problem"].iloc[0] and "decode" in failures["problem"].iloc[0]
    assert summary["failed"] == 1 and summary["clips"] == 5
    # quarantined metadata rows are neither processed nor reported as feature failures
    assert "toy_quarantined" not in set(failures["utterance_id"]) | set(functionals.index)

    # what the stage stored is what extract_clip gives one clip (one code path)
    row = corpus.set_index("utterance_id").loc["toy_clip3"]
    single = extract_clip(row["path"], AUDIO, FEATURES)
    np.testing.assert_allclose(functionals.loc["toy_clip3"].to_numpy(), single["functionals"], rtol=1e-6)
    np.testing.assert_allclose(load_sequences(out, "mfcc")[1][3], single["mfcc"], rtol=1e-6)


def test_failure_is_reported_with_a_warning(tmp_path, corpus, capsys):
    run(corpus, tmp_path / "features", None)
    captured = capsys.readouterr()
    assert "toy_broken" in load_failures(tmp_path / "features")["utterance_id"].tolist()
    assert "broken.wav" in captured.out + captured.err and "warning" in captured.out + captured.err


def test_cache_recomputes_only_what_params_or_new_clips_require(tmp_path, corpus):
    cache, out = tmp_path / "cache", tmp_path / "features"
    first = run(corpus, out, cache)
    assert first["computed_per_set"] == {"functionals": 5, "egemaps": 5, "sequences": 5}
    before = {name: load_table(out, name) for name in ("functionals", "egemaps")}

    again = run(corpus, out, cache)
    assert again["computed"] == 0 and again["from_cache"] == 5
    assert again["computed_per_set"] == {"functionals": 0, "egemaps": 0, "sequences": 0}
    for name, table in before.items():
        pd.testing.assert_frame_equal(load_table(out, name), table)

    # n_mfcc shapes functionals and sequences, not eGeMAPS
    changed = run(corpus, out, cache, n_mfcc=20)
    assert changed["computed_per_set"] == {"functionals": 5, "egemaps": 0, "sequences": 5}
    assert load_sequences(out, "mfcc")[1].shape == (5, 301, 20)
    pd.testing.assert_frame_equal(load_table(out, "egemaps"), before["egemaps"])

    # max_seconds shapes sequences only
    longer = compute_features(corpus, out, {**AUDIO, "max_seconds": 2.0}, FEATURES, root=REPO, cache_dir=cache,
                              executor=make_executor("serial"), progress=False)
    assert longer["computed_per_set"] == {"functionals": 0, "egemaps": 0, "sequences": 5}

    # one new clip: only it is computed
    new_path = tmp_path / "audio" / "new.wav"
    y = vowel(1.2, seed=99)
    sf.write(new_path, y, SR)
    grown = pd.concat([corpus, pd.DataFrame([clip_row("toy_new", new_path, "toy_9", "calm", data=y)])],
                      ignore_index=True)
    added = run(grown, out, cache)
    assert added["computed_per_set"] == {"functionals": 1, "egemaps": 1, "sequences": 1}
    assert "toy_new" in load_table(out, "functionals").index

    with FeatureCache(cache) as store:
        assert len(store.present("egemaps", first["params_hash"]["egemaps"])) == 6


def test_sets_select_outputs_and_no_cache_dir_still_works(tmp_path, corpus):
    out = tmp_path / "features"
    summary = run(corpus, out, None, sets=["functionals"])
    assert summary["sets"] == ["functionals"]
    assert (out / "functionals.parquet").is_file()
    assert not (out / "egemaps.parquet").exists() and not (out / "sequences").exists()
    with pytest.raises(FileNotFoundError, match="egemaps"):
        load_table(out, "egemaps")
    with pytest.raises(ValueError, match=r"features\.sets\.1: .*'whisper' \(got 'wav2vec'\)"):  # the schema names it
        run(corpus, out, None, sets=["functionals", "wav2vec"])


@pytest.mark.slow
def test_features_stage_script_end_to_end(tmp_path, corpus):
    metadata_path = tmp_path / "metadata.parquet"
    corpus.to_parquet(metadata_path)
    params = tmp_path / "params.yaml"
    import yaml
    params.write_text(yaml.safe_dump(project_params(audio=AUDIO, features={
        **FEATURES, "sets": ["functionals", "egemaps"], "cache_dir": str(tmp_path / "cache")})))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "features.py"),
                             "--metadata", str(metadata_path), "--out", str(tmp_path / "out"),
                             "--params", str(params)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "5 clips" in result.stdout and "1 failed" in result.stdout
    assert load_table(tmp_path / "out", "egemaps").shape == (5, 88)


@pytest.mark.mirror
@pytest.mark.slow
def test_real_clips_including_the_odd_ones_go_through_the_stage(tmp_path, real_mirror):
    import hashlib

    from ser.audio import decode

    root = real_mirror
    relative = ["ravdess/Actor_01/03-01-02-01-01-02-01.flac", "ravdess/Actor_02/03-01-05-02-01-01-02.flac",
                "tess/OAF_food_fear.wav", "tess/YAF_germ_angry.wav", "tess/YAF_neat_fear.wav",
                "tess/OAF_back_happy.flac"]
    rows = []
    for i, name in enumerate(relative):
        samples, rate = decode(root / name)
        row = clip_row(f"real_{i}", root / name, f"real_{i}", "happy", rate)
        row["pcm_sha256"] = hashlib.sha256(samples.tobytes()).hexdigest()
        rows.append(row)
    summary = run(pd.DataFrame(rows), tmp_path / "features", None)
    assert summary["failed"] == 0 and summary["clips"] == len(relative)
    assert np.isfinite(load_table(tmp_path / "features", "egemaps").to_numpy()).all()
    assert load_sequences(tmp_path / "features", "fbank")[1].shape == (len(relative), 301, 40)

