"""Summaries of T Monte Carlo samples (numpy only): what :class:`edgekit.runtime.MCPrediction` reports.

For class probabilities ``probs [T, C]`` of one input (:func:`summarize`) or ``[N, T, C]`` of N
inputs (:func:`summarize_classes`), in float64:

- ``mean``: the mean probabilities (the MC prediction);
- ``std``: their population standard deviation over the samples (as the Hands-On ML chapter 11
  text's ``y_probas.std(axis=0)``);
- ``entropy``: the entropy of ``mean`` in nats (total predictive uncertainty);
- ``mutual_information``: entropy minus the mean per-sample entropy (BALD: the part due to the
  model's uncertainty, 0 when all samples agree).

Each summary is a function of the per-sample outputs only, so summaries of other output kinds
(a regression output's mean, variance and interval) sit beside these with the same shape of
arguments. They are written with few numpy calls: they run inside every prediction, and at small
T the call overhead is most of their cost.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ClassSummary", "summarize", "summarize_classes"]

_EPS = 1e-12  # log(0) guard; probabilities below it contribute ~0 to the entropy anyway


class ClassSummary(tuple):
    """``(mean [N, C], std [N, C], entropy [N], mutual_information [N])``, float64."""

    __slots__ = ()

    def __new__(cls, mean, std, entropy, mutual_information):
        return tuple.__new__(cls, (mean, std, entropy, mutual_information))

    mean = property(lambda self: self[0])
    std = property(lambda self: self[1])
    entropy = property(lambda self: self[2])
    mutual_information = property(lambda self: self[3])


def summarize(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(mean, std, entropy, mutual information) of ``probs`` ``[T, C]`` (one input), in float64."""
    p = probs.astype(np.float64)
    t = p.shape[0]
    mean = p.sum(axis=0) / t
    d = p - mean
    std = np.sqrt(np.einsum("tc,tc->c", d, d) / t)
    entropy = -float(mean @ np.log(mean + _EPS))
    expected = -float(np.vdot(p, np.log(p + _EPS))) / t
    return mean, std, entropy, max(0.0, entropy - expected)


def summarize_classes(probs: np.ndarray) -> ClassSummary:
    """The summaries of ``probs`` ``[N, T, C]`` (N inputs, T samples each), in float64."""
    n, t = probs.shape[0], probs.shape[1]
    if n == 1 and t > 1:  # one input (the latency-critical case): 2-D products, a few microseconds fewer
        mean, std, entropy, mi = summarize(probs[0])
        return ClassSummary(mean[None], std[None], np.array([entropy]), np.array([mi]))
    p = probs.astype(np.float64)
    if t == 1:
        # One sample: no spread, and the mean per-sample entropy is the entropy itself.
        mean = p.reshape(n, -1)
        entropy = -np.einsum("nc,nc->n", mean, np.log(mean + _EPS))
        return ClassSummary(mean, np.zeros_like(mean), entropy, np.zeros(n))
    mean = p.sum(axis=1) / t
    d = p - mean[:, None]
    std = np.sqrt(np.einsum("ntc,ntc->nc", d, d) / t)
    entropy = -np.einsum("nc,nc->n", mean, np.log(mean + _EPS))
    expected = -np.einsum("ntc,ntc->n", p, np.log(p + _EPS)) / t
    return ClassSummary(mean, std, entropy, np.maximum(entropy - expected, 0.0))
