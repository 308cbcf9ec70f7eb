"""Calibration and decision metrics, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from r3_service.classifier_training import calibration as C


def test_ece_by_hand() -> None:
    # bin [0.2, 0.3): p 0.2, 0.2 with labels 0, 1 -> rate 0.5, gap 0.3, share 0.5
    # bin [0.8, 0.9): p 0.8, 0.8 with labels 1, 1 -> rate 1.0, gap 0.2, share 0.5
    p = np.array([0.2, 0.2, 0.8, 0.8])
    y = np.array([0, 1, 1, 1])
    assert C.expected_calibration_error(p, y) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    bins = C.reliability_bins(p, y)
    assert [b["n"] for b in bins] == [0, 0, 2, 0, 0, 0, 0, 0, 2, 0]
    assert C.expected_calibration_error(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0


def test_temperature_shrinks_overconfident_logits() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=2000)
    logit = np.where(y == 1, 1.0, -1.0) + rng.normal(size=2000)
    assert C.fit_temperature(10.0 * logit, y) > 3.0
    assert 0.5 < C.fit_temperature(logit, y) < 2.0


def test_decision_metrics_counts() -> None:
    p = np.array([0.1, 0.4, 0.6, 0.9, 0.55])
    y = np.array([0, 1, 1, 1, 0])
    m = C.decision_metrics(p, y, threshold=0.5, band=(0.35, 0.65))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["abstain_rate"] == pytest.approx(3 / 5)
    assert m["accuracy_outside_band"] == 1.0
    assert m["accuracy_inside_band"] == pytest.approx(1 / 3, abs=1e-4)  # rounded to 4 digits
    low, high = m["accuracy_ci95"]
    assert 0.0 <= low <= 0.6 <= high <= 1.0


def test_bootstrap_interval_narrows_with_n() -> None:
    small = C.bootstrap_ci(np.array([1, 0] * 10))
    large = C.bootstrap_ci(np.array([1, 0] * 1000))
    assert small[0] < large[0] <= 0.5 <= large[1] < small[1]
