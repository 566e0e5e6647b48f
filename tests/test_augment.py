"""Augmentation: deterministic per (seed, clip, copy), keeps labels, lengths and provenance,
writes the features layout, disables cleanly, and can never put a copy on another side of a
split from its source."""

from __future__ import annotations

import os

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy.signal import lfilter

from ser.training import splits
from ser.data.augment import (INDEX_COLUMNS, AugmentJob, augment_signal, augmented_signal, compute_augmented,
                         copy_seed, load_index)
from ser.runtime import make_executor
from ser.features import functional_names, load_failures, load_sequences, load_table, n_frames
from tests.params_support import REPO, params as project_params, section

SR = 16000
AUDIO = {"sample_rate": SR, "trim_silence": True, "trim_top_db": 40, "normalize": "peak",
         "peak_level": 0.95, "loudness_lufs": -23.0, "max_seconds": 3.0}
FEATURES = section("features", sets=["functionals", "sequences"], n_mfcc=20, n_mels=32, n_fbank=26,
                   n_fft=512, win_length=400, hop_length=160, contrast_fmin=100.0,
                   contrast_bands=6, cache_dir=None, executor="serial", workers=1)
AUGMENT = {"copies": 2, "seed": 42, "noise": {"p": 0.5, "min_snr_db": 10.0, "max_snr_db": 30.0},
           "shift": {"p": 0.5, "max_fraction": 0.15, "rollover": False},
           "pitch": {"p": 0.4, "min_semitones": -2.0, "max_semitones": 2.0},
           "stretch": {"p": 0.4, "min_rate": 0.9, "max_rate": 1.1, "leave_length_unchanged": False}}
ONLY = {**AUGMENT, **{name: {**AUGMENT[name], "p": 0.0} for name in ("noise", "shift", "pitch", "stretch")}}


def vowel(seconds: float, f0: float = 130.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    source = np.diff(np.floor(np.arange(n) * f0 / SR), prepend=0.0) + 0.002 * rng.standard_normal(n)
    r, theta = np.exp(-np.pi * 100 / SR), 2 * np.pi * 700 / SR
    y = lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
    return (0.8 * y / np.max(np.abs(y))).astype(np.float32)


def corpus(folder: Path, speakers: int = 6, clips_per_speaker: int = 2) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(speakers):
        for c in range(clips_per_speaker):
            y = vowel(0.8 + 0.1 * c, f0=100 + 15 * s + 5 * c, seed=10 * s + c)
            path = folder / f"s{s}_c{c}.wav"
            sf.write(path, y, SR)
            rows.append({
                "utterance_id": f"toy_s{s}_c{c}", "corpus": "toy", "path": str(path),
                "speaker": f"toy_{s}", "gender": ("female", "male")[s % 2],
                "emotion": ("happy", "sad", "angry")[(s + c) % 3], "emotion_raw": "x", "intensity": "normal",
                "statement": "toy", "language": "en", "sample_rate": SR, "channels": 1, "duration_s": y.size / SR,
                "pcm_sha256": hashlib.sha256(y.tobytes()).hexdigest(), "duplicate_of": None,
                "status": "ok", "problem": None})
    return pd.DataFrame(rows)


def run(metadata, out, augment=AUGMENT, **kwargs):
    return compute_augmented(metadata, out, AUDIO, FEATURES, augment, executor=make_executor("serial"),
                             progress=False, **{"root": REPO, **kwargs})


def test_same_seed_same_output_other_seed_other_output():
    y = vowel(1.0)
    a = augment_signal(y, SR, AUGMENT, seed=7)
    b = augment_signal(y, SR, AUGMENT, seed=7)
    np.testing.assert_array_equal(a, b)
    outputs = {augment_signal(y, SR, AUGMENT, seed=s).tobytes() for s in range(6)}
    assert len(outputs) > 1


def test_copy_seed_depends_on_seed_clip_and_copy_only():
    import subprocess
    import sys

    assert len({copy_seed(42, "a", 0), copy_seed(42, "a", 1), copy_seed(42, "b", 0), copy_seed(43, "a", 0)}) == 4
    # The same in every process: not Python's salted hash(), which changes with PYTHONHASHSEED.
    code = "from ser.data.augment import copy_seed; print(copy_seed(42, 'a', 1))"
    for salt in ("1", "2"):
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": salt})
        assert int(other.stdout) == copy_seed(42, "a", 1)


def test_a_copy_is_the_same_whatever_ran_before_it_in_the_process(tmp_path):
    metadata = corpus(tmp_path / "audio", speakers=1)
    jobs = [AugmentJob("k", row.path, ("functionals",), row.utterance_id, copy, AUDIO, FEATURES, AUGMENT)
            for row in metadata.itertuples() for copy in range(2)]
    forward = [augmented_signal(job) for job in jobs]
    backward = [augmented_signal(job) for job in reversed(jobs)][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)


def test_noise_respects_the_snr_range():
    y = vowel(1.0)
    params = {**ONLY, "noise": {"p": 1.0, "min_snr_db": 20.0, "max_snr_db": 20.0}}
    noisy = augment_signal(y, SR, params, seed=3)
    snr = 10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum((noisy - y).astype(np.float64) ** 2))
    assert snr == pytest.approx(20.0, abs=0.5)


