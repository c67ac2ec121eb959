"""Quality metrics shared by the conversion report, the profiler and calibration (numpy only).

- :func:`nll`: mean negative log-likelihood of the true labels.
- :func:`ece`: expected calibration error over ``ECE_BINS`` equal-width bins of the top-class
  confidence (Guo et al. 2017), the figure the reports quote.
- :func:`brier`: mean Brier score (squared error of the probability vector against the one-hot label).

For value (regression) outputs: :func:`rmse`, :func:`gaussian_nll` (the targets under the
predictive mean and variance) and :func:`interval_coverage` (the share of targets inside the
predicted central interval).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ECE_BINS", "brier", "ece", "gaussian_nll", "interval_coverage", "nll", "rmse"]

ECE_BINS = 15


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities clipped at 1e-12)."""
    # Clip before the log: a single zero probability would make the NLL infinite.
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.mean(np.log(p)))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width bins of the top-class confidence."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean Brier score: the squared distance between the probabilities and the one-hot label."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def rmse(mean: np.ndarray, targets: np.ndarray) -> float:
    """Root mean squared error of predicted values against targets (over every value)."""
    d = np.asarray(mean, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt((d * d).mean()))


def gaussian_nll(mean: np.ndarray, variance: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of the targets under N(mean, variance), per value (nats).

    The variance is floored at 1e-12 of the targets' variance scale: a zero predicted variance
    (every MC sample equal, no aleatoric part) would make a near-miss infinitely unlikely.
    """
    y = np.asarray(targets, dtype=np.float64)
    v = np.maximum(np.asarray(variance, dtype=np.float64), 1e-12 * max(float(y.var()), 1e-12))
    r = y - np.asarray(mean, dtype=np.float64)
    return float(0.5 * (np.log(2 * np.pi * v) + r * r / v).mean())


def interval_coverage(low: np.ndarray, high: np.ndarray, targets: np.ndarray) -> float:
    """The share of targets inside their predicted interval ``[low, high]``."""
    y = np.asarray(targets, dtype=np.float64)
    return float(((y >= low) & (y <= high)).mean())
