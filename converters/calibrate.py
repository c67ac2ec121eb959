"""Fit the post-processing an exported file carries: temperature, abstention threshold, noise variance.

Both are fitted on a **held-out split** (neither the test set nor the int8 calibration inputs), on
the converted file's own MC samples, so they describe that file: its quantization, its sampling,
its T. The runtime applies them (:mod:`edgekit.runtime.calibration`).

>>> from edgekit.converters.calibrate import fit_temperature, fit_abstention
>>> fit = fit_temperature(per_sample_probs, labels)     # [N, T, C] held-out samples, N labels
>>> fit.applied, fit.calibration.to_dict(), fit.before["ece"], fit.after["ece"]
>>> noise = fit_noise_variance(value_samples, targets)  # [N, T, k] held-out samples, [N, k] targets
>>> noise.noise_variance, noise.after["coverage"]

How the temperature is fitted
-----------------------------
``tau(x) = exp(a + b * MI(x))`` with ``b >= 0`` (:class:`~edgekit.runtime.calibration.Temperature`)
minimizes the held-out negative log-likelihood of the mean of the calibrated samples, by damped
Newton steps projected onto ``b >= 0`` (two parameters; the gradient is exact). With
``mi_aware=False``, ``b = 0``: one temperature for every input.

Why the temperature depends on MI: ``bench/trust.py`` measures the demo's files on rotated test
images (the protocol of Ovadia et al. 2019). A single temperature fitted in distribution
(``tau < 1`` there: the compressed MC model is under-confident) sharpens every input, the shifted
ones too, and raises their ECE above the float model's. Letting the temperature grow with the
samples' disagreement keeps the in-distribution fix and softens the shifted inputs, which
disagree more: the calibrated int8 file's ECE under rotation is then on average below the float
model's. Only in-distribution data is needed for the fit. ``docs/trust.md`` has the figures.

Value outputs
-------------
MC samples of a value output spread only by the model's (epistemic) uncertainty; the targets
also carry noise. An interval from the samples alone under-covers noisy targets badly. So a
homoscedastic output gets a **noise variance** per value (Gal's tau^-1), fitted by maximizing the
held-out Gaussian likelihood of the targets under N(MC mean, epistemic variance + noise variance)
(:func:`fit_noise_variance`). A heteroscedastic output (one that predicts its own log-variance)
gets a **variance scale** on its total predictive variance instead, fitted the same way
(:func:`fit_variance_scale`; the optimum has a closed form).

A fit that does not lower the held-out NLL is not applied (``applied`` False, and ``reason``
says so); a held-out split under :data:`MIN_EXAMPLES` examples is refused unless forced, with a
:class:`SmallHeldOutWarning`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from edgekit.errors import InvalidArgumentError
from edgekit.runtime.calibration import Abstention, Temperature, mutual_information
from edgekit.runtime.metrics import brier, ece, gaussian_nll, nll, rmse

__all__ = [
    "MIN_EXAMPLES",
    "CalibrationFit",
    "SmallHeldOutWarning",
    "ValueFit",
    "check_labelled_samples",
    "check_split_size",
    "class_metrics",
    "fit_abstention",
    "fit_noise_variance",
    "fit_temperature",
    "fit_variance_scale",
    "risk_coverage",
    "risk_coverage_summary",
]

MIN_EXAMPLES = 500
"""Smallest held-out split for a fit: with fewer, a 15-bin ECE or an abstention quantile moves by
more than the effect being corrected."""

_EPS = 1e-12


class SmallHeldOutWarning(UserWarning):
    """The held-out split is smaller than :data:`MIN_EXAMPLES`; the fit was forced anyway."""


@dataclass(frozen=True)
class CalibrationFit:
    """What :func:`fit_temperature` found.

    Attributes:
        calibration: the temperature to store in the file, or None when it is not applied.
        fitted: the temperature the fit found (also when it is not applied).
        applied: whether the fit lowered the held-out NLL.
        reason: one line for the report.
        examples: held-out inputs used; ``samples``: MC samples per input.
        before, after: accuracy, ECE, NLL and Brier of the held-out MC mean without and with it.
    """

    calibration: Temperature | None
    fitted: Temperature
    applied: bool
    reason: str
    examples: int
    samples: int
    before: dict
    after: dict

    def to_dict(self) -> dict:
        out = asdict(self)
        out["calibration"] = None if self.calibration is None else self.calibration.to_dict()
        out["fitted"] = self.fitted.to_dict()
        return out


def class_metrics(mean_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, ECE (15 bins), NLL and Brier of MC mean probabilities ``[N, C]``."""
    return {
        "accuracy": float((mean_probs.argmax(axis=1) == labels).mean()),
        "ece": ece(mean_probs, labels),
        "nll": nll(mean_probs, labels),
        "brier": brier(mean_probs, labels),
    }