def test_length_rules_shift_keeps_length_stretch_changes_it_within_its_rate_range():
    y = vowel(1.0)
    shifted = augment_signal(y, SR, {**ONLY, "shift": {"p": 1.0, "max_fraction": 0.15, "rollover": False}}, seed=1)
    assert shifted.size == y.size
    for seed in range(4):
        stretched = augment_signal(y, SR, {**ONLY, "stretch": {"p": 1.0, "min_rate": 0.9, "max_rate": 1.1,
                                                               "leave_length_unchanged": False}}, seed=seed)
        assert y.size / 1.1 - 200 <= stretched.size <= y.size / 0.9 + 200
    kept = augment_signal(y, SR, {**ONLY, "stretch": {"p": 1.0, "min_rate": 0.9, "max_rate": 1.1,
                                                      "leave_length_unchanged": True}}, seed=1)
    assert kept.size == y.size


def test_stage_outputs_keep_labels_provenance_and_the_features_layout(tmp_path):
    metadata = corpus(tmp_path / "audio")
    out = tmp_path / "augmented"
    summary = run(metadata, out)
    index = load_index(out)
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert len(index) == 2 * len(metadata) == summary["clips"]
    expected_ids = sorted(f"{u}__aug{k}" for u in metadata["utterance_id"] for k in range(2))
    assert sorted(index["utterance_id"]) == expected_ids
    source = metadata.set_index("utterance_id")
    for column in ("speaker", "corpus", "emotion", "gender"):
        assert (index[column].to_numpy() == source.loc[index["source_utterance_id"], column].to_numpy()).all()
    assert (index["utterance_id"] == index["source_utterance_id"] + "__aug" + index["copy"].astype(str)).all()

    functionals = load_table(out, "functionals")
    assert sorted(functionals.index) == expected_ids
    assert functionals.columns.tolist() == functional_names(FEATURES)
    ids, mfcc = load_sequences(out, "mfcc")
    assert sorted(ids) == expected_ids and mfcc.shape == (len(ids), n_frames(AUDIO, FEATURES), 20)
    assert load_failures(out).empty
    # copies differ from each other: augmentation did something
    assert not np.allclose(functionals.loc["toy_s0_c0__aug0"], functionals.loc["toy_s0_c0__aug1"])


def test_stage_is_deterministic_and_cached(tmp_path):
    metadata = corpus(tmp_path / "audio", speakers=2)
    first = run(metadata, tmp_path / "a", cache_dir=tmp_path / "cache")
    fresh = run(metadata, tmp_path / "b")  # no cache: recomputed from scratch
    pd.testing.assert_frame_equal(load_table(tmp_path / "a", "functionals"), load_table(tmp_path / "b", "functionals"))
    again = run(metadata, tmp_path / "a", cache_dir=tmp_path / "cache")
    assert first["computed"] == fresh["computed"] == 8 and again["computed"] == 0
    # one more copy per clip computes only the new copies
    more = run(metadata, tmp_path / "a", {**AUGMENT, "copies": 3}, cache_dir=tmp_path / "cache")
    assert more["computed"] == 4 and more["clips"] == 12


