"""Cross-validated training and the final model.

``train(metadata, inputs, augmented, params, out)``:

1. labels from ``train.target`` / ``train.emotions``; clips without features are reported;
2. folds from ``split`` (``ser.splits``); for models that stop early (Keras, MLP) a
   speaker-disjoint validation split is carved out of each training side;
3. per fold: augmented copies of training clips join the training side (never copies of test
   or validation clips), class weights from the training labels, a fresh estimator whose
   standardization is fitted on those rows only; out-of-fold probabilities for the test clips;
4. the final model is fitted on ALL labelled clips (and their augmented copies). Models that
   train by epochs have no held-out data left for early stopping then, so they run for the
   median of the folds' best epochs: the cross-validated numbers estimate this model's
   quality, and no clip is wasted. It is saved as a ``ModelBundle`` in ``<out>/model``.

Everything is tracked in one MLflow parent run with a nested run per fold (``ser.tracking``).
"""

from __future__ import annotations

# opensmile before tensorflow, in case a Keras family is trained (see docs/ARCHITECTURE.md).
import opensmile  # noqa: F401  isort: skip

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, recall_score
from sklearn.utils.class_weight import compute_class_weight
from tqdm.auto import tqdm

from ser import splits
from ser.normalize import check_speaker_norm, standardize_groups
from ser.models import MODELS, is_keras, resolve_feature_input, uses_validation
from ser.models.bundle import SEQUENCE_INPUTS, ModelBundle, tabular_sets

log = logging.getLogger(__name__)

TARGETS = ("emotion", "gender", "emotion_gender")
HISTORY_COLUMNS = ["fold", "epoch", "loss", "val_loss", "accuracy", "val_accuracy"]
FINAL_FOLD = -1  # the ``fold`` value of the final model's rows in history.csv