def check_split_size(n: int, what: str, kind: str, min_examples: int, force: bool) -> None:
    """Refuse a split of ``n`` < ``min_examples`` examples for a ``kind`` fit, or with ``force``
    warn (:class:`SmallHeldOutWarning`) and go on."""
    if n >= min_examples:
        return
    message = (f"a {what} split of {n} examples is too small for a stable {kind} fit. "
               f"Expected at least {min_examples}. Received: {n}")
    if not force:
        raise InvalidArgumentError(message[0].upper() + message[1:])
    warnings.warn(message, SmallHeldOutWarning, stacklevel=4)


def check_labelled_samples(probs, labels, *, what: str = "held-out", min_examples: int = MIN_EXAMPLES,
                           force: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``probs`` as ``[N, T, C]`` float64 and ``labels`` as ``[N]`` int64, after checking them.

    Raises:
        InvalidArgumentError: a wrong shape, non-finite or out-of-range probabilities, labels
            that are not integers in ``[0, C)``, or fewer than ``min_examples`` inputs without
            ``force`` (with ``force`` a :class:`SmallHeldOutWarning` is issued instead).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] == 0 or p.shape[1] == 0 or p.shape[2] < 2:
        raise InvalidArgumentError(
            f"Expected {what} MC probabilities of shape (inputs, samples, classes) with 2 or more classes. "
            f"Received: shape {p.shape}"
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1 + 1e-4:
        raise InvalidArgumentError(f"Expected {what} probabilities in [0, 1]. Received: values outside it or NaN/Inf")
    y = np.asarray(labels)
    if y.shape != (p.shape[0],):
        raise InvalidArgumentError(f"Expected one {what} label per input ({p.shape[0]}). Received: shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise InvalidArgumentError(f"Expected integer {what} labels. Received: non-integer or NaN values")
    elif y.dtype.kind not in "iu":
        raise InvalidArgumentError(f"Expected integer {what} labels. Received: dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[2]:
        raise InvalidArgumentError(
            f"Expected {what} labels in [0, {p.shape[2] - 1}] (the model's classes). Received: labels in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    check_split_size(p.shape[0], what, "calibration", min_examples, force)
    return p, y


def _nll_and_grad(log_p: np.ndarray, mi: np.ndarray, y: np.ndarray, a: float, b: float) -> tuple[float, np.ndarray]:
    """Held-out NLL of the calibrated MC mean and its exact gradient in ``(a, b)``.

    Computed in the log domain: a label every sample gives ~0 probability must not be clipped
    (a clipped value and an unclipped gradient disagree).
    """
    n, t = len(y), log_p.shape[1]
    beta = np.exp(-(a + b * mi))  # 1 / tau per input
    z = log_p * beta[:, None, None]
    z -= z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))  # [N, T]
    rows = np.arange(n)
    log_q_y = z[rows, :, y] - log_norm  # log of each calibrated sample's label probability, [N, T]
    top = log_q_y.max(axis=1, keepdims=True)
    w = np.exp(log_q_y - top)
    log_mean_y = (top[:, 0] + np.log(w.sum(axis=1))) - math.log(t)
    value = float(-log_mean_y.mean())
    # d log q_y / d beta = log p_y - E_q[log p]; the mean over samples is weighted by q_y.
    q = np.exp(z - log_norm[..., None])
    expected = (q * log_p).sum(axis=-1)
    dlog = log_p[rows, :, y] - expected
    w /= w.sum(axis=1, keepdims=True)
    dbeta = -(w * dlog).sum(axis=1) / n  # d NLL / d beta_n
    # d beta / da = -beta, d beta / db = -beta * mi.
    return value, np.array([float((dbeta * -beta).sum()), float((dbeta * -beta * mi).sum())])


def _minimize(log_p, mi, y, mi_aware: bool) -> tuple[float, float]:
    """Minimize the held-out NLL over ``(a, b)`` with ``b >= 0`` (``b = 0`` if not ``mi_aware``).

    Damped Newton steps (the Hessian by finite differences of the exact gradient: the two
    parameters have very different scales, where plain gradient descent crawls), each step
    halved until the NLL falls, and projected onto ``b >= 0``.
    """
    free = 2 if mi_aware else 1
    x = np.zeros(2)
    value, grad = _nll_and_grad(log_p, mi, y, *x)
    for _ in range(50):
        g = grad[:free]
        h = np.empty((free, free))
        for i in range(free):
            d = np.zeros(2)
            d[i] = 1e-4
            h[:, i] = (_nll_and_grad(log_p, mi, y, *(x + d))[1][:free] - g) / 1e-4
        h = 0.5 * (h + h.T) + 1e-9 * np.eye(free)
        try:
            direction = -np.linalg.solve(h, g)
            if float(direction @ g) >= 0:  # not a descent direction: fall back to the gradient
                direction = -g
        except np.linalg.LinAlgError:
            direction = -g
        step, improved = 1.0, False
        while step > 1e-6:
            cand = x.copy()
            cand[:free] += step * direction
            cand[1] = max(cand[1], 0.0)
            cand[0] = min(max(cand[0], -math.log(1e3) + 1e-6), math.log(1e3) - 1e-6)
            new_value, new_grad = _nll_and_grad(log_p, mi, y, *cand)
            if new_value < value:
                improved = True
                break
            step *= 0.5
        if not improved:
            break
        converged = value - new_value < 1e-10
        x, value, grad = cand, new_value, new_grad
        if converged:
            break
    return float(x[0]), float(x[1])


def fit_temperature(probs, labels, *, mi_aware: bool = True, min_examples: int = MIN_EXAMPLES,
                    force: bool = False) -> CalibrationFit:
    """Fit the temperature of one class output on held-out MC samples (see the module docstring).

    Args:
        probs: ``[N, T, C]`` per-sample class probabilities of the converted file on held-out inputs.
        labels: ``[N]`` integer labels.
        mi_aware: let the temperature grow with each input's mutual information (default), or fit
            one temperature for every input.
        min_examples, force: see :func:`check_labelled_samples`.
    """
    p, y = check_labelled_samples(probs, labels, min_examples=min_examples, force=force)
    log_p = np.log(p + _EPS)
    mi = mutual_information(p)
    a, b = _minimize(log_p, mi, y, mi_aware)
    fitted = Temperature(a, b)
    before = class_metrics(p.mean(axis=1), y)
    after = class_metrics(fitted.apply(p, mi).mean(axis=1), y)
    applied = after["nll"] < before["nll"]
    kind = f"temperature {fitted.temperature:.3f}" + (f", MI slope {b:.3f}" if mi_aware else "")
    if applied:
        reason = (f"{kind}: held-out NLL {before['nll']:.4f} -> {after['nll']:.4f}, "
                  f"ECE {before['ece']:.4f} -> {after['ece']:.4f}")
    else:
        reason = (f"not applied: the fit ({kind}) does not lower the held-out NLL "
                  f"({before['nll']:.4f} -> {after['nll']:.4f})")
    return CalibrationFit(
        calibration=fitted if applied else None, fitted=fitted, applied=applied, reason=reason,
        examples=int(p.shape[0]), samples=int(p.shape[1]), before=before, after=after,
    )


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(coverage, risk, AURC): the selective risk when the inputs with the lowest ``scores`` are kept.

    ``scores`` is an uncertainty score (higher = less sure), ``correct`` whether each prediction
    is right. Coverage k/N keeps the k least uncertain inputs; risk is their error rate. AURC is
    the mean risk over k = 1..N (the area under the risk-coverage curve; lower is better).
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    order = np.argsort(s, kind="stable")
    errors = np.cumsum(~c[order])
    k = np.arange(1, len(s) + 1)
    coverage, risk = k / len(s), errors / k
    return coverage, risk, float(risk.mean())


def risk_coverage_summary(scores: np.ndarray, correct: np.ndarray, *, points: int = 20) -> dict:
    """The risk-coverage curve at ``points`` evenly spaced coverages (1/points .. 1) and its AURC,
    as JSON values: ``{"aurc", "curve": [[coverage, risk], ...]}``."""
    coverage, risk, aurc = risk_coverage(scores, correct)
    n = len(coverage)
    at = [max(1, round(n * (i + 1) / points)) - 1 for i in range(points)]
    return {"aurc": aurc, "curve": [[float(coverage[i]), float(risk[i])] for i in at]}


def fit_abstention(mean_probs, labels, *, score: str = "entropy", target_coverage: float = 0.9) -> Abstention:
    """The threshold on ``score`` that keeps ``target_coverage`` of the held-out inputs.

    Args:
        mean_probs: ``[N, C]`` calibrated MC mean probabilities on held-out inputs.
        labels: ``[N]`` integer labels (for the held-out selective accuracy).
        score: ``"entropy"`` (predictive entropy), ``"mutual_information"`` needs samples and is
            not accepted here, or ``"confidence"`` (1 - the top class's probability).
        target_coverage: share of inputs to answer, in (0, 1].
    """
    if score not in Abstention.SCORES or score == "mutual_information":
        raise InvalidArgumentError(
            f"Expected score 'entropy' or 'confidence' for a threshold on mean probabilities. Received: score={score!r}"
        )
    if (isinstance(target_coverage, bool) or not isinstance(target_coverage, (int, float))
            or not 0 < target_coverage <= 1):
        raise InvalidArgumentError(f"Expected `target_coverage` in (0, 1]. Received: {target_coverage!r}")
    m = np.asarray(mean_probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    s = Abstention.score_of(score, m)
    # Keep every input whose score is <= the threshold: the target_coverage quantile of the scores.
    threshold = float(np.quantile(s, target_coverage, method="higher")) if target_coverage < 1 else float(s.max())
    kept = s <= threshold
    return Abstention(
        score=score, threshold=threshold, target_coverage=float(target_coverage),
        heldout_coverage=float(kept.mean()),
        heldout_selective_accuracy=float((m[kept].argmax(axis=1) == y[kept]).mean()) if kept.any() else 0.0,
    )


@dataclass(frozen=True)
class ValueFit:
    """What :func:`fit_noise_variance` or :func:`fit_variance_scale` found for one value output.

    Attributes:
        noise_variance: per value, the homoscedastic noise variance (None for a scale fit).
        variance_scale: the factor on a heteroscedastic output's total variance (None for a
            noise-variance fit).
        examples, samples: held-out inputs and MC samples per input.
        before, after: held-out RMSE and Gaussian NLL (per value) without and with the fit.
    """

    noise_variance: tuple[float, ...] | None
    variance_scale: float | None
    examples: int
    samples: int
    before: dict
    after: dict

    def to_dict(self) -> dict:
        return asdict(self)


def _value_arrays(samples, targets, what: str, min_examples: int, force: bool) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(samples, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if s.ndim == 2:
        s = s[..., None]
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim != 3 or s.shape[0] == 0 or s.shape[1] < 2:
        raise InvalidArgumentError(
            f"Expected {what} value samples of shape (inputs, samples >= 2, values). "
            f"Received: shape {np.shape(samples)}"
        )
    if y.shape != (s.shape[0], s.shape[2]):
        raise InvalidArgumentError(
            f"Expected {what} targets of shape ({s.shape[0]}, {s.shape[2]}) (one per input and value). "
            f"Received: shape {np.shape(targets)}"
        )
    if not np.isfinite(s).all():
        raise InvalidArgumentError(f"Expected finite {what} value samples. Received: NaN or Inf")
    if not np.isfinite(y).all():
        raise InvalidArgumentError(f"Expected finite {what} targets. Received: NaN or Inf")
    check_split_size(s.shape[0], what, "variance", min_examples, force)
    return s, y


def fit_noise_variance(samples, targets, *, min_examples: int = MIN_EXAMPLES, force: bool = False) -> ValueFit:
    """The homoscedastic noise variance of each value that maximizes the held-out likelihood.

    Args:
        samples: ``[N, T, k]`` (or ``[N, T]`` for one value) MC samples of the converted file.
        targets: ``[N, k]`` (or ``[N]``) held-out targets.
    """
    s, y = _value_arrays(samples, targets, "held-out", min_examples, force)
    mean, epi = s.mean(axis=1), s.var(axis=1)
    noise = []
    for j in range(s.shape[2]):
        resid2 = (y[:, j] - mean[:, j]) ** 2
        scale = max(float(resid2.mean()), 1e-300)

        def nll_of(log_v, j=j, resid2=resid2):
            v = epi[:, j] + math.exp(log_v)
            return float(0.5 * (np.log(v) + resid2 / v).mean())

        # Golden-section search on log(noise variance): the optimum lies below the mean squared
        # residual (no epistemic part would give exactly that) and above 1e-12 of it.
        lo, hi = math.log(scale) + math.log(1e-12), math.log(scale) + 1.0
        g = (math.sqrt(5) - 1) / 2
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        for _ in range(80):
            if nll_of(c) < nll_of(d):
                hi = d
            else:
                lo = c
            c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        noise.append(math.exp(0.5 * (lo + hi)))
    nv = np.array(noise)
    before = {"rmse": rmse(mean, y), "nll": gaussian_nll(mean, epi, y)}
    after = {"rmse": before["rmse"], "nll": gaussian_nll(mean, epi + nv, y)}
    return ValueFit(tuple(float(v) for v in nv), None, int(s.shape[0]), int(s.shape[1]), before, after)


def fit_variance_scale(samples, aleatoric_variance, targets, *, min_examples: int = MIN_EXAMPLES,
                       force: bool = False) -> ValueFit:
    """The factor on a heteroscedastic output's total predictive variance that maximizes the
    held-out likelihood: ``mean(residual^2 / total variance)`` (the Gaussian NLL's closed-form optimum).

    Args:
        samples: ``[N, T, k]`` MC samples of the mean.
        aleatoric_variance: ``[N, T, k]`` the variance each sample predicts (exp of its log-variance).
        targets: ``[N, k]`` held-out targets.
    """
    s, y = _value_arrays(samples, targets, "held-out", min_examples, force)
    av = np.asarray(aleatoric_variance, dtype=np.float64).reshape(s.shape)
    if not np.isfinite(av).all() or av.min() < 0:
        raise InvalidArgumentError("Expected finite, non-negative predicted variances. Received: NaN, Inf or < 0")
    mean = s.mean(axis=1)
    total = s.var(axis=1) + av.mean(axis=1)
    floor = 1e-12 * max(float(y.var()), 1e-12)
    factor = float((((y - mean) ** 2) / np.maximum(total, floor)).mean())
    before = {"rmse": rmse(mean, y), "nll": gaussian_nll(mean, total, y)}
    after = {"rmse": before["rmse"], "nll": gaussian_nll(mean, total * factor, y)}
    return ValueFit(None, factor, int(s.shape[0]), int(s.shape[1]), before, after)
