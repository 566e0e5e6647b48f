"""scikit-learn families: ``logreg``, ``mlp``, ``svm``, ``random_forest``, ``decision_tree``.

Each is a ``Pipeline(StandardScaler, classifier)``, so the scaler is fitted on exactly the rows
``fit`` gets (the training folds) and travels with the model. Class weights become sample
weights, which every one of these classifiers accepts.

The MLP is trained epoch by epoch (``partial_fit``) so that it can stop early on the
speaker-disjoint validation split the trainer passes in, rather than on scikit-learn's own
random 10% hold-out, which would share speakers with the training rows.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ser.params import LogregParams, Section, model_block

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# scikit-learn is imported where it is used, and only the classifier a model needs: importing
# every family (calibration, ensembles, trees, the MLP) costs about a second at each cold start
# of ``ser predict``, which unpickles one fitted pipeline.


# Kernel cache of the SVC: speed only, never the result.
SVC_CACHE_MB = 500.0


def _classifier(model_type: str, params: Section, seed: int):
    if model_type == "logreg":
        from sklearn.linear_model import LogisticRegression

        # A linear probe: on a pretrained encoder's pooled frames it is the field's reference head.
        return LogisticRegression(C=params.C, max_iter=params.max_iter, random_state=seed)
    if model_type == "svm":
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        # Platt-scaled probabilities, fitted on cross-validated decision values (what the
        # deprecated SVC(probability=True) did internally), then one SVC on all the rows.
        svc = SVC(C=params.C, kernel=params.kernel, gamma=params.gamma, random_state=seed,
                  cache_size=SVC_CACHE_MB)
        return CalibratedClassifierCV(svc, method="sigmoid", cv=params.calibration_folds, ensemble=False)
    if model_type == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=params.n_estimators, max_depth=params.max_depth,
            min_samples_leaf=params.min_samples_leaf,
            max_features=params.max_features, n_jobs=params.n_jobs,
            random_state=seed)
    if model_type == "decision_tree":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(max_depth=params.max_depth, min_samples_leaf=params.min_samples_leaf,
                                      random_state=seed)
    if model_type == "mlp":
        from sklearn.neural_network import MLPClassifier

        # scikit-learn's API takes the layer sizes as a tuple
        return MLPClassifier(hidden_layer_sizes=tuple(params.hidden_layer_sizes), alpha=params.alpha,
                             learning_rate_init=params.learning_rate_init, batch_size=params.batch_size,
                             random_state=seed)
    raise ValueError(f"'{model_type}' is not a scikit-learn model type")


# Columns that hold a pooled standard deviation: whisper_l3_std_0042, mfcc_00_std, ...
STD_COLUMN = re.compile(r"(^|_)std(_|$)")


def std_column_weights(feature_names: Sequence[str] | None, std_weight: float) -> np.ndarray | None:
    """Per-column factors applied after standardization: ``std_weight`` on the pooled
    standard-deviation columns, 1 elsewhere (None when there is nothing to weigh). Under an L2
    penalty a column scaled by w costs 1/w^2 as much to use: the model leans on the means."""
    if feature_names is None or std_weight == 1.0:
        return None
    is_std = np.array([bool(STD_COLUMN.search(name)) for name in feature_names])
    if not is_std.any():
        return None
    return np.where(is_std, std_weight, 1.0).astype(np.float32)


def weigh_columns(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return X * weights


# Columns of a pooled encoder vector: whisper_l3_mean_0042 is value 42 of depth 3's mean.
EMBEDDING_COLUMN = re.compile(r"^(whisper_l\d+_(?:mean|std))_\d+$")


def embedding_groups(feature_names: Sequence[str] | None) -> np.ndarray | None:
    """Column indices of each pooled encoder vector, one row per (depth, statistic); None when
    the table has none. Every vector of one encoder has the encoder's width."""
    if feature_names is None:
        return None
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(feature_names):
        match = EMBEDDING_COLUMN.match(name)
        if match:
            groups.setdefault(match.group(1), []).append(index)
    if not groups:
        return None
    widths = {len(columns) for columns in groups.values()}
    if len(widths) != 1:
        raise ValueError(f"pooled encoder vectors of different widths {sorted(widths)}: {sorted(groups)}")
    return np.array(list(groups.values()), dtype=np.int64)


