"""Probabilities that mean what they say: temperature scaling, calibration error, coverage.

A classifier's probabilities are rescaled by one temperature ``T`` (``softmax(log p / T)``)
fitted on out-of-fold predictions of held-out speakers, so a clip answered with 80% is right
about 80% of the time on speakers the model never saw. Ranking, and so every label, is
unchanged. Every error figure here is measured on rows whose temperature was fitted without
them (:func:`cross_fitted`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ser.training.metrics import scores

ECE_BINS = 15
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimizes the negative log-likelihood of ``labels`` (class indices)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, dtype=np.int64)
    if not len(labels):
        raise ValueError("fit_temperature needs at least one prediction")
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-np.log(np.clip(with_temperature(probabilities, np.exp(log_t))[rows, labels], 1e-12, None)).mean())

    found = minimize_scalar(nll, bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the share-weighted gap between confidence and accuracy over ``bins``
    equal-width confidence bins."""
    table = reliability(probabilities, labels, bins)
    total = sum(row["count"] for row in table)
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per confidence bin: its edges, the clips in it, their mean confidence and accuracy."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = []
    for index in range(bins):
        inside = which == index
        count = int(inside.sum())
        table.append({"low": float(edges[index]), "high": float(edges[index + 1]), "count": count,
                      "confidence": float(confidence[inside].mean()) if count else 0.0,
                      "accuracy": float(correct[inside].mean()) if count else 0.0})
    return table


def cross_fitted(probabilities: np.ndarray, labels: np.ndarray, groups: Sequence) -> tuple[np.ndarray, dict]:
    """Each group's rows rescaled by a temperature fitted on the other groups' rows (groups:
    cross-validation folds, or held-out corpora); returns the rescaled rows and the temperatures."""
    groups = np.asarray(groups)
    calibrated = np.empty_like(np.asarray(probabilities, dtype=np.float64))
    temperatures = {}
    for group in np.unique(groups):
        inside = groups == group
        if inside.all():
            raise ValueError("cross_fitted needs at least two groups")
        temperature = fit_temperature(probabilities[~inside], labels[~inside])
        calibrated[inside] = with_temperature(probabilities[inside], temperature)
        temperatures[str(group)] = round(temperature, 4)
    return calibrated, temperatures


def coverage(probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str],
             thresholds: Sequence[float]) -> list[dict[str, float]]:
    """For each ``min_confidence``: the share of clips answered (top probability at or above it)
    and the UAR and accuracy on those."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    names = np.asarray(classes, dtype=object)
    rows = []
    for threshold in thresholds:
        answered = confidence >= threshold
        row = {"min_confidence": float(threshold), "coverage": float(answered.mean())}
        if answered.any():
            measured = scores(names[np.asarray(labels)[answered]], names[probabilities[answered].argmax(axis=1)])
            row.update({"uar": measured["uar"], "accuracy": measured["accuracy"]})
        rows.append(row)
    return rows


def summary(probabilities: np.ndarray, labels: np.ndarray, groups: Sequence, classes: Sequence[str],
            thresholds: Sequence[float]) -> dict[str, Any]:
    """ECE before and after cross-fitted temperature scaling, the temperatures, coverage and the
    reliability table after scaling."""
    calibrated, temperatures = cross_fitted(probabilities, labels, groups)
    return {"ece_before": expected_calibration_error(probabilities, labels),
            "ece": expected_calibration_error(calibrated, labels),
            "temperatures": temperatures,
            "coverage": coverage(calibrated, labels, classes, thresholds),
            "reliability": reliability(calibrated, labels)}
