"""Training and evaluation on small generated feature sets: the data/train contract, no leakage
of speakers or augmented copies, determinism, labels, and metrics/evaluate.json + plots.

The generators here are shared by test_tracking.py and test_experiments.py.
"""

from __future__ import annotations

import json
from pathlib import Path


import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from ser.training import splits
from ser.training.evaluate import evaluate
from ser.models import ModelBundle
from ser.training.train import ModelInputs, make_labels, sample_weights, train
from tests.params_support import params as project_params

EMOTIONS = ["angry", "happy", "neutral", "sad"]
N_FEATURES = 12


def generated_metadata(corpora=(("ravdess", 8, 8), ("tess", 2, 24))) -> pd.DataFrame:
    rows = []
    for corpus, n_speakers, clips in corpora:
        for s in range(n_speakers):
            for k in range(clips):
                uid = f"{corpus}_{s:02d}_{k:03d}"
                rows.append({"utterance_id": uid, "corpus": corpus, "speaker": f"{corpus}_{s:02d}",
                             "gender": "male" if s % 2 else "female", "emotion": EMOTIONS[k % 4],
                             "duplicate_of": None, "status": "ok", "pcm_sha256": f"sha-{uid}"})
    return pd.DataFrame(rows)


def emotion_features(metadata: pd.DataFrame, seed: int = 0, shape: tuple[int, ...] = (N_FEATURES,)) -> np.ndarray:
    """Features that carry the emotion (plus speaker offsets and noise)."""
    rng = np.random.default_rng(seed)
    label = metadata["emotion"].map({e: i for i, e in enumerate(EMOTIONS)}).to_numpy()
    speaker_offset = metadata["speaker"].astype("category").cat.codes.to_numpy() * 0.3
    X = rng.normal(size=(len(metadata), *shape)).astype(np.float32)
    per_row = (-1,) + (1,) * (len(shape) - 1)
    X[:, 0] += (2.5 * label + speaker_offset).reshape(per_row)
    X[:, 1] += (2.5 * (label % 2)).reshape(per_row)
    return X


def generated_inputs(metadata: pd.DataFrame, seed: int = 0) -> tuple[ModelInputs, ModelInputs]:
    X = emotion_features(metadata, seed)
    names = [f"f{i}" for i in range(N_FEATURES)]
    ids = metadata["utterance_id"].tolist()
    copies = ModelInputs([f"{u}__aug0" for u in ids], X + 0.05, names, sources=ids)
    return ModelInputs(ids, X, names), copies


def small_params(model_type: str = "svm", protocol: str = "speaker_kfold", n_folds: int = 4, **overrides) -> dict:
    """params.yaml with small folds and a small model of ``model_type``."""
    params = project_params(
        split={"protocol": protocol, "n_folds": n_folds, "val_speakers_fraction": 0.2, "seed": 1},
        train={"target": "emotion", "emotions": None, "use_augmented": True, "class_weight": "balanced",
               "speaker_norm": "none", "seed": 3, "workers": 1},
        mlflow={"experiment": "ser-tests", "registered_model": "ser-emotion-tests"})
    small = {"C": 1.0, "gamma": "scale", "max_iter": 15, "hidden_layer_sizes": [16], "epochs": 4, "filters": [4],
             "units": [4], "dense_units": 8, "patience": 2, "n_estimators": 20}
    block = params["model"][model_type]
    params["model"].update({"type": model_type, "features": "auto",
                            model_type: {**block, **{k: v for k, v in small.items() if k in block}, **overrides}})
    return params