# ---- labels ---------------------------------------------------------------------------------
def make_labels(metadata: pd.DataFrame, target: str = "emotion",
                emotions: list[str] | dict[str, str | None] | None = None) -> tuple[pd.Series, list[str]]:
    """Label per metadata row (NaN = not used) and the sorted class names.

    ``emotions``: ``None`` keeps all; a list keeps those; a mapping renames (merges) emotions,
    e.g. ``{calm: neutral}``, and drops those mapped to null.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown train.target '{target}'; choose one of {TARGETS}")
    emotion = metadata["emotion"].astype("object")
    if isinstance(emotions, dict):
        emotion = emotion.map(lambda e: emotions.get(e, e) if e in emotions else e)
    elif emotions:
        emotion = emotion.where(emotion.isin(list(emotions)))
    elif emotions is not None and len(emotions) == 0:
        raise ValueError("train.emotions is an empty list; use null to keep every emotion")
    gender = metadata["gender"].astype("object")
    if target == "emotion":
        labels = emotion
    elif target == "gender":
        labels = gender.where(emotion.notna())
    else:
        labels = (gender + "_" + emotion).where(emotion.notna() & gender.notna())
    labels = labels.where(labels.notna(), None)
    classes = sorted(str(c) for c in labels.dropna().unique())
    if len(classes) < 2:
        raise ValueError(f"train.target={target} with train.emotions={emotions} leaves {len(classes)} class(es) "
                         f"{classes}; need at least two")
    return labels.rename("label"), classes


def class_weights(y: np.ndarray, n_classes: int, mode: str | None) -> dict[int, float] | None:
    if not mode:
        return None
    if mode != "balanced":
        raise ValueError(f"unknown train.class_weight '{mode}'; use balanced or null")
    present = np.unique(y)
    weights = compute_class_weight("balanced", classes=present, y=y)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(n_classes) if c not in set(present.tolist())}


# ---- inputs ------------------------------------------------------------------------------------
@dataclass
class ModelInputs:
    """Rows of model input: ``ids[i]`` is the utterance of ``X[i]``."""

    ids: list[str]
    X: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    sources: list[str] | None = None  # augmented rows: the clip each copy was made from

    def __post_init__(self):
        if len(self.ids) != len(self.X):
            raise ValueError(f"{len(self.ids)} ids for {len(self.X)} rows of features")
        self.position = {u: i for i, u in enumerate(self.ids)}

    def rows(self, ids) -> np.ndarray:
        return self.X[[self.position[u] for u in ids]]


def load_model_inputs(folder: str | os.PathLike, feature_input: str) -> ModelInputs:
    """Features written by the features (or augment) stage, as one model-input matrix."""
    from ser.features import load_sequences, load_table

    folder = Path(folder)
    if feature_input in SEQUENCE_INPUTS:
        ids, array = load_sequences(folder, feature_input)
        return ModelInputs([str(u) for u in ids], np.asarray(array, dtype=np.float32))
    tables = []
    for name in tabular_sets(feature_input):
        table = load_table(folder, name).select_dtypes("number")
        taken = {c for t in tables for c in t.columns}
        tables.append(table.rename(columns={c: f"{name}__{c}" for c in table.columns if c in taken}))
    joined = pd.concat(tables, axis=1, join="inner") if len(tables) > 1 else tables[0]
    return ModelInputs([str(u) for u in joined.index], joined.to_numpy(dtype=np.float32), [str(c) for c in joined.columns])


def load_augmented_inputs(folder: str | os.PathLike, feature_input: str) -> ModelInputs | None:
    """Augmented copies with their source clip, or None when augmentation produced nothing."""
    folder = Path(folder)
    index_path = folder / "index.parquet"
    if not index_path.is_file():
        return None
    index = pd.read_parquet(index_path)
    if index.empty:
        return None
    inputs = load_model_inputs(folder, feature_input)
    source_of = dict(zip(index["utterance_id"].astype(str), index["source_utterance_id"].astype(str)))
    keep = [u for u in inputs.ids if u in source_of]
    return ModelInputs(keep, inputs.rows(keep), inputs.feature_names, [source_of[u] for u in keep])


def load_training_inputs(features: str | os.PathLike, augmented: str | os.PathLike, model_params: dict[str, Any],
                         train_params: dict[str, Any]) -> tuple[str, ModelInputs, ModelInputs | None]:
    """``(feature_input, inputs, augmented copies or None)`` that the ``model`` and ``train``
    params name, read from the features and augment stage folders."""
    model_type = model_params["type"]
    feature_input = resolve_feature_input(model_type, model_params.get("features", "auto"),
                                          model_params.get(model_type))
    copies = load_augmented_inputs(augmented, feature_input) if train_params.get("use_augmented", True) else None
    return feature_input, load_model_inputs(features, feature_input), copies


# ---- metrics ------------------------------------------------------------------------------------
def scores(y_true, y_pred) -> dict[str, float]:
    return {"uar": float(recall_score(y_true, y_pred, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def best_epoch(history: dict[str, list]) -> int | None:
    """1-based epoch count that early stopping kept (the lowest validation loss)."""
    val_loss = [v for v in history.get("val_loss", []) if v == v]
    if not val_loss:
        return len(history["loss"]) if history.get("loss") else None
    return int(np.argmin(val_loss)) + 1


def final_params(model_type: str, params_of_type: dict[str, Any], best_epochs: list[int]) -> dict[str, Any]:
    """Params of the final fit: epoch-trained models run for the folds' median best epoch."""
    params_of_type = dict(params_of_type)
    if not best_epochs:
        return params_of_type
    epochs = max(1, int(round(float(np.median(best_epochs)))))
    if is_keras(model_type):
        params_of_type["epochs"] = epochs
    elif model_type == "mlp":
        params_of_type["max_iter"] = epochs
    return params_of_type


# ---- training ---------------------------------------------------------------------------------
@dataclass
class TrainResult:
    oof: pd.DataFrame
    history: pd.DataFrame
    classes: list[str]
    bundle: ModelBundle
    fold_scores: list[dict[str, float]]
    run_id: str | None
    info: dict[str, Any]


def _history_frame(fold: int, history: dict[str, list]) -> pd.DataFrame:
    if not history or not history.get("loss"):
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    n = len(history["loss"])
    frame = {"fold": [fold] * n, "epoch": list(range(1, n + 1))}
    for column in HISTORY_COLUMNS[2:]:
        values = history.get(column) or [float("nan")] * n
        frame[column] = list(values)[:n]
    return pd.DataFrame(frame, columns=HISTORY_COLUMNS)


def _log_history(history: dict[str, list]) -> None:
    import mlflow

    for column in HISTORY_COLUMNS[2:]:
        for step, value in enumerate(history.get(column) or []):
            if value == value:
                mlflow.log_metric(column, float(value), step=step + 1)


