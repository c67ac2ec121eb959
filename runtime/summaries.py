"""Summaries of T Monte Carlo samples (numpy only): what :class:`edgekit.runtime.MCPrediction` reports.

For class probabilities ``probs [T, C]`` of one input (:func:`summarize`) or ``[N, T, C]`` of N
inputs (:func:`summarize_classes`), in float64:

- ``mean``: the mean probabilities (the MC prediction);
- ``std``: their population standard deviation over the samples (as the Hands-On ML chapter 11
  text's ``y_probas.std(axis=0)``);
- ``entropy``: the entropy of ``mean`` in nats (total predictive uncertainty);
- ``mutual_information``: entropy minus the mean per-sample entropy (BALD: the part due to the
  model's uncertainty, 0 when all samples agree).

For a value output (:func:`summarize_value_output`): the MC mean, the epistemic standard
deviation, the aleatoric part (a noise variance the file carries, or the variance a
heteroscedastic head predicts), the total, and a central predictive interval.

:func:`summarize_outputs` gives one :class:`ClassOutput` or :class:`ValueOutput` per output of a
file's plan from its sample rows (every output of one sample side by side, see
:class:`edgekit.runtime.plan.OutputSpec`). A class output's temperature, when the file carries one,
is applied to each sample before averaging (:mod:`edgekit.runtime.calibration`).

They are written with few numpy calls: they run inside every prediction, and at small T the call
overhead is most of their cost.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgekit.runtime.prediction import ClassOutput, ValueOutput

__all__ = [
    "ClassSummary",
    "class_probs",
    "concat_outputs",
    "standard_error",
    "summarize",
    "summarize_class_output",
    "summarize_classes",
    "summarize_lean",
    "summarize_outputs",
    "summarize_value_output",
]

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


# ------------------------------------------------------------------ per-output summaries


def class_probs(spec, rows: np.ndarray) -> np.ndarray:
    """The class probabilities ``[..., C]`` of class output ``spec`` in sample rows ``[..., D]``
    (a sigmoid unit p becomes the two probabilities ``[1 - p, p]``)."""
    a, b = spec.columns
    part = rows[..., a:b]
    if spec.activation == "sigmoid":
        return np.concatenate([1.0 - part, part], axis=-1)
    return part


def summarize_class_output(spec, probs: np.ndarray, calibrated: bool) -> ClassOutput:
    """The summary of class output ``spec`` from its per-sample probabilities ``[N, T, C]``."""
    cal = spec.calibration if calibrated else None
    if cal is not None:
        probs = cal.apply(probs)
    s = summarize_classes(probs)
    mean = s.mean
    predicted = mean.argmax(axis=1)
    abstain = None if spec.abstain is None else spec.abstain.abstain(mean, s.mutual_information)
    return ClassOutput._of(spec.name, mean.astype(np.float32), s.std.astype(np.float32), predicted,
                           mean[np.arange(len(mean)), predicted].astype(np.float32), s.entropy,
                           s.mutual_information, spec.class_names, cal is not None, abstain)


def _norm_cdf(z: np.ndarray) -> np.ndarray:
    # numpy has no erf. Abramowitz & Stegun 26.2.17: absolute error below 7.5e-8, far under any
    # interval tolerance that matters here.
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.2316419 * a)
    poly = t * (0.319381530 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429))))
    upper = poly * np.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))
    return np.where(z >= 0, 1.0 - upper, upper)


def _mixture_quantile(mu: np.ndarray, sd: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of the equal-weight Gaussian mixture ``mean_t N(mu_t, sd_t^2)``, per value:
    ``mu``, ``sd`` ``[N, T, k]`` -> ``[N, k]``. Bisection, bracketed by the components' own
    extreme quantiles; 48 halvings of a bracket of ~16 sd leave ~1e-13 sd."""
    span = 8.0 * sd.max(axis=1)
    lo, hi = mu.min(axis=1) - span, mu.max(axis=1) + span
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        below = _norm_cdf((mid[:, None, :] - mu) / sd).mean(axis=1) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def summarize_value_output(spec, rows: np.ndarray) -> ValueOutput:
    """The summary of value output ``spec`` from sample rows ``[N, T, D]``.

    The predictive distribution of one input is the mixture of its T samples' Gaussians
    ``N(mu_t, var_t)``: ``var_t`` is the file's noise variance (homoscedastic), or the variance the
    sample itself predicts (``exp`` of its log-variance, heteroscedastic; times the file's variance
    scale). Its variance is the epistemic variance (the samples' spread) plus the mean aleatoric
    variance; its central interval comes from the mixture's quantiles. Without any aleatoric part
    the interval is the samples' own quantiles (it then covers only the model's uncertainty).
    """
    n, t = rows.shape[0], rows.shape[1]
    a, b = spec.columns
    mu = rows[:, :, a:b].astype(np.float64)
    mean = mu.mean(axis=1)
    d = mu - mean[:, None]
    epi_var = (d * d).mean(axis=1)
    shape = (n, *spec.shape)
    lo_q, hi_q = (1.0 - spec.interval) / 2, (1.0 + spec.interval) / 2
    if spec.variance_columns is not None:
        va, vb = spec.variance_columns
        ale = np.exp(rows[:, :, va:vb].astype(np.float64)) * spec.variance_scale
    elif spec.noise_variance is not None:
        ale = np.broadcast_to(np.asarray(spec.noise_variance, dtype=np.float64), mu.shape)
    else:
        ale = None
    if ale is None:
        low, high = (np.quantile(mu, [lo_q, hi_q], axis=1) if t > 1 else (mean, mean))
        epi_sd = np.sqrt(epi_var)
        return ValueOutput(spec.name, mean.reshape(shape), epi_sd.reshape(shape), None, epi_sd.reshape(shape),
                           low.reshape(shape), high.reshape(shape), spec.interval)
    ale_var = ale.mean(axis=1)
    sd = np.sqrt(np.maximum(ale, 1e-300))
    low, high = _mixture_quantile(mu, sd, lo_q), _mixture_quantile(mu, sd, hi_q)
    return ValueOutput(spec.name, mean.reshape(shape), np.sqrt(epi_var).reshape(shape),
                       np.sqrt(ale_var).reshape(shape), np.sqrt(epi_var + ale_var).reshape(shape),
                       low.reshape(shape), high.reshape(shape), spec.interval)


