"""The one definition of every score the project reports: train (per fold, logged to MLflow),
evaluate (``metrics/evaluate.json``), the cross-corpus figure, the report and the gate.

UAR (unweighted average recall) is macro recall over the classes present in the scored clips'
true labels: a corpus without ``calm`` is not charged a zero recall for it, and a fold scored
in training gives exactly the number evaluate recomputes from the saved predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, recall_score

METRICS = ("uar", "accuracy", "macro_f1")


def scores(y_true, y_pred) -> dict[str, float]:
    """UAR, accuracy and macro-F1 of predicted labels (names or class indices)."""
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    present = sorted(np.unique(y_true))
    return {"uar": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))}


def mean_std(values_by_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over per-fold score dicts (population std, as reported)."""
    return {name: {"mean": float(np.mean([f[name] for f in values_by_fold])),
                   "std": float(np.std([f[name] for f in values_by_fold]))} for name in METRICS}


def per_class(y_true, y_pred, classes: list[str]) -> dict[str, dict[str, float]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str), labels=classes, zero_division=0)
    return {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)}


def by_fold(oof: pd.DataFrame) -> list[dict[str, float]]:
    return [{"fold": int(fold), **scores(rows["y_true"], rows["y_pred"])} for fold, rows in oof.groupby("fold")]


def summarize(oof: pd.DataFrame, classes: list[str], protocol: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of ``metrics/evaluate.json`` from out-of-fold predictions."""
    folds = by_fold(oof)
    spread = mean_std(folds)
    summary: dict[str, Any] = {
        **scores(oof["y_true"], oof["y_pred"]),
        "protocol": protocol,
        "speaker_dependent": protocol == "random",
        "n_clips": int(len(oof)),
        "n_folds": len(folds),
        "folds": {name: {"values": [round(f[name], 6) for f in folds], **spread[name]} for name in METRICS},
        "per_class": per_class(oof["y_true"], oof["y_pred"], classes),
    }
    if "corpus" in oof.columns and oof["corpus"].nunique() > 1:
        summary["per_corpus"] = {
            str(corpus): {**scores(rows["y_true"], rows["y_pred"]), "n_clips": int(len(rows)),
                          "folds": mean_std(by_fold(rows))}
            for corpus, rows in oof.groupby("corpus")}
    summary.update(extra or {})
    return summary


def lookup(summary: dict[str, Any], dotted: str) -> float:
    """A score by dotted name (``per_corpus.ravdess.uar``) in an evaluate.json summary."""
    value: Any = summary
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return float(value)
