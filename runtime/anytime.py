"""Anytime MC: stop sampling an input once its answer is settled (numpy only).

Most inputs are easy: after a few MC samples the top class is already certain, and the other
90 samples of a fixed T=100 only polish the probabilities. :class:`Anytime` draws
``min_samples`` first, then ``every`` more at a time, and stops an input as soon as

- **class output**: the top class of the mean leads the runner-up by more than ``k`` standard
  errors of their difference. With ``d_s = p_s[top] - p_s[runner-up]`` over the samples so far,
  that is ``mean(d) > k * std(d) / sqrt(t)`` (``std`` with ``ddof=1``): a paired test, so the
  samples' shared noise cancels, which a test on the two means apart would not see. With a
  ``tolerance`` the output is settled also once the standard error of the top class's mean
  probability is below it (the ``tolerance`` stop of :meth:`edgekit.runtime.MCModel.predict`);
- **value output**: the standard error of every value's mean is below ``tolerance`` (in the
  output's units), or without one, below ``value_share`` of that value's predictive standard
  deviation (the samples' spread plus the noise variance the file carries): the MC error is then
  a negligible part of the answer's own uncertainty. Without a noise variance that is
  ``t >= 1 / value_share**2`` samples (100 by default).

An input with several outputs stops when every output is settled, or at the cap.

>>> from edgekit.runtime import MCModel
>>> from edgekit.runtime.anytime import Anytime
>>> pred = model.predict(x, anytime=True)                       # k=2, from 8 samples, every 4
>>> pred = model.predict(x, anytime=Anytime(k=3.0), budget_ms=5)  # and never past the budget
>>> pred.samples                                                 # what each input used

The rule is checked on the file's raw MC samples (a temperature is applied to each sample and
does not change which class a sample favours; the answer itself is the calibrated mean).

The error it allows
-------------------
Each check is a one-sided test at ``k`` standard errors; a normal approximation gives 2.3% at
k=2 *per check of an input whose two top classes are really tied*, but most inputs are not, and
what matters is how often the early answer differs from the answer of many samples. Measured on
the demo's int8 file (docs/trust.md, bench/trust.py): at the defaults the top class differs from
the T=100 answer on about 0.1-0.2% of the Fashion-MNIST test inputs, for ~11.5 samples per
input on average instead of 100; accuracy and ECE are unchanged within their noise, the NLL of
the early means is a little worse (fewer samples average out less noise). Raise ``k`` (or
``min_samples``) for fewer disagreements and more samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgekit.errors import InvalidArgumentError

__all__ = ["Anytime", "class_settled"]


def class_settled(probs: np.ndarray, k: float) -> np.ndarray:
    """Whether each input's top class leads its runner-up by more than ``k`` standard errors of
    their paired difference: ``probs`` ``[..., t, C]`` (t >= 2) -> ``[...]`` bools.

    A difference with no spread at all (every sample agrees exactly) is settled when it is
    positive: there is no noise left to average out.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = p.shape[-2]
    mean = p.mean(axis=-2)
    two = np.argpartition(mean, -2, axis=-1)[..., -2:]  # the two largest, in either order
    pair = np.take_along_axis(p, two[..., None, :], axis=-1)  # [..., t, 2]
    lead = np.take_along_axis(mean, two, axis=-1)
    first = lead[..., 1] >= lead[..., 0]
    d = np.where(first[..., None], pair[..., 1] - pair[..., 0], pair[..., 0] - pair[..., 1])  # top - runner-up
    gap = d.mean(axis=-1)
    se = d.std(axis=-1, ddof=1) / math.sqrt(t)
    return gap > k * se


def _one_settled(p: np.ndarray, k: float) -> bool:
    """:func:`class_settled` for one input's ``[t, C]`` probabilities. It runs between the
    sampler's chunks, where numpy's per-call cost would be most of the check: the few samples of
    an early check are summed in Python, more in two numpy products."""
    sums = p.sum(axis=0).tolist()
    top = sums.index(max(sums))
    sums[top] = -math.inf
    run = sums.index(max(sums))
    d = p[:, top].astype(np.float64) - p[:, run]
    t = d.shape[0]
    if t <= 24:
        values = d.tolist()
        gap = sum(values) / t
        var = sum([(v - gap) * (v - gap) for v in values]) / (t - 1)
    else:
        total = float(d.sum())
        gap = total / t
        var = max(float(np.dot(d, d)) - total * gap, 0.0) / (t - 1)
    return gap > k * math.sqrt(var / t)


@dataclass(frozen=True)
class Anytime:
    """The settled-answer stop rule (see the module docstring).

    Attributes:
        k: standard errors by which the top class must lead the runner-up (> 0).
        min_samples: samples drawn before the first check (>= 2: one sample has no spread).
        every: samples drawn between checks (>= 1).
        value_share: for a value output without ``tolerance``: the standard error of its mean
            must be below this share of its predictive standard deviation, in (0, 1).
    """

    k: float = 2.0
    min_samples: int = 8
    every: int = 4
    value_share: float = 0.1

    def __post_init__(self):
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (math.isfinite(k) and k > 0):
            raise InvalidArgumentError(f"Expected `k` to be a finite number > 0. Received: k={self.k!r}")
        for name, low in (("min_samples", 2), ("every", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise InvalidArgumentError(f"Expected `{name}` to be an integer >= {low}. Received: {name}={v!r}")
        share = self.value_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise InvalidArgumentError(f"Expected `value_share` in (0, 1). Received: value_share={share!r}")

    @classmethod
    def of(cls, anytime) -> Anytime | None:
        """``predict``'s ``anytime`` argument as a rule: False/None -> None, True -> the defaults."""
        if anytime is None or anytime is False:
            return None
        if anytime is True:
            return cls()
        if isinstance(anytime, cls):
            return anytime
        raise InvalidArgumentError(
            f"Expected `anytime` to be True, False or an edgekit.runtime.anytime.Anytime. Received: {anytime!r}"
        )

    def settled(self, plan, rows: np.ndarray, tolerance: float | None = None) -> bool:
        """Whether every output of ``plan`` is settled, from one input's sample rows ``[t, D]``."""
        t = rows.shape[0]
        if t < 2:
            return False
        for spec in plan.outputs:
            a, b = spec.columns
            if spec.task == "classification":
                p = rows[:, a:b]
                if spec.activation == "sigmoid":
                    p = np.concatenate([1.0 - p, p], axis=-1)
                if _one_settled(p, self.k):
                    continue
                if tolerance is not None:
                    top = int(p.mean(axis=0).argmax())
                    if float(p[:, top].std(ddof=1)) / math.sqrt(t) < tolerance:
                        continue
                return False
            v = rows[:, a:b].astype(np.float64)
            se = v.std(axis=0, ddof=1) / math.sqrt(t)
            if tolerance is not None:
                if float(se.max()) >= tolerance:
                    return False
                continue
            var = v.var(axis=0)
            if spec.variance_columns is not None:
                va, vb = spec.variance_columns
                var = var + np.exp(rows[:, va:vb].astype(np.float64)).mean(axis=0) * spec.variance_scale
            elif spec.noise_variance is not None:
                var = var + np.asarray(spec.noise_variance, dtype=np.float64)
            if not bool(np.all(se <= self.value_share * np.sqrt(var))):  # <=: no spread at all is settled
                return False
        return True