def test_zero_copies_writes_empty_but_valid_outputs(tmp_path):
    metadata = corpus(tmp_path / "audio", speakers=2)
    out = tmp_path / "augmented"
    summary = run(metadata, out, {**AUGMENT, "copies": 0})
    assert summary["clips"] == 0 and summary["copies"] == 0
    index = load_index(out)
    assert index.empty and list(index.columns) == list(INDEX_COLUMNS)
    functionals = load_table(out, "functionals")
    assert functionals.empty and functionals.columns.tolist() == functional_names(FEATURES)
    ids, logmel = load_sequences(out, "logmel")
    assert ids == [] and logmel.shape == (0, n_frames(AUDIO, FEATURES), 32)
    assert load_failures(out).empty


def test_broken_source_is_quarantined_not_fatal(tmp_path):
    metadata = corpus(tmp_path / "audio", speakers=1)
    broken = tmp_path / "audio" / "broken.wav"
    broken.write_bytes(b"not audio" * 50)
    bad = metadata.iloc[[0]].assign(utterance_id="toy_broken", path=str(broken), pcm_sha256="0" * 64)
    summary = run(pd.concat([metadata, bad], ignore_index=True), tmp_path / "augmented")
    failures = load_failures(tmp_path / "augmented")
    assert sorted(failures["utterance_id"]) == ["toy_broken__aug0", "toy_broken__aug1"]
    assert failures["problem"].str.contains("broken.wav").all()
    assert summary["clips"] == 4 and "toy_broken" not in set(load_index(tmp_path / "augmented")["source_utterance_id"])


@pytest.mark.parametrize("protocol", ["speaker_kfold", "random"])
def test_no_copy_can_land_in_another_split_than_its_source(tmp_path, protocol):
    metadata = corpus(tmp_path / "audio", speakers=6, clips_per_speaker=2)
    out = tmp_path / "augmented"
    run(metadata, out, {**AUGMENT, "copies": 1})
    index = load_index(out)
    folds = splits.assign_folds(metadata, protocol=protocol, n_folds=3, seed=0)
    copies = splits.augmented_folds(folds, index)
    assert len(copies) == len(index)
    source_fold = folds.loc[copies["source_utterance_id"], "fold"].to_numpy()
    assert (copies["fold"].to_numpy() == source_fold).all()
    for test_fold in range(3):
        training_copies = copies.index[splits.training_mask(copies, test_fold)]
        sources = index.set_index("utterance_id").loc[training_copies, "source_utterance_id"]
        assert not folds.loc[sources, "fold"].eq(test_fold).any()
        if protocol == "random":
            continue  # speaker-dependent by design: only the copy-follows-source rule applies
        test_speakers = set(metadata.set_index("utterance_id").loc[folds.index[folds["fold"] == test_fold], "speaker"])
        assert not set(index.set_index("utterance_id").loc[training_copies, "speaker"]) & test_speakers


@pytest.mark.slow
def test_augment_stage_script_end_to_end(tmp_path):
    import subprocess
    import sys

    import yaml

    metadata = corpus(tmp_path / "audio", speakers=2, clips_per_speaker=1)
    metadata.to_parquet(tmp_path / "metadata.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(project_params(
        audio=AUDIO, features={**FEATURES, "sets": ["functionals"], "cache_dir": None},
        augment={**AUGMENT, "copies": 1})))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "augment.py"),
                             "--metadata", str(tmp_path / "metadata.parquet"), "--out", str(tmp_path / "out"),
                             "--params", str(tmp_path / "params.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 copies" in result.stdout
    assert sorted(load_index(tmp_path / "out")["utterance_id"]) == ["toy_s0_c0__aug0", "toy_s1_c0__aug0"]
