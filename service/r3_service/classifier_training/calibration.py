"""Calibration and scoring of P(OPENENDED): temperature, ECE, reliability bins, abstentions."""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T > 0 minimising the log-loss of sigmoid(logits / T) (golden section)."""
    z = np.asarray(logits, dtype=np.float64)
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0

    def nll(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -s * z / np.exp(log_t))))

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2.0))


def reliability_bins(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin of P(OPENENDED): count, mean probability, observed OPENENDED rate."""
    p = np.asarray(proba, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_proba": float(p[mask].mean()) if n else float("nan"),
                "rate": float(np.asarray(y)[mask].mean()) if n else float("nan"),
            }
        )
    return out


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """ECE of P(OPENENDED): sum over bins of |observed rate - mean probability| * share."""
    total = len(proba)
    return float(
        sum(
            b["n"] / total * abs(b["rate"] - b["mean_proba"])
            for b in reliability_bins(proba, y, bins)
            if b["n"]
        )
    )


def bootstrap_ci(
    correct: np.ndarray, draws: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 ``correct``."""
    c = np.asarray(correct, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = c[rng.integers(0, len(c), size=(draws, len(c)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def in_band(proba: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Whether each probability lies inside the abstain band [low, high)."""
    p = np.asarray(proba, dtype=np.float64)
    return (p >= band[0]) & (p < band[1])


def decision_metrics(
    proba: np.ndarray, y: np.ndarray, threshold: float, band: tuple[float, float]
) -> dict[str, Any]:
    """Accuracy, confusion matrix (rows true C/O, columns predicted), ECE, abstentions."""
    p = np.asarray(proba, dtype=np.float64)
    yy = np.asarray(y, dtype=np.int64)
    pred = (p >= threshold).astype(np.int64)
    correct = pred == yy
    band_mask = in_band(p, band)
    low, high = bootstrap_ci(correct)
    eps = 1e-12
    return {
        "n": int(len(yy)),
        "accuracy": round(float(correct.mean()), 4),
        "accuracy_ci95": [round(low, 4), round(high, 4)],
        "confusion_matrix": [
            [int(np.sum((yy == t) & (pred == q))) for q in (0, 1)] for t in (0, 1)
        ],
        "ece": round(expected_calibration_error(p, yy), 4),
        "log_loss": round(
            float(-np.mean(yy * np.log(p + eps) + (1 - yy) * np.log(1 - p + eps))), 4
        ),
        "abstain_rate": round(float(band_mask.mean()), 4),
        "accuracy_outside_band": round(float(correct[~band_mask].mean()), 4)
        if (~band_mask).any()
        else None,
        "accuracy_inside_band": round(float(correct[band_mask].mean()), 4)
        if band_mask.any()
        else None,
    }