def write_feature_folder(folder: Path, ids: list[str], X: np.ndarray, names: list[str]) -> None:
    """A feature folder in the documented layout (functionals.parquet + egemaps.parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(names) // 2
    for set_name, columns in (("functionals", slice(0, half)), ("egemaps", slice(half, None))):
        table = pd.DataFrame(X[:, columns], columns=names[columns]).astype(np.float32)
        table.insert(0, "utterance_id", ids)
        table.to_parquet(folder / f"{set_name}.parquet", index=False)
    pd.DataFrame({"utterance_id": pd.Series([], dtype=str), "problem": pd.Series([], dtype=str)}).to_parquet(
        folder / "failures.parquet", index=False)


def write_generated_project_data(root: Path, metadata: pd.DataFrame, seed: int = 0) -> None:
    """data/interim/metadata.parquet, data/features/ and data/augmented/ under ``root``."""
    inputs, copies = generated_inputs(metadata, seed)
    (root / "data" / "interim").mkdir(parents=True, exist_ok=True)
    metadata.to_parquet(root / "data" / "interim" / "metadata.parquet", index=False)
    write_feature_folder(root / "data" / "features", inputs.ids, inputs.X, inputs.feature_names)
    write_feature_folder(root / "data" / "augmented", copies.ids, copies.X, copies.feature_names)
    source = metadata.set_index("utterance_id")
    pd.DataFrame({"utterance_id": copies.ids, "source_utterance_id": copies.sources, "copy": 0,
                  "speaker": source.loc[copies.sources, "speaker"].values,
                  "corpus": source.loc[copies.sources, "corpus"].values,
                  "emotion": source.loc[copies.sources, "emotion"].values,
                  "gender": source.loc[copies.sources, "gender"].values}).to_parquet(
        root / "data" / "augmented" / "index.parquet", index=False)


# ---- training ------------------------------------------------------------------------------------
def test_train_writes_the_data_train_contract(tmp_path):
    metadata = generated_metadata()
    metadata.loc[3, "status"] = "quarantined"
    inputs, copies = generated_inputs(metadata)
    result = train(metadata, inputs, copies, small_params("svm", input="both"), tmp_path)

    oof = pd.read_parquet(tmp_path / "oof_predictions.parquet")
    assert list(oof.columns[:5]) == ["utterance_id", "corpus", "fold", "y_true", "y_pred"]
    assert [c for c in oof.columns if c.startswith("p_")] == [f"p_{e}" for e in EMOTIONS]
    usable = metadata[metadata["status"] == "ok"]
    assert sorted(oof["utterance_id"]) == sorted(usable["utterance_id"])  # each clip scored once
    np.testing.assert_allclose(oof.filter(like="p_").sum(axis=1), 1.0, atol=1e-4)
    speakers = usable.set_index("utterance_id").loc[oof["utterance_id"], "speaker"].values
    assert (oof.assign(speaker=speakers).groupby("speaker")["fold"].nunique() == 1).all()
    assert json.loads((tmp_path / "classes.json").read_text()) == EMOTIONS
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == ["fold", "epoch", "loss", "val_loss", "accuracy", "val_accuracy"]
    assert history.empty  # an SVM has no epochs

    bundle = ModelBundle.load(tmp_path / "model")
    assert bundle.classes == EMOTIONS and bundle.feature_input == "both"
    assert bundle.predict_proba(inputs.X[:5]).shape == (5, 4)
    info = json.loads((tmp_path / "train_info.json").read_text())
    assert info["n_clips"] == len(usable) and info["n_augmented"] == len(usable)
    assert info["final_model"]["trained_on"].startswith("all labelled clips")
    assert np.mean([f["uar"] for f in result.fold_scores]) > 0.6  # the signal is learnable


@pytest.mark.parametrize("model_type", ["logreg", "cnn1d"])
def test_folds_fitted_in_worker_processes_score_as_in_this_process(model_type, tmp_path):
    """train.workers only changes how many folds run at once: each fold is fitted on one math
    thread either way, from the same rows (the workers map them from one file)."""
    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    overrides = {}
    if model_type == "cnn1d":  # a sequence model: (clips, steps, values) frames
        inputs = ModelInputs(inputs.ids, np.repeat(inputs.X[:, None, :8], 6, axis=1))
        copies = ModelInputs(copies.ids, np.repeat(copies.X[:, None, :8], 6, axis=1), sources=copies.sources)
        overrides = {"input": "mfcc", "filters": [8], "max_steps": 6, "epochs": 12, "patience": 12}
    results = {}
    for workers in (1, 2):
        params = small_params(model_type, **overrides)
        params["train"]["workers"] = workers
        results[workers] = train(metadata, inputs, copies, params, tmp_path / f"w{workers}", fit_final_model=False)
    one, two = results[1], results[2]
    assert [f["fold"] for f in two.fold_scores] == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(one.oof[["utterance_id", "fold", "y_true"]], two.oof[["utterance_id", "fold", "y_true"]])
    if model_type == "logreg":  # this process's BLAS, held to one thread, does the workers' sums
        pd.testing.assert_frame_equal(one.oof, two.oof)
        assert one.fold_scores == two.fold_scores
    else:  # TensorFlow in this test process may have been started earlier, on more threads
        mean_uar = {w: np.mean([f["uar"] for f in r.fold_scores]) for w, r in results.items()}
        assert mean_uar[2] > 0.35 and abs(mean_uar[2] - mean_uar[1]) < 0.05  # chance is 0.25
        assert set(two.history["fold"]) == {0, 1, 2, 3}


def test_no_speaker_and_no_augmented_copy_of_a_test_clip_is_trained_on(tmp_path):
    """Two memorizing set-ups where any leak would score ~100%: the features identify the clip
    (and its exact augmented copy), and labels are noise, or identify the speaker, whose
    clips all share one label."""
    metadata = generated_metadata((("ravdess", 8, 16),))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(metadata), 8)).astype(np.float32)
    ids = metadata["utterance_id"].tolist()
    params = small_params("decision_tree", max_depth=None, min_samples_leaf=1)
    params["train"]["class_weight"] = None

    noise_labels = metadata.assign(emotion=rng.choice(EMOTIONS, size=len(metadata)))
    copies = ModelInputs([f"{u}__aug0" for u in ids], X.copy(), sources=ids)
    result = train(noise_labels, ModelInputs(ids, X), copies, params, tmp_path / "clips")
    assert np.mean([f["accuracy"] for f in result.fold_scores]) < 0.5

    speaker_code = metadata["speaker"].astype("category").cat.codes.to_numpy()
    by_speaker = metadata.assign(emotion=[EMOTIONS[c % 4] for c in speaker_code])
    X_speaker = X + speaker_code[:, None].astype(np.float32) * 5.0
    result = train(by_speaker, ModelInputs(ids, X_speaker), None, params, tmp_path / "speakers")
    assert np.mean([f["accuracy"] for f in result.fold_scores]) < 0.5


def test_same_params_same_outputs(tmp_path):
    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    first = train(metadata, inputs, copies, small_params("mlp"), tmp_path / "a")
    second = train(metadata, inputs, copies, small_params("mlp"), tmp_path / "b")
    pd.testing.assert_frame_equal(first.oof, second.oof)
    pd.testing.assert_frame_equal(first.history, second.history)
    history = pd.read_csv(tmp_path / "a" / "history.csv")
    assert set(history["fold"]) == {-1, 0, 1, 2, 3} and history["val_loss"][history["fold"] >= 0].notna().all()


def test_keras_final_model_runs_the_folds_median_best_epoch(tmp_path):
    metadata = generated_metadata((("ravdess", 6, 8),))
    X = emotion_features(metadata, shape=(10, 3))
    params = small_params("cnn1d", n_folds=3, epochs=5, patience=1)
    params["model"]["features"] = "sequences"
    params["model"]["cnn1d"]["input"] = "mfcc"
    result = train(metadata, ModelInputs(metadata["utterance_id"].tolist(), X), None, params, tmp_path)
    final = result.info["final_model"]
    assert len(final["best_epochs_of_folds"]) == 3
    assert final["params"]["epochs"] == int(round(float(np.median(final["best_epochs_of_folds"]))))
    assert (result.history["fold"] == -1).sum() == final["params"]["epochs"]
    assert ModelBundle.load(tmp_path / "model").feature_input == "mfcc"


def test_labels_targets_restrictions_and_merges():
    metadata = generated_metadata((("ravdess", 2, 8),))
    metadata.loc[0, "emotion"] = "calm"
    labels, classes = make_labels(metadata, "emotion", None)
    assert classes == ["angry", "calm", "happy", "neutral", "sad"]
    labels, classes = make_labels(metadata, "emotion", {"calm": "neutral"})
    assert classes == EMOTIONS and labels[0] == "neutral"
    labels, classes = make_labels(metadata, "emotion", ["angry", "sad"])
    kept = metadata["emotion"].isin(["angry", "sad"]).to_numpy()
    assert classes == ["angry", "sad"] and 0 < kept.sum() < len(metadata)
    assert labels[kept].tolist() == metadata.loc[kept, "emotion"].tolist() and labels[~kept].isna().all()
    labels, classes = make_labels(metadata, "gender", ["angry", "sad"])
    assert classes == ["female", "male"] and labels.notna().sum() == 7  # row 0 became calm
    labels, classes = make_labels(metadata, "emotion_gender", None)
    assert "female_angry" in classes and "male_sad" in classes and len(classes) == 9  # calm: female only
    with pytest.raises(ValueError, match="unknown train.target"):
        make_labels(metadata, "age", None)
    with pytest.raises(ValueError, match="at least two"):
        make_labels(metadata, "emotion", ["angry"])


def test_sample_weights_balance_classes_or_corpora_and_classes():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    corpora = np.array(["big"] * 4 + ["small"] * 2 + ["big"] * 4)
    # balanced: each class totals n / 2 = 5 (class 0: 4 rows of 5/4, class 1: 6 rows of 5/6)
    np.testing.assert_allclose(sample_weights(y, corpora, "balanced"), [1.25] * 3 + [5 / 6] + [1.25] + [5 / 6] * 5)
    weights = sample_weights(y, corpora, "corpus_balanced")
    # each corpus totals 5, each of its two classes 2.5: big has 3 + 5 rows, small 1 + 1
    expected = np.where(corpora == "small", 2.5, np.where(y == 0, 2.5 / 3, 2.5 / 5))
    np.testing.assert_allclose(weights, expected)
    assert sample_weights(y, corpora, None) is None
    with pytest.raises(ValueError, match="unknown train.class_weight 'speaker'"):
        sample_weights(y, corpora, "speaker")


# ---- evaluation ------------------------------------------------------------------------------------
def test_evaluate_writes_metrics_and_plots(tmp_path):
    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    train(metadata, inputs, copies, small_params("mlp"), tmp_path / "train")
    summary, _ = evaluate(tmp_path / "train", tmp_path / "metrics" / "evaluate.json", tmp_path / "plots")

    written = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert written == json.loads(json.dumps(summary))
    # Every figure recomputed from the out-of-fold predictions with scikit-learn's own scorers,
    # and the true labels checked against the metadata the model was trained on.
    oof = pd.read_parquet(tmp_path / "train" / "oof_predictions.parquet")
    truth = metadata.set_index("utterance_id").loc[oof["utterance_id"], "emotion"].to_numpy()
    assert (oof["y_true"].to_numpy() == truth).all() and len(oof) == len(metadata)
    expected = {"uar": balanced_accuracy_score, "accuracy": accuracy_score,
                "macro_f1": lambda t, p: f1_score(t, p, average="macro", labels=sorted(set(t)))}
    folds = [rows for _, rows in oof.groupby("fold")]
    assert len(folds) == 4
    for name, scorer in expected.items():
        assert written[name] == pytest.approx(scorer(truth, oof["y_pred"]), abs=1e-9)
        per_fold = [scorer(rows["y_true"], rows["y_pred"]) for rows in folds]
        assert written["folds"][name]["values"] == pytest.approx(per_fold, abs=1e-6)
        assert written["folds"][name]["std"] == pytest.approx(np.std(per_fold), abs=1e-6)
    tess = oof[oof["corpus"] == "tess"]
    assert written["per_corpus"]["tess"]["uar"] == pytest.approx(balanced_accuracy_score(tess["y_true"], tess["y_pred"]))
    sad = oof["y_true"] == "sad"
    assert written["per_class"]["sad"]["recall"] == pytest.approx((oof.loc[sad, "y_pred"] == "sad").mean())
    assert written["protocol"] == "speaker_kfold" and written["speaker_dependent"] is False
    assert set(written["per_class"]) == set(EMOTIONS)
    assert set(written["per_class"]["sad"]) == {"precision", "recall", "f1", "support"}
    assert set(written["per_corpus"]) == {"ravdess", "tess"}
    assert written["per_corpus"]["tess"]["n_clips"] == 48

    confusion = pd.read_csv(tmp_path / "plots" / "confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == len(metadata)
    history = pd.read_csv(tmp_path / "plots" / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "val_loss", "accuracy", "val_accuracy"] and len(history) > 0
    for name in ("confusion.png", "curves.png", "per_class.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_random_protocol_is_labelled_speaker_dependent(tmp_path):
    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    train(metadata, inputs, copies, small_params("svm", protocol="random"), tmp_path / "train")
    summary, _ = evaluate(tmp_path / "train", tmp_path / "evaluate.json", tmp_path / "plots")
    assert summary["protocol"] == "random" and summary["speaker_dependent"] is True
    assert "speaker-dependent" in summary["warning"]
    with pytest.raises(ValueError, match="trained with 'random'"):
        evaluate(tmp_path / "train", tmp_path / "again.json", tmp_path / "plots", protocol="speaker_kfold")


def test_uar_ignores_classes_a_corpus_does_not_have():
    from ser.training.metrics import scores

    perfect_on_present = scores(["happy", "sad", "sad"], ["happy", "sad", "sad"])
    assert perfect_on_present["uar"] == 1.0
    # A predicted class absent from the truth costs precision elsewhere, not a zero recall term.
    one_wrong = scores(["happy", "sad"], ["calm", "sad"])
    assert one_wrong["uar"] == 0.5


def test_speaker_norm_standardizes_each_speaker_with_its_clips_and_is_labelled_transductive(tmp_path):
    from ser.training.train import labelled_data

    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    params = small_params("svm")
    params["train"]["speaker_norm"] = "speaker"
    data = labelled_data(metadata, inputs, copies, params["train"], "both")
    for speaker, rows in data.clips.groupby("speaker").indices.items():
        own = inputs.rows(metadata.loc[metadata["speaker"] == speaker, "utterance_id"])
        expected = (inputs.rows(data.clips["utterance_id"].iloc[rows]) - own.mean(axis=0)) / own.std(axis=0)
        np.testing.assert_allclose(data.X[rows], expected, rtol=1e-4, atol=1e-4, err_msg=speaker)
    result = train(metadata, inputs, copies, params, tmp_path / "train")
    summary, _ = evaluate(tmp_path / "train", tmp_path / "evaluate.json", tmp_path / "plots")
    assert result.bundle.speaker_norm == "speaker"
    assert summary["speaker_norm"] == "speaker" and summary["transductive"] is True
    plain = train(metadata, inputs, copies, small_params("svm"), tmp_path / "plain")
    assert plain.info["transductive"] is False and result.info["transductive"] is True


def test_leave_one_corpus_out_scores_each_corpus_from_the_others(tmp_path):
    metadata = generated_metadata()
    inputs, copies = generated_inputs(metadata)
    result = train(metadata, inputs, copies, small_params("svm", protocol="leave_one_corpus_out"), tmp_path / "train")
    # every clip is scored once, by the model of the fold that held its whole corpus out
    held_out = splits.assign_folds(metadata, "leave_one_corpus_out")["fold"]
    assert sorted(result.oof["utterance_id"]) == sorted(metadata["utterance_id"])
    assert (result.oof["fold"].to_numpy() == held_out.loc[result.oof["utterance_id"]].to_numpy()).all()
    summary, _ = evaluate(tmp_path / "train", tmp_path / "evaluate.json", tmp_path / "plots")
    assert summary["protocol"] == "leave_one_corpus_out" and summary["speaker_dependent"] is False
    assert set(summary["per_corpus"]) == {"ravdess", "tess"}
