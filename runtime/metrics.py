"""Calibration metrics shared by the conversion report and the profiler (numpy only).

- :func:`nll`: mean negative log-likelihood of the true labels.
- :func:`ece`: expected calibration error over ``ECE_BINS`` equal-width bins of the top-class
  confidence (Guo et al. 2017), the figure the reports quote.
- :func:`brier`: mean Brier score (squared error of the probability vector against the one-hot label).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ECE_BINS", "nll", "ece", "brier"]

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
