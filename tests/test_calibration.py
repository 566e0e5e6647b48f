"""Temperature scaling, calibration error and coverage (ser.training.calibration), and the calibrated
default model: probabilities rescaled in the bundle, the figure written by the evaluate stage."""

from __future__ import annotations

import numpy as np
import pytest

from ser.training.calibration import (coverage, cross_fitted, expected_calibration_error, fit_temperature, reliability,
                             with_temperature)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _overconfident(n: int = 4000, sharpen: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated), probabilities softmax(sharpen z)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(n, 4))
    truth = _softmax(logits)
    labels = np.array([rng.choice(4, p=row) for row in truth])
    return _softmax(sharpen * logits), labels


def test_temperature_keeps_every_answer_and_recovers_the_sharpening():
    probabilities, labels = _overconfident()
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    rescaled = with_temperature(probabilities, temperature)
    np.testing.assert_array_equal(rescaled.argmax(axis=1), probabilities.argmax(axis=1))
    np.testing.assert_allclose(rescaled.sum(axis=1), 1.0)
    assert expected_calibration_error(rescaled, labels) < 0.03 < expected_calibration_error(probabilities, labels)
    np.testing.assert_allclose(with_temperature(probabilities, 1.0), probabilities, atol=1e-9)


def test_ece_and_coverage_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # two bins in use: confidence 0.9 with accuracy 0.5, confidence 0.6 with accuracy 1.0
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    table = reliability(probabilities, labels)
    assert sum(row["count"] for row in table) == 4 and len(table) == 15
    rows = coverage(probabilities, labels, ["a", "b"], [0.5, 0.7, 0.95])
    assert [row["coverage"] for row in rows] == [1.0, 0.5, 0.0]
    assert rows[1]["accuracy"] == 0.5 and rows[1]["uar"] == pytest.approx(0.5)  # one a right, one b wrong
    assert "uar" not in rows[2]


def test_cross_fitting_never_uses_a_groups_own_labels():
    probabilities, labels = _overconfident(n=900)
    groups = np.repeat(["a", "b", "c"], 300)
    calibrated, temperatures = cross_fitted(probabilities, labels, groups)
    assert set(temperatures) == {"a", "b", "c"}
    flipped = labels.copy()
    flipped[groups == "a"] = (flipped[groups == "a"] + 1) % 4  # group a's own labels changed
    again, _ = cross_fitted(probabilities, flipped, groups)
    np.testing.assert_array_equal(again[groups == "a"], calibrated[groups == "a"])
    assert not np.array_equal(again[groups == "b"], calibrated[groups == "b"])
    with pytest.raises(ValueError, match="at least two groups"):
        cross_fitted(probabilities, labels, np.zeros(len(labels)))