def normalize_embeddings(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each clip's pooled encoder vectors standardized over their own values (a layer norm of
    the vector, no learned scale): what a recording's level and channel add to every value of a
    vector goes, its shape stays. Uses the clip alone, so it is not transductive."""
    X = np.array(X, dtype=np.float32)
    vectors = X[:, groups]
    mean = vectors.mean(axis=-1, keepdims=True)
    std = vectors.std(axis=-1, keepdims=True)
    X[:, groups] = (vectors - mean) / (std + 1e-6)
    return X


def _pipeline(model_type: str, params: Section, seed: int,
              feature_names: Sequence[str] | None = None) -> Pipeline:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    # The column treatments are the linear probe's params (model.logreg); the other families have none.
    probe = params if isinstance(params, LogregParams) else None
    steps = []
    groups = embedding_groups(feature_names) if probe is not None and probe.embedding_norm else None
    if groups is not None:
        steps.append(("normalize_embeddings", FunctionTransformer(normalize_embeddings, kw_args={"groups": groups})))
    steps.append(("scale", StandardScaler()))
    weights = std_column_weights(feature_names, probe.std_weight) if probe is not None else None
    if weights is not None:
        steps.append(("weigh", FunctionTransformer(weigh_columns, kw_args={"weights": weights})))
    return Pipeline([*steps, ("model", _classifier(model_type, params, seed))])


class SklearnEstimator:
    """A scikit-learn family's pipeline; ``params`` is its block ``model.<type>`` (the schema
    class or the mapping, kept typed as ``self.params``)."""

    def __init__(self, model_type: str, params: Section | dict[str, Any], input_shape: tuple[int, ...],
                 n_classes: int, seed: int, pipeline: Pipeline | None = None,
                 feature_names: Sequence[str] | None = None):
        if len(input_shape) != 1:
            raise ValueError(f"{model_type} needs a tabular input (n, features); got per-row shape {input_shape}")
        params = model_block(model_type, params)
        self.model_type = model_type
        self.params = params
        self.input_shape = tuple(input_shape)
        self.n_classes = n_classes
        self.seed = seed
        if feature_names is not None and len(feature_names) != self.input_shape[0]:
            raise ValueError(f"{model_type}: {len(feature_names)} feature names for {self.input_shape[0]} columns")
        self.pipeline = _pipeline(model_type, params, seed, feature_names) if pipeline is None else pipeline

    @property
    def flavor_model(self) -> Pipeline:
        """The object to log with ``mlflow.sklearn`` (scaler included)."""
        return self.pipeline

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.input_shape[0]:
            raise ValueError(f"{self.model_type}: expected input (n, {self.input_shape[0]}), got {X.shape}")
        return X

    def fit(self, X, y, X_val=None, y_val=None, sample_weight: np.ndarray | None = None) -> dict[str, list]:
        X = self._check(X)
        y = np.asarray(y, dtype=np.int64)
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if self.model_type == "mlp":
            return self._fit_mlp(X, y, X_val, y_val, sample_weight)
        self.pipeline.fit(X, y, model__sample_weight=sample_weight)
        return {}

    def _fit_mlp(self, X, y, X_val, y_val, sample_weight) -> dict[str, list]:
        from sklearn.metrics import log_loss
        from tqdm.auto import tqdm

        scaler = self.pipeline[:-1]  # StandardScaler (and column weights)
        mlp = self.pipeline.named_steps["model"]  # an MLPClassifier
        X_scaled = scaler.fit_transform(X)
        mlp.set_params(batch_size=max(1, min(self.params.batch_size, len(X))))
        has_val = X_val is not None and y_val is not None and len(y_val) > 0
        stop_early = has_val and self.params.early_stopping
        if has_val:
            X_val_scaled = scaler.transform(self._check(X_val))
            y_val = np.asarray(y_val, dtype=np.int64)
        classes = np.arange(self.n_classes)
        patience = self.params.patience
        history: dict[str, list] = {"epoch": [], "loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        best_loss, best_state, epochs_without_gain = np.inf, None, 0
        for epoch in tqdm(range(self.params.max_iter), desc="mlp epochs", unit="epoch", leave=False):
            mlp.partial_fit(X_scaled, y, sample_weight=sample_weight, classes=classes)
            train_proba = mlp.predict_proba(X_scaled)
            history["epoch"].append(epoch)
            history["loss"].append(float(log_loss(y, train_proba, labels=classes)))
            history["accuracy"].append(float(np.mean(train_proba.argmax(1) == y)))
            if not has_val:
                history["val_loss"].append(float("nan"))
                history["val_accuracy"].append(float("nan"))
                continue
            val_proba = mlp.predict_proba(X_val_scaled)
            val_loss = float(log_loss(y_val, val_proba, labels=classes))
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(float(np.mean(val_proba.argmax(1) == y_val)))
            if val_loss < best_loss - 1e-4:
                best_loss, best_state, epochs_without_gain = val_loss, copy.deepcopy(mlp), 0
            else:
                epochs_without_gain += 1
                if stop_early and epochs_without_gain >= patience:
                    break
        if stop_early and best_state is not None:
            self.pipeline.steps[-1] = ("model", best_state)
        return history

    def predict_proba(self, X) -> np.ndarray:
        X = self._check(X)
        partial = self.pipeline.predict_proba(X)
        # A class absent from the training rows gets probability 0 instead of shifting columns.
        probabilities = np.zeros((len(X), self.n_classes), dtype=np.float64)
        probabilities[:, self.pipeline.classes_.astype(int)] = partial
        return probabilities

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        import joblib

        joblib.dump(self.pipeline, folder / "pipeline.joblib")
        meta = {"model_type": self.model_type, "params": self.params.as_dict(), "input_shape": list(self.input_shape),
                "n_classes": self.n_classes, "seed": self.seed}
        (folder / "estimator.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "SklearnEstimator":
        folder = Path(folder)
        import joblib

        meta_path = folder / "estimator.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        model_type = meta["model_type"]
        params = model_block(model_type, meta["params"], str(meta_path))
        # The fitted pipeline is passed in: no unfitted one is built (and no other family imported).
        return cls(model_type, params, tuple(meta["input_shape"]), meta["n_classes"], meta["seed"],
                   pipeline=joblib.load(folder / "pipeline.joblib"))


def build(model_type: str, params: Section | dict[str, Any], input_shape: tuple[int, ...], n_classes: int,
          seed: int, feature_names: Sequence[str] | None = None) -> SklearnEstimator:
    return SklearnEstimator(model_type, params, input_shape, n_classes, seed, feature_names=feature_names)


def load(folder: str | os.PathLike) -> SklearnEstimator:
    return SklearnEstimator.load(folder)
