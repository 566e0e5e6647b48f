"""The model registry and ModelBundle: every family trains on a tiny generated feature set,
predicts the right shapes, and survives save/load; a bundle goes from signals to probabilities
through the real feature code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ser.models import (KERAS_TYPES, MODEL_TYPES, MODELS, SKLEARN_TYPES, ModelBundle, load_estimator,
                        resolve_feature_input)
from ser.params import AudioParams, FeatureParams, ParamsError, params_class
from tests.params_support import PARAMS, model_params, section

# params.yaml's block of each type, shrunk so that every family trains in seconds.
TINY = {"epochs": 3, "batch_size": 16, "filters": [4, 8], "units": [8], "dense_units": 8, "patience": 2,
        "max_iter": 8, "n_estimators": 15, "hidden_layer_sizes": [16]}


def tiny(model_type: str, **extra) -> dict:
    """The type's block with the TINY sizes it has (a block holds only its own keys)."""
    own = {key: value for key, value in TINY.items() if key in params_class(model_type).model_fields}
    if model_type == "clstm":  # one LSTM after the convolutions: a width, not a list
        own["units"] = TINY["units"][0]
    return model_params(model_type, **{**own, **extra})
N_CLASSES = 3


def separable_rows(shape: tuple[int, ...], per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(N_CLASSES), per_class)
    X = rng.normal(size=(len(y), *shape)).astype(np.float32)
    X += (y * 2.0).reshape(-1, *([1] * len(shape))).astype(np.float32)
    return X, y