def summarize_outputs(plan, rows: np.ndarray, calibrated: bool) -> tuple:
    """One summary per output of ``plan`` from sample rows ``[N, T, D]``."""
    out = []
    for spec in plan.outputs:
        if spec.task == "classification":
            out.append(summarize_class_output(spec, class_probs(spec, rows), calibrated))
        else:
            out.append(summarize_value_output(spec, rows))
    return tuple(out)


def concat_outputs(parts: list[tuple]) -> tuple:
    """The per-output summaries of several input groups as one (their rows concatenated)."""
    if len(parts) == 1:
        return parts[0]
    merged = []
    for group in zip(*parts):
        first = group[0]
        values = {}
        for f in dataclasses.fields(first):
            v = getattr(first, f.name)
            values[f.name] = np.concatenate([getattr(g, f.name) for g in group]) if isinstance(v, np.ndarray) else v
        merged.append(type(first)(**values))
    return tuple(merged)


def standard_error(plan, rows: np.ndarray) -> float:
    """The largest standard error of a mean over the outputs of ``plan``, from one input's sample
    rows ``[t, D]``: the top class's mean probability for a class output, every value's mean for a
    value output. What a ``tolerance`` stops on. Infinite below 2 samples."""
    t = rows.shape[0]
    if t < 2:
        return math.inf
    worst = 0.0
    for spec in plan.outputs:
        if spec.task == "classification":
            p = class_probs(spec, rows)
            top = int(p.mean(axis=0).argmax())
            worst = max(worst, float(p[:, top].std(ddof=1)))
        else:
            a, b = spec.columns
            worst = max(worst, float(rows[:, a:b].std(axis=0, ddof=1).max()))
    return worst / math.sqrt(t)


def summarize_lean(spec, probs: np.ndarray, calibrated: bool, flat: list[float] | None = None) -> ClassOutput:
    """The summary of one input's samples ``[T, C]`` of a softmax output ``spec``, with the fewest
    numpy calls (the latency-critical case: at small T each numpy call costs about as much as all
    the arithmetic, more so right after an invoke has filled the caches with weights). At T=1 in
    plain Python on the C values (``flat``: ``probs[0].tolist()`` when the caller has it); a
    temperature at T>1 takes the general path (:func:`summarize_class_output`)."""
    cal = spec.calibration if calibrated else None
    t = probs.shape[0]
    if t > 1:
        if cal is not None:
            return summarize_class_output(spec, probs[None], calibrated)
        mean, std, entropy, mi = summarize(probs)
        top = int(mean.argmax())
        abstain = None if spec.abstain is None else spec.abstain.abstain(mean[None], np.array([mi]))
        return ClassOutput._of(spec.name, mean[None].astype(np.float32), std[None].astype(np.float32),
                               np.array([top]), np.array([mean[top]], dtype=np.float32), np.array([entropy]),
                               np.array([mi]), spec.class_names, False, abstain)
    if flat is None:
        flat = probs[0].tolist()
    if cal is not None:
        # One sample has no spread: MI = 0, so its temperature is the file's base one.
        inv = 1.0 / cal.temperature
        powered = [(p + _EPS) ** inv for p in flat]
        total = sum(powered)
        flat = [p / total for p in powered]
        probs = np.array([flat], dtype=np.float32)
    c = len(flat)
    top = flat.index(max(flat))
    log = math.log
    # One sample: no spread, and no mutual information (the mean per-sample entropy is the entropy).
    entropy = -sum([p * log(p + _EPS) for p in flat])
    abstain = None
    if spec.abstain is not None:
        a = spec.abstain
        score = entropy if a.score == "entropy" else (1.0 - flat[top] if a.score == "confidence" else 0.0)
        abstain = np.array([score > a.threshold])
    # Fields of one row are views of three small arrays instead of six separate ones.
    f32 = np.zeros(c + 1, dtype=np.float32)  # std (zeros), then the confidence
    f32[c] = flat[top]
    f64 = np.array([entropy, 0.0])  # entropy, mutual information
    return ClassOutput._of(spec.name, probs, f32[None, :c], np.array([top]), f32[c:], f64[:1], f64[1:],
                           spec.class_names, cal is not None, abstain)