def train(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None, params: dict[str, Any],
          out: str | os.PathLike, *, track: bool = True, logged_params: dict[str, Any] | None = None,
          fit_final: bool = True) -> TrainResult:
    """Cross-validate, fit the final model, write ``out`` (see the module docstring).

    ``params`` holds the sections training reads (audio, features, split, train, model,
    mlflow); ``logged_params`` (default ``params``) is what the MLflow run records as params,
    the whole params.yaml when run as a stage. ``fit_final=False`` only cross-validates (no
    final model, no bundle): what the cross-corpus figure needs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    split_params, train_params, model_params = params["split"], params["train"], params["model"]
    model_type = model_params["type"]
    params_of_type = dict(model_params.get(model_type) or {})
    feature_input = resolve_feature_input(model_type, model_params.get("features", "auto"), params_of_type)
    seed = int(train_params.get("seed", 42))
    protocol = split_params.get("protocol", "speaker_kfold")

    usable = metadata[metadata["status"] == "ok"] if "status" in metadata.columns else metadata
    without_features = sorted(set(usable["utterance_id"]) - set(inputs.ids))
    if without_features:
        log.warning("%d usable clips have no %s features and are left out (the features stage lists why): %s%s",
                    len(without_features), feature_input, ", ".join(without_features[:5]),
                    " ..." if len(without_features) > 5 else "")
    usable = usable[usable["utterance_id"].isin(inputs.position)]
    labels, classes = make_labels(usable, train_params.get("target", "emotion"), train_params.get("emotions"))
    labelled = usable[labels.notna().to_numpy()].reset_index(drop=True)
    label_of = dict(zip(labelled["utterance_id"], labels.dropna().astype(str)))
    class_index = {c: i for i, c in enumerate(classes)}
    y_all = np.array([class_index[label_of[u]] for u in labelled["utterance_id"]], dtype=np.int64)
    X_all = inputs.rows(labelled["utterance_id"])
    speaker_norm = check_speaker_norm(train_params.get("speaker_norm"))
    aug_X = augmented.X if augmented is not None else None
    if speaker_norm == "speaker":
        # Transductive: each speaker's clips (labelled or not) give that speaker's statistics.
        speaker_of = dict(zip(usable["utterance_id"], usable["speaker"].astype(str)))
        reference = inputs.rows(usable["utterance_id"])
        reference_groups = usable["speaker"].astype(str).to_numpy()
        X_all = standardize_groups(X_all, [speaker_of[u] for u in labelled["utterance_id"]],
                                   reference, reference_groups)
        if augmented is not None:
            known = [s in speaker_of for s in augmented.sources]
            aug_X = augmented.X.copy()
            if any(known):
                rows = np.flatnonzero(known)
                aug_X[rows] = standardize_groups(augmented.X[rows], [speaker_of[augmented.sources[i]] for i in rows],
                                                 reference, reference_groups)

    folds = splits.assign_folds(labelled, protocol, int(split_params.get("n_folds", 6)),
                                int(split_params.get("seed", 42)),
                                labels=pd.Series([label_of[u] for u in labelled["utterance_id"]]))
    aug_sources = np.array(augmented.sources if augmented else [], dtype=object)
    use_augmented = bool(train_params.get("use_augmented", True)) and augmented is not None
    if use_augmented:
        known = np.isin(aug_sources, labelled["utterance_id"].to_numpy())
        aug_rows = np.flatnonzero(known)
        aug_y = np.array([class_index[label_of[s]] for s in aug_sources[aug_rows]], dtype=np.int64)
    fold_ids = sorted(folds["fold"].unique())
    validation_fraction = float(split_params.get("val_speakers_fraction", 0.15)) if uses_validation(model_type) else 0.0

    tracker = _Tracker(track, params, logged_params or params, labelled, model_type, feature_input, protocol)
    oof_parts, history_parts, fold_scores, best_epochs = [], [], [], []
    started = time.time()
    with tracker.parent():
        for fold in tqdm(fold_ids, desc=f"{model_type} folds", unit="fold"):
            test = (folds["fold"] == fold).to_numpy()
            train_side = splits.training_mask(folds, fold)
            validation = splits.validation_groups(folds, labelled, train_side, validation_fraction,
                                                  int(split_params.get("seed", 42)) + int(fold), protocol)
            fit_rows = train_side & ~validation
            X_fit, y_fit = X_all[fit_rows], y_all[fit_rows]
            if use_augmented:
                allowed = set(labelled["utterance_id"].to_numpy()[fit_rows])
                copies = aug_rows[[s in allowed for s in aug_sources[aug_rows]]]
                if len(copies):
                    X_fit = np.concatenate([X_fit, aug_X[copies]])
                    y_fit = np.concatenate([y_fit, aug_y[np.searchsorted(aug_rows, copies)]])
            estimator = MODELS[model_type](params_of_type, X_all.shape[1:], len(classes), seed)
            with tracker.fold(fold):
                history = estimator.fit(X_fit, y_fit,
                                        X_all[validation] if validation.any() else None,
                                        y_all[validation] if validation.any() else None,
                                        class_weight=class_weights(y_fit, len(classes), train_params.get("class_weight")))
                probabilities = estimator.predict_proba(X_all[test])
                predicted = probabilities.argmax(axis=1)
                fold_score = scores(y_all[test], predicted)
                epochs_kept = best_epoch(history)
                tracker.log_fold(fold_score, history, epochs_kept, int(test.sum()), int(len(y_fit)),
                                 int(validation.sum()))
            if epochs_kept and history:
                best_epochs.append(epochs_kept)
            fold_scores.append({"fold": int(fold), **fold_score})
            history_parts.append(_history_frame(int(fold), history))
            oof = pd.DataFrame({"utterance_id": labelled["utterance_id"].to_numpy()[test],
                                "corpus": labelled["corpus"].to_numpy()[test], "fold": int(fold),
                                "y_true": [classes[i] for i in y_all[test]],
                                "y_pred": [classes[i] for i in predicted]})
            for index, name in enumerate(classes):
                oof[f"p_{name}"] = probabilities[:, index].astype(np.float32)
            oof_parts.append(oof)
            log.info("fold %s: %s", fold, {k: round(v, 4) for k, v in fold_score.items()})
        cv_seconds = time.time() - started
        oof = pd.concat(oof_parts, ignore_index=True)
        if not fit_final:
            history_frame = pd.concat([h for h in history_parts if len(h)] or [pd.DataFrame(columns=HISTORY_COLUMNS)],
                                      ignore_index=True)
            info = {"model_type": model_type, "feature_input": feature_input, "protocol": protocol,
                    "speaker_norm": speaker_norm, "transductive": speaker_norm != "none",
                    "classes": classes, "n_clips": int(len(labelled)), "cv_seconds": round(cv_seconds, 1)}
            return TrainResult(oof, history_frame, classes, None, fold_scores, None, info)

        final_type_params = final_params(model_type, params_of_type, best_epochs)
        X_final, y_final = X_all, y_all
        if use_augmented and len(aug_rows):
            X_final = np.concatenate([X_all, aug_X[aug_rows]])
            y_final = np.concatenate([y_all, aug_y])
        final = MODELS[model_type](final_type_params, X_all.shape[1:], len(classes), seed)
        final_history = final.fit(X_final, y_final, class_weight=class_weights(
            y_final, len(classes), train_params.get("class_weight")))
        history_parts.append(_history_frame(FINAL_FOLD, final_history))
        bundle = ModelBundle(model_type=model_type, classes=classes, feature_input=feature_input,
                             audio=params.get("audio", {}), features=params.get("features", {}),
                             estimator=final, feature_names=inputs.feature_names,
                             target=train_params.get("target", "emotion"), speaker_norm=speaker_norm)
        model_dir = out / "model"
        if model_dir.exists():
            import shutil

            shutil.rmtree(model_dir)
        bundle.save(model_dir)

        history_frame = pd.concat([h for h in history_parts if len(h)] or [pd.DataFrame(columns=HISTORY_COLUMNS)],
                                  ignore_index=True)
        info = {
            "model_type": model_type, "feature_input": feature_input, "protocol": protocol,
            "speaker_dependent": protocol == "random",
            "speaker_norm": speaker_norm, "transductive": speaker_norm != "none", "target": train_params.get("target", "emotion"),
            "classes": classes, "n_clips": int(len(labelled)),
            "n_augmented": int(len(aug_rows)) if use_augmented else 0,
            "clips_without_features": without_features, "folds": splits.describe(folds, labelled),
            "final_model": {"trained_on": "all labelled clips" + (" + their augmented copies" if use_augmented else ""),
                            "params": final_type_params, "best_epochs_of_folds": best_epochs},
            "cv_seconds": round(cv_seconds, 1), "train_seconds": round(time.time() - started, 1),
        }
        oof.to_parquet(out / "oof_predictions.parquet", index=False)
        history_frame.to_csv(out / "history.csv", index=False)
        (out / "classes.json").write_text(json.dumps(classes, indent=2), encoding="utf-8")
        run_id = tracker.finish(out, bundle, X_all[: min(5, len(X_all))], fold_scores, info)
        (out / "train_info.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    return TrainResult(oof, history_frame, classes, bundle, fold_scores, run_id, info)


class _Tracker:
    """MLflow side of ``train`` (a no-op when ``track`` is false)."""

    def __init__(self, enabled: bool, params: dict[str, Any], logged_params: dict[str, Any],
                 metadata: pd.DataFrame, model_type: str, feature_input: str, protocol: str):
        self.enabled = enabled
        self.params = params
        self.logged_params = logged_params
        self.metadata = metadata
        self.model_type = model_type
        self.feature_input = feature_input
        self.protocol = protocol
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def parent(self):
        import contextlib

        if not self.enabled:
            return contextlib.nullcontext()
        import mlflow

        from ser import tracking

        experiment = self.params.get("mlflow", {}).get("experiment", "ser")
        self.experiment_name = experiment
        self.experiment_id = tracking.use_experiment(experiment)
        name = f"{self.model_type}-{os.environ.get('DVC_EXP_NAME', 'run')}"
        tags = tracking.run_tags(self.metadata, {"model_type": self.model_type, "feature_input": self.feature_input,
                                                 "protocol": self.protocol,
                                                 "speaker_dependent": self.protocol == "random"})
        run = tracking.retry(lambda: mlflow.start_run(run_name=name, tags=tags))
        self.run_id = run.info.run_id
        params = tracking.loggable_params(self.logged_params)
        tracking.retry(lambda: mlflow.log_params(params))
        return run

    def fold(self, fold: int):
        import contextlib

        if not self.enabled:
            return contextlib.nullcontext()
        import mlflow

        return mlflow.start_run(run_name=f"fold-{fold}", nested=True, tags={"fold": str(fold)})

    def log_fold(self, fold_score, history, epochs_kept, n_test, n_fit, n_val) -> None:
        if not self.enabled:
            return
        import mlflow

        mlflow.log_metrics({**fold_score, "n_test": n_test, "n_fit": n_fit, "n_val": n_val,
                            **({"best_epoch": epochs_kept} if epochs_kept and history else {})})
        _log_history(history)

    def finish(self, out: Path, bundle: ModelBundle, input_example: np.ndarray, fold_scores, info) -> str | None:
        if not self.enabled:
            return None
        import mlflow

        from ser import tracking

        for name in ("uar", "accuracy", "macro_f1"):
            values = [s[name] for s in fold_scores]
            mlflow.log_metrics({f"cv_{name}_mean": float(np.mean(values)), f"cv_{name}_std": float(np.std(values))})
        mlflow.log_metrics({"cv_seconds": info["cv_seconds"]})
        mlflow.log_dict(info, "train_info.json")
        log_flavor(bundle, input_example)
        from ser import pyfunc

        registered = self.params.get("mlflow", {}).get("registered_model", "ser-emotion")
        pyfunc.log_model(out / "model", registered_model_name=registered, name="audio_model")
        tracking.write_run_file(out, self.run_id, self.experiment_id, self.experiment_name)
        return self.run_id


def log_flavor(bundle: ModelBundle, input_example: np.ndarray) -> None:
    """Log the raw estimator with its own MLflow flavor (features in, probabilities out)."""
    import mlflow
    from mlflow.models import infer_signature

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, bundle.predict_proba(example).astype(np.float32))
    model = bundle.estimator.flavor_model
    from ser.pyfunc import pip_requirements

    if is_keras(bundle.model_type):
        # mlflow.keras.log_model (3.17) writes the input example before creating its folder;
        # the TensorFlow flavor logs a Keras 3 model the same way and works.
        import mlflow.tensorflow

        mlflow.tensorflow.log_model(model, name="estimator", signature=signature, input_example=example,
                                    pip_requirements=pip_requirements())
    else:
        import mlflow.sklearn
        import skops.io

        # Our own freshly fitted objects (e.g. the MLP's optimizer state) are safe to load back.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        mlflow.sklearn.log_model(model, name="estimator", signature=signature, input_example=example,
                                 pip_requirements=pip_requirements(), skops_trusted_types=trusted)