def input_shape_for(model_type: str) -> tuple[int, ...]:
    return (24, 6) if model_type in KERAS_TYPES else (10,)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_trains_predicts_and_round_trips(model_type, tmp_path):
    shape = input_shape_for(model_type)
    X, y = separable_rows(shape)
    estimator = MODELS[model_type](tiny(model_type), shape, N_CLASSES, 7)
    history = estimator.fit(X, y, X[::4], y[::4], sample_weight=np.where(y == 1, 2.0, 1.0))
    probabilities = estimator.predict_proba(X[:9])
    assert probabilities.shape == (9, N_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    if model_type in KERAS_TYPES or model_type == "mlp":
        assert {"loss", "val_loss"} <= set(history) and 1 <= len(history["loss"]) <= TINY["max_iter"]
    else:
        assert history == {}
    estimator.save(tmp_path / "estimator")
    saved = json.loads((tmp_path / "estimator" / "estimator.json").read_text())
    assert saved["params"] == tiny(model_type)  # the block as params.yaml writes it
    again = load_estimator(model_type, tmp_path / "estimator")
    assert isinstance(again.params, params_class(model_type)) and again.params == estimator.params
    np.testing.assert_allclose(again.predict_proba(X[:9]), probabilities, atol=1e-5)


def test_a_block_is_typed_once_with_its_family_class():
    block = model_params("svm")
    estimator = MODELS["svm"](block, (10,), N_CLASSES, 0)
    assert isinstance(estimator.params, params_class("svm")) and estimator.params.as_dict() == block
    assert MODELS["svm"](estimator.params, (10,), N_CLASSES, 0).params is estimator.params
    with pytest.raises(ParamsError, match=r"model\.svm\.gama: unknown key"):
        MODELS["svm"](model_params("svm", gama=0.1), (10,), N_CLASSES, 0)
    with pytest.raises(ParamsError, match=r"model\.lstm\.units"):
        MODELS["lstm"](model_params("lstm", units="wide"), (20, 5), N_CLASSES, 0)


@pytest.mark.parametrize("model_type", SKLEARN_TYPES)
def test_every_sklearn_family_learns_a_separable_problem(model_type):
    X, y = separable_rows((10,), per_class=30)
    X_test, y_test = separable_rows((10,), per_class=10, seed=1)
    iterations = {"max_iter": 50} if "max_iter" in params_class(model_type).model_fields else {}
    estimator = MODELS[model_type](tiny(model_type, **iterations), (10,), N_CLASSES, 0)
    estimator.fit(X, y)
    accuracy = np.mean(estimator.predict_proba(X_test).argmax(axis=1) == y_test)
    assert accuracy > 0.8  # chance is 1/3; a single tree's axis-aligned cuts reach about 0.87 here


def test_std_weight_scales_only_the_pooled_std_columns_after_standardization():
    from ser.models.sklearn_models import std_column_weights

    names = ["whisper_l1_mean_0000", "whisper_l1_std_0000", "mfcc_00_std", "mfcc_00_mean", "stdev_like", "f_std"]
    assert std_column_weights(names, 0.5).tolist() == [1.0, 0.5, 0.5, 1.0, 1.0, 0.5]
    assert std_column_weights(names, 1.0) is None and std_column_weights(None, 0.5) is None
    # Two identical informative columns, one named as a std: under the L2 penalty the model uses
    # the weighted one a quarter as much (its coefficient is half, on a column scaled by half).
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    signal = (y + rng.normal(scale=0.8, size=y.size)).astype(np.float32)
    X = np.stack([signal, signal], axis=1)
    estimator = MODELS["logreg"](model_params("logreg", C=0.01, std_weight=0.5), (2,), 2, 0,
                                 feature_names=["a_mean", "a_std"])
    estimator.fit(X, y)
    coef = estimator.pipeline.named_steps["model"].coef_[0]
    assert abs(coef[1] * 0.5) == pytest.approx(abs(coef[0]) * 0.25, rel=1e-3)
    with pytest.raises(ValueError, match="3 feature names for 2 columns"):
        MODELS["logreg"](model_params("logreg"), (2,), 2, 0, feature_names=["a", "b", "c"])


def test_embedding_norm_standardizes_each_pooled_encoder_vector_within_the_clip_before_the_scaler():
    from ser.models.sklearn_models import embedding_groups

    names = [f"whisper_l{d}_{stat}_{i:04d}" for d in (2, 5) for stat in ("mean", "std") for i in range(4)]
    names += ["mfcc_00_mean", "mfcc_00_std"]
    groups = embedding_groups(names)
    assert groups.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert embedding_groups(["mfcc_00_mean", "rms_std"]) is None and embedding_groups(None) is None
    with pytest.raises(ValueError, match=r"different widths \[1, 2\]"):
        embedding_groups(["whisper_l1_mean_0000", "whisper_l1_mean_0001", "whisper_l1_std_0000"])

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, len(names))).astype(np.float32)
    estimator = MODELS["logreg"](model_params("logreg", embedding_norm=True), (len(names),), 2, 0, feature_names=names)
    normalized = estimator.pipeline.named_steps["normalize_embeddings"].transform(X)
    for row in range(len(X)):
        for start in range(0, 16, 4):
            vector = X[row, start:start + 4].astype(np.float64)
            expected = (vector - vector.mean()) / vector.std()
            np.testing.assert_allclose(normalized[row, start:start + 4], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(normalized[:, 16:], X[:, 16:])  # not an encoder vector: untouched
    # A clip recorded louder or through another channel (an offset and gain on a whole vector)
    # looks the same to the classifier.
    shifted = X.copy()
    shifted[:, 4:8] = 3.0 * shifted[:, 4:8] + 2.0
    np.testing.assert_allclose(estimator.pipeline.named_steps["normalize_embeddings"].transform(shifted),
                               normalized, atol=1e-4)
    assert list(estimator.pipeline.named_steps)[:2] == ["normalize_embeddings", "scale"]
    plain = MODELS["logreg"](model_params("logreg", embedding_norm=False), (len(names),), 2, 0, feature_names=names)
    assert "normalize_embeddings" not in plain.pipeline.named_steps


def test_svm_probabilities_come_from_calibration_folds_platt_scaling():
    X, y = separable_rows((10,), per_class=30)
    X_test, y_test = separable_rows((10,), per_class=10, seed=1)
    probabilities = {}
    for folds in (2, 5):
        estimator = MODELS["svm"](tiny("svm", calibration_folds=folds), (10,), N_CLASSES, 0)
        estimator.fit(X, y)
        assert estimator.pipeline.named_steps["model"].cv == folds
        probabilities[folds] = estimator.predict_proba(X_test)
        assert np.mean(probabilities[folds].argmax(axis=1) == y_test) > 0.9
        np.testing.assert_allclose(probabilities[folds].sum(axis=1), 1.0, atol=1e-9)
    # the sigmoid is fitted on other held-out decision values with 2 folds than with 5
    assert np.abs(probabilities[2] - probabilities[5]).max() > 1e-3


def test_a_class_missing_from_training_keeps_its_column():
    X, y = separable_rows((10,))
    keep = y != 1
    estimator = MODELS["decision_tree"](tiny("decision_tree"), (10,), N_CLASSES, 0)
    estimator.fit(X[keep], y[keep])
    probabilities = estimator.predict_proba(X)
    assert probabilities.shape == (len(X), N_CLASSES)
    assert np.all(probabilities[:, 1] == 0)


def test_same_seed_same_predictions():
    X, y = separable_rows((20, 5))
    first = MODELS["cnn1d"](tiny("cnn1d"), (20, 5), N_CLASSES, 3)
    first.fit(X, y, X[::3], y[::3])
    second = MODELS["cnn1d"](tiny("cnn1d"), (20, 5), N_CLASSES, 3)
    second.fit(X, y, X[::3], y[::3])
    np.testing.assert_allclose(first.predict_proba(X), second.predict_proba(X), atol=1e-6)


def test_wrong_input_shape_is_a_clear_error():
    estimator = MODELS["svm"](tiny("svm"), (10,), N_CLASSES, 0)
    with pytest.raises(ValueError, match=r"expected input \(n, 10\)"):
        estimator.fit(np.zeros((6, 4), np.float32), np.arange(6) % 3)
    with pytest.raises(ValueError, match="tabular input"):
        MODELS["svm"](tiny("svm"), (20, 4), N_CLASSES, 0)


def test_feature_input_resolution():
    assert set(PARAMS["model"]) - {"type", "features", "keras"} == set(MODEL_TYPES)
    for model_type in SKLEARN_TYPES:
        own = PARAMS["model"][model_type]
        assert resolve_feature_input(model_type, "auto", own) == own["input"]
        assert resolve_feature_input(model_type, "auto", model_params(model_type, input="whisper")) == "whisper"
        assert resolve_feature_input(model_type, "egemaps", own) == "egemaps"
        assert resolve_feature_input(model_type, "whisper+egemaps", own) == "whisper+egemaps"
        with pytest.raises(ValueError, match="scikit-learn"):
            resolve_feature_input(model_type, "whisper_frames", own)
        with pytest.raises(ValueError, match="tabular"):
            resolve_feature_input(model_type, "sequences", own)
    assert resolve_feature_input("cnn2d", "auto", model_params("cnn2d", input="logmel")) == "logmel"
    assert resolve_feature_input("lstm", "sequences", model_params("lstm", input="fbank")) == "fbank"
    assert resolve_feature_input("gru", "auto", PARAMS["model"]["gru"]) == PARAMS["model"]["gru"]["input"]
    assert resolve_feature_input("bilstm", "auto", model_params("bilstm", input="whisper_frames")) == "whisper_frames"
    typed_block = params_class("clstm").model_validate(model_params("clstm", input="mfcc"))
    assert resolve_feature_input("clstm", "auto", typed_block) == "mfcc"
    with pytest.raises(ValueError, match="unknown model.features"):
        resolve_feature_input("logreg", "whisper+whisper", PARAMS["model"]["logreg"])
    with pytest.raises(ValueError, match="unknown model type"):
        resolve_feature_input("transformer", "auto", {"input": "mfcc"})
    with pytest.raises(ValueError, match="unknown model.features"):
        resolve_feature_input("svm", "spectrogram", PARAMS["model"]["svm"])


# ---- ModelBundle on real features of generated audio ------------------------------------------
AUDIO = {"sample_rate": 16000, "trim_silence": False, "trim_top_db": 40, "normalize": "peak", "peak_level": 0.95,
         "loudness_lufs": -23.0, "max_seconds": 0.5}
FEATURES = section("features", sets=["functionals", "egemaps", "sequences"], n_mfcc=13, n_mels=24, n_fbank=16,
                   n_fft=512, win_length=400, hop_length=160, contrast_fmin=100.0, contrast_bands=4)


def tone_signals(per_class: int = 6, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Harmonic tones whose pitch depends on the class, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.5 * AUDIO["sample_rate"])) / AUDIO["sample_rate"]
    signals, labels = [], []
    for label, f0 in enumerate((120.0, 220.0, 380.0)):
        for _ in range(per_class):
            pitch = f0 * rng.uniform(0.95, 1.05)
            y = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in (1, 2, 3)) + 0.02 * rng.normal(size=t.size)
            signals.append((0.9 * y / np.max(np.abs(y))).astype(np.float32))
            labels.append(label)
    return signals, np.array(labels)


@pytest.mark.parametrize(("model_type", "feature_input"), [("svm", "both"), ("cnn1d", "mfcc")])
def test_bundle_from_signals_to_probabilities(model_type, feature_input, tmp_path):
    signals, labels = tone_signals()
    probe = ModelBundle(model_type, ["low", "mid", "high"], feature_input, AUDIO, FEATURES, estimator=None)
    X = probe.inputs_from_signals(signals)
    assert X.shape[0] == len(signals)
    estimator = MODELS[model_type](tiny(model_type, **({"epochs": 20} if model_type in KERAS_TYPES else {})),
                                   X.shape[1:], 3, 0)
    estimator.fit(X, labels)
    names = [f"f{i}" for i in range(X.shape[1])] if feature_input == "both" else []
    bundle = ModelBundle(model_type, ["low", "mid", "high"], feature_input, AUDIO, FEATURES, estimator, names)
    bundle.save(tmp_path / "bundle")
    described = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert described["classes"] == ["low", "mid", "high"] and described["audio"] == AUDIO
    assert described["features"] == FEATURES

    loaded = ModelBundle.load(tmp_path / "bundle")
    assert isinstance(loaded.audio, AudioParams) and loaded.audio == bundle.audio
    assert isinstance(loaded.features, FeatureParams) and loaded.features == bundle.features
    test_signals, test_labels = tone_signals(per_class=2, seed=5)
    probabilities = loaded.predict_proba_signals(test_signals)
    assert probabilities.shape == (len(test_signals), 3)
    np.testing.assert_allclose(probabilities, bundle.predict_proba(bundle.inputs_from_signals(test_signals)), atol=1e-5)
    if model_type == "svm":
        assert loaded.predict_signals(test_signals) == [["low", "mid", "high"][i] for i in test_labels]


def test_bundle_rejects_bad_signals_and_folders(tmp_path):
    bundle = ModelBundle("svm", ["a", "b"], "egemaps", AUDIO, FEATURES, estimator=None)
    with pytest.raises(ValueError, match="signal 1: expected a non-empty 1-D array"):
        bundle.inputs_from_signals([np.zeros(800, np.float32), np.zeros(0, np.float32)])
    with pytest.raises(FileNotFoundError, match="not a model bundle"):
        ModelBundle.load(tmp_path)
    with pytest.raises(ValueError, match="unknown feature_input"):
        ModelBundle("svm", ["a", "b"], "wav2vec", AUDIO, FEATURES, estimator=None)


def frames_with_one_telling_depth(per_class: int, seed: int, depths: int = 3, telling: int = 1,
                                  steps: int = 12, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """(n, steps, depths, width) float16 frames, as the features stage stores the encoder's:
    only depth ``telling`` carries the class, the others are noise."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(N_CLASSES), per_class)
    X = rng.normal(size=(len(y), steps, depths, width)).astype(np.float32)
    X[:, :, telling, :] += 1.5 * y[:, None, None].astype(np.float32)
    return X.astype(np.float16), y


@pytest.mark.parametrize("model_type", KERAS_TYPES)
def test_every_keras_family_learns_from_encoder_frames_and_weighs_their_depths(model_type, tmp_path):
    """Whisper frames of several depths (512 wide; 160 here keeps the test fast, still above
    proj_above) in float16: every family learns from them, puts the largest of its learned depth
    weights on the depth that tells the classes apart, and round-trips."""
    params = tiny(model_type, proj_above=128, proj_units=8, proj_skip=True, epochs=25, patience=25,
                  learning_rate=0.01, warmup_epochs=1)
    X, y = frames_with_one_telling_depth(per_class=20, seed=0)
    X_test, y_test = frames_with_one_telling_depth(per_class=10, seed=1)
    estimator = MODELS[model_type](params, X.shape[1:], N_CLASSES, 5)
    estimator.fit(X, y, X[::4], y[::4])
    probabilities = estimator.predict_proba(X_test)
    assert probabilities.shape == (len(y_test), N_CLASSES) and np.isfinite(probabilities).all()
    assert np.mean(probabilities.argmax(axis=1) == y_test) >= 0.8  # chance is 1/3
    logits = np.asarray(estimator.model.get_layer("depth_weighting").logits)
    assert logits.argmax() == 1
    estimator.save(tmp_path / "estimator")
    np.testing.assert_allclose(load_estimator(model_type, tmp_path / "estimator").predict_proba(X_test),
                               probabilities, atol=1e-5)
