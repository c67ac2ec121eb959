"""Latency and accuracy profiling of an edgekit ``.tflite`` on the machine it runs on.

MC dropout trades latency for quality: T stochastic passes give a better mean and an uncertainty,
and cost more. This module measures both sides so you can pick T for a latency budget:

>>> from edgekit.runtime.profiling import profile_model
>>> report = profile_model("model.tflite", threads=(1, 2), samples=(1, 10, 30, 100),
...                        runs=100, budget_ms=5.0)
>>> report.recommended.samples, report.point(2, 30).p99_ms

For each (threads, T) it runs ``warmup`` unmeasured predictions, then ``runs`` measured ones, each
``MCModel.predict(x, samples=T)`` of a single input: exactly what ``edgekit predict`` runs, through
the file's one :class:`~edgekit.runtime.plan.SignaturePlan` (the strategy at that T, ``trunk+head``
or ``full``, is reported with each point; a fixed-batch file, the ``batch`` metadata key, draws T
in multiples of its sampler's batch, so each T asked is rounded up to one and the profile reports
the T that ran). It reports p50/p90/p99/max, the trunk and sampler parts
(timed apart with :meth:`~edgekit.runtime.MCModel.time_parts`), the process's peak RSS, the file
size and an estimate of the tensor arena (:func:`estimate_arena_bytes`). With ``runtime=True`` a
second, separately loaded ``MCModel`` is timed in alternation with the first (``runtime_p50_ms``):
the two agree within the machine's noise, and a gap between them is noise, not the profiler.

Given labelled data (``x``, ``y``), it also measures MC accuracy, negative log-likelihood and
expected calibration error (15 bins) against T, with the file's temperature applied as
``predict`` applies it. The recommended T (:func:`recommend`) is then the smallest T on the
accuracy and ECE plateau whose p99 fits the budget; without data it is the largest T whose p99
fits. "Fits" uses a 95% upper confidence bound of the p99, not the point estimate.

For a value (regression) output (``output=``, or the file's first output), the data's targets
give RMSE, Gaussian NLL and the coverage of the central predictive interval against T
(:func:`value_curve`), and the recommended T comes from the NLL/coverage plateau instead.

Only numpy, the standard library and LiteRT are used, so ``edgekit profile`` runs on the device.
Timings are of *this* machine: profile on the target itself for the target's numbers.
"""

from __future__ import annotations

import hashlib
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InvalidArgumentError
from edgekit.runtime.inspect import estimate_arena_bytes, model_dtypes, model_ops
from edgekit.runtime.mc import MCModel
from edgekit.runtime.metrics import ECE_BINS, ece, interval_coverage, nll, rmse
from edgekit.runtime.summaries import summarize_value_output

__all__ = [
    "ECE_BINS",
    "AccuracyPoint",
    "LatencyPoint",
    "ModelProfile",
    "Recommendation",
    "ValuePoint",
    "accuracy_curve",
    "estimate_arena_bytes",
    "mc_probabilities",
    "model_dtypes",
    "model_ops",
    "percentile_stats",
    "profile_model",
    "recommend",
    "value_curve",
]



# ---------------------------------------------------------------------------------------------
# Results (frozen values; to_dict gives the JSON documented in docs/profile-schema.md).


@dataclass(frozen=True)
class LatencyPoint:
    """Latency of one MC prediction (one input, T samples) with ``threads`` interpreter threads.

    The figures time :meth:`edgekit.runtime.MCModel.predict` (input checks, summary statistics
    and all). ``p99_upper_ms`` is a distribution-free 95% upper confidence bound of the p99 (see
    :func:`percentile_stats`); the recommendation uses it, not the noisy point estimate.
    ``runtime_p50_ms``/``runtime_p99_ms`` time the same call on a second, separately loaded
    model, in alternation with the first, or are None when that was not measured.

    ``strategy`` is what runs at this T (``"trunk+head"`` or ``"full"``); ``trunk_p50_ms`` is None
    for ``"full"``, and ``head_p50_ms`` is the signature run at batch T. ``latencies_ms`` holds
    every measured run (for histograms) and is left out of :meth:`to_dict`.
    """

    threads: int
    samples: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    p99_upper_ms: float
    trunk_p50_ms: float | None
    head_p50_ms: float
    runtime_p50_ms: float | None = None
    runtime_p99_ms: float | None = None
    strategy: str = "full"
    latencies_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


@dataclass(frozen=True)
class AccuracyPoint:
    """MC quality at T samples over ``examples`` labelled inputs.

    ``ece_se`` is the ECE's standard error over the inputs (a bootstrap, see :func:`accuracy_curve`;
    None when not measured); ``calibrated`` whether the file's temperature was applied, as the
    runtime applies it.
    """

    samples: int
    examples: int
    accuracy: float
    nll: float
    ece: float
    ece_se: float | None = None
    calibrated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ValuePoint:
    """MC quality of a value output at T samples over ``examples`` targets (``values`` values in all).

    ``rmse`` of the MC mean, ``nll`` the Gaussian negative log-likelihood per value under the
    predictive mean and total variance (None at T=1 without an aleatoric part: no spread) and
    ``nll_se`` its standard error over the values, ``coverage`` the share of targets inside the
    central ``level`` interval, summarized as :meth:`edgekit.runtime.MCModel.predict` does.
    """

    samples: int
    examples: int
    values: int
    rmse: float
    nll: float | None
    nll_se: float | None
    coverage: float
    level: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recommendation:
    """The T (and thread count) to use for the budget, and why. ``samples`` is None if none fits."""

    samples: int | None
    threads: int | None
    p99_ms: float | None
    p99_upper_ms: float | None
    budget_ms: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelProfile:
    """Everything measured for one model."""

    path: str
    model_bytes: int
    sha256: str
    quantization: str | None
    stochastic: str | None
    strategy: str  # "trunk+head" or "full": what runs at the largest T profiled
    arena_bytes: Mapping[int, int]  # T -> estimated tensor arena in bytes
    peak_rss_bytes: int
    latency: tuple[LatencyPoint, ...]
    accuracy: tuple[AccuracyPoint, ...] | None
    recommended: Recommendation
    output: str | None = None  # the output the quality curve measures (with data)
    values: tuple[ValuePoint, ...] | None = None  # the quality curve of a value output

    def point(self, threads: int, samples: int) -> LatencyPoint:
        for p in self.latency:
            if p.threads == threads and p.samples == samples:
                return p
        raise KeyError(f"No measurement for threads={threads}, samples={samples}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "model_bytes": self.model_bytes,
            "sha256": self.sha256,
            "quantization": self.quantization,
            "stochastic": self.stochastic,
            "strategy": self.strategy,
            "arena_bytes": [{"samples": t, "bytes": b} for t, b in sorted(self.arena_bytes.items())],
            "peak_rss_bytes": self.peak_rss_bytes,
            "latency": [p.to_dict() for p in self.latency],
            "accuracy": None if self.accuracy is None else [a.to_dict() for a in self.accuracy],
            "output": self.output,
            "values": None if self.values is None else [v.to_dict() for v in self.values],
            "recommended": self.recommended.to_dict(),
        }


# ---------------------------------------------------------------------------------------------
# Statistics.


def _upper_order_statistic(n: int, q: float = 0.99, confidence: float = 0.95) -> int:
    """Smallest k (1-based) with P(Binomial(n, q) <= k - 1) >= confidence, capped at n.

    The k-th smallest of n latencies is then >= the true q-quantile with that confidence, whatever
    the latency distribution (as long as runs are independent): fewer than k runs fell below the
    quantile. For q=0.99 and 95% this needs n >= 299; with fewer runs it is the max.
    """
    cdf = 0.0
    for k in range(n + 1):
        # log pmf of Binomial(n, q) at k, in logs so n in the thousands does not underflow
        log_pmf = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                   + k * math.log(q) + (n - k) * math.log1p(-q))
        cdf += math.exp(log_pmf)
        if cdf >= confidence:
            return min(k + 1, n)
    return n


def percentile_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of a list of latencies (numpy's linear-interpolated percentiles), and
    ``p99_upper_ms``: a distribution-free 95% upper confidence bound of the p99 (an order
    statistic; the max when there are fewer than 299 runs)."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        raise InvalidArgumentError("Expected at least one latency. Received: an empty list")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    upper = float(np.sort(a)[_upper_order_statistic(a.size) - 1])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "p99_upper_ms": upper}


def mc_probabilities(model_or_path, x: np.ndarray, max_samples: int, *, threads: int = 1, seed: int = 0,
                     rows_per_invoke: int = 4096, output: str | None = None) -> np.ndarray:
    """Per-sample probabilities ``[N, max_samples, C]`` for every input of ``x`` (float32).

    Run by :meth:`edgekit.runtime.MCModel.sample` (an :class:`~edgekit.runtime.MCModel`, or a path
    loaded with ``threads`` and ``seed``). The first T samples of each input are an unbiased
    T-sample MC prediction, so one call gives the whole accuracy-vs-T curve. ``output`` names a
    class output (default: the first).
    """
    model = model_or_path
    if not isinstance(model, MCModel):
        model = _load(Path(model_or_path).read_bytes(), threads, seed)
    return model.sample(np.asarray(x, dtype=np.float32), max_samples, rows=rows_per_invoke, output=output)


def _load(data: bytes, threads: int, seed: int | None) -> MCModel:
    import warnings

    from edgekit.runtime.mc import UnverifiedModelWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedModelWarning)  # the profile reports missing metadata itself
        return MCModel(data, threads=threads, seed=seed)


def _ece_se(mean: np.ndarray, y: np.ndarray, bins: int, resamples: int = 200) -> float:
    """The bootstrap standard error of the ECE of ``mean`` over the inputs (seeded: the same data
    give the same figure). Each resample's ECE from three bincounts, so 200 cost little."""
    conf = mean.max(axis=1)
    correct = (mean.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rng = np.random.default_rng(0)
    n = len(y)
    values = np.empty(resamples)
    for r in range(resamples):
        pick = rng.integers(0, n, n)
        b = idx[pick]
        gap = np.bincount(b, correct[pick], bins) - np.bincount(b, conf[pick], bins)
        values[r] = np.abs(gap).sum() / n
    return float(values.std(ddof=1))


def accuracy_curve(probs: np.ndarray, y: np.ndarray, samples: Sequence[int], *, bins: int = ECE_BINS,
                   calibration=None) -> list[AccuracyPoint]:
    """Accuracy, NLL, ECE (and its standard error) of the mean of the first T samples, for each T
    in ``samples``; with ``calibration`` (a :class:`~edgekit.runtime.calibration.Temperature`)
    applied to each of those T samples first, as the runtime does at that T."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if probs.ndim != 3 or probs.shape[0] != y.shape[0]:
        raise InvalidArgumentError(f"Expected probs [N, T, C] and N labels. Received: probs {probs.shape}, labels {y.shape}")
    out = []
    for t in samples:
        if not 1 <= t <= probs.shape[1]:
            raise InvalidArgumentError(f"Expected 1 <= T <= {probs.shape[1]}. Received: T={t}")
        first = probs[:, :t]
        mean = (first if calibration is None else calibration.apply(first)).mean(axis=1)
        accuracy = float((mean.argmax(axis=1) == y).mean())
        out.append(AccuracyPoint(int(t), len(y), accuracy, nll(mean, y), ece(mean, y, bins),
                                 _ece_se(mean, y, bins), calibration is not None))
    return out


def value_curve(rows: np.ndarray, spec, targets: np.ndarray, samples: Sequence[int]) -> list[ValuePoint]:
    """RMSE, Gaussian NLL and interval coverage of value output ``spec`` from the first T sample rows
    ``[N, T_max, D]`` (:meth:`edgekit.runtime.MCModel.sample_rows`), for each T in ``samples``.

    Raises:
        InvalidArgumentError: targets that are not ``[N, *spec.shape]`` finite numbers, or a T
            outside ``[1, T_max]``.
    """
    n = rows.shape[0]
    y = np.asarray(targets)
    want = (n, *spec.shape)
    if y.dtype.kind not in "iuf" or y.shape[:1] != (n,) or y.size != math.prod(want):
        raise InvalidArgumentError(f"Expected targets of shape {want} for value output {spec.name!r} (one per input). "
                                   f"Received: shape {y.shape}")
    y = y.astype(np.float64).reshape(want)
    if not np.isfinite(y).all():
        raise InvalidArgumentError(f"Expected finite targets for value output {spec.name!r}. Received: NaN or Inf")
    # gaussian_nll's floor on the variance, so a zero spread cannot make a near-miss infinitely unlikely.
    floor = 1e-12 * max(float(y.var()), 1e-12)
    out = []
    for t in samples:
        if not 1 <= t <= rows.shape[1]:
            raise InvalidArgumentError(f"Expected 1 <= T <= {rows.shape[1]}. Received: T={t}")
        s = summarize_value_output(spec, rows[:, :t])
        nll_value = nll_se = None
        if t > 1 or s.aleatoric_std is not None:
            v = np.maximum(s.total_std.astype(np.float64) ** 2, floor)
            per = 0.5 * (np.log(2 * np.pi * v) + (y - s.mean) ** 2 / v)
            nll_value = float(per.mean())
            nll_se = float(per.std(ddof=1) / math.sqrt(per.size)) if per.size > 1 else 0.0
        out.append(ValuePoint(int(t), n, int(y.size), rmse(s.mean, y), nll_value, nll_se,
                              interval_coverage(s.low, s.high, y), float(spec.interval)))
    return out


def _value_plateau(values: Sequence[ValuePoint], fits: Mapping[int, LatencyPoint]) -> tuple[int | None, str]:
    """(T, why) for a value output: the smallest fitting T on the NLL/coverage plateau, else the
    fitting T with the lowest NLL; (None, "") when no point has an NLL."""
    scored = [v for v in values if v.nll is not None]
    if not scored:
        return None, ""
    best = min(scored, key=lambda v: (v.nll, v.samples))
    # Plateau: NLL within one standard error of the best, and coverage no further from the nominal
    # level than the best point's plus one binomial standard error of a coverage over its values.
    cov_se = math.sqrt(best.level * (1 - best.level) / best.values)
    gap = abs(best.coverage - best.level) + cov_se
    on = sorted(v.samples for v in scored if v.samples in fits and v.nll <= best.nll + (best.nll_se or 0.0)
                and abs(v.coverage - v.level) <= gap)
    if on:
        t = on[0]
        v = next(v for v in scored if v.samples == t)
        return t, (f"smallest T on the NLL/coverage plateau (NLL {v.nll:.4f} <= best {best.nll:.4f} + 1 SE "
                   f"{best.nll_se or 0.0:.4f}, {100 * v.coverage:.1f}% in the {100 * v.level:g}% interval)")
    candidates = [v for v in scored if v.samples in fits]
    if not candidates:
        return None, ""
    v = min(candidates, key=lambda v: (v.nll, v.samples))
    return v.samples, (f"the plateau (best NLL {best.nll:.4f} at T={best.samples}) does not fit the budget; "
                       f"T={v.samples} has the lowest NLL that does")


def recommend(latency: Sequence[LatencyPoint], budget_ms: float,
              accuracy: Sequence[AccuracyPoint] | None = None,
              values: Sequence[ValuePoint] | None = None) -> Recommendation:
    """Pick T for ``budget_ms``.

    A T "fits" when the 95% upper bound of its p99 (``p99_upper_ms``) is within the budget: the
    point p99 of a few hundred runs is too noisy to promise a p99 over the next thousand.
    With accuracy points: the smallest fitting T on the plateau of both accuracy and calibration:
    its accuracy within one standard error (``sqrt(a(1-a)/N)`` at the best T) of the best accuracy
    measured, and its ECE within one standard error (``ece_se`` of the lowest ECE, 0 when not
    measured) of the lowest ECE measured. A few samples can be as accurate as many and still be
    overconfident (a temperature below 1 sharpens a lone sample that averaging would soften), so
    accuracy alone would recommend too few. If no T on the plateau fits, the most accurate T that
    fits. With value points: the smallest fitting T whose NLL is within one standard error of the
    best NLL and whose interval coverage is no further from its level than the best point's plus
    one binomial standard error (the NLL/coverage plateau); if none fits, the fitting T with the
    lowest NLL. Without either: the largest T that fits. Among thread counts, the one with the
    lowest bound at that T.
    """
    if not budget_ms > 0:
        raise InvalidArgumentError(f"Expected a budget > 0 ms. Received: budget_ms={budget_ms}")
    fits: dict[int, LatencyPoint] = {}
    for p in latency:
        if p.p99_upper_ms <= budget_ms and (p.samples not in fits or p.p99_upper_ms < fits[p.samples].p99_upper_ms):
            fits[p.samples] = p
    if not fits:
        fastest = min(latency, key=lambda p: p.p99_upper_ms)
        return Recommendation(None, None, None, None, budget_ms,
                              f"no T fits: the lowest p99 bound, at T={fastest.samples} with {fastest.threads} "
                              f"thread(s), is {fastest.p99_upper_ms:.3g} ms > budget {budget_ms:g} ms")
    if values:
        t, why = _value_plateau(values, fits)
        if t is not None:
            p = fits[t]
            return Recommendation(t, p.threads, p.p99_ms, p.p99_upper_ms, budget_ms,
                                  f"{why} with p99 bound {p.p99_upper_ms:.3g} ms <= {budget_ms:g} ms")
    if accuracy:
        acc = {a.samples: a for a in accuracy}
        best = max(accuracy, key=lambda a: a.accuracy)
        se = math.sqrt(max(best.accuracy * (1 - best.accuracy), 0.0) / best.examples)
        plateau = best.accuracy - se
        calm = min(accuracy, key=lambda a: a.ece)
        ece_se = calm.ece_se or 0.0
        on_plateau = sorted(t for t in fits if t in acc and acc[t].accuracy >= plateau
                            and acc[t].ece <= calm.ece + ece_se)
        if on_plateau:
            t = on_plateau[0]
            p = fits[t]
            return Recommendation(t, p.threads, p.p99_ms, p.p99_upper_ms, budget_ms,
                                  f"smallest T on the accuracy and ECE plateau (accuracy {acc[t].accuracy:.4f} >= "
                                  f"best {best.accuracy:.4f} - 1 SE {se:.4f}; ECE {acc[t].ece:.4f} <= lowest "
                                  f"{calm.ece:.4f} + 1 SE {ece_se:.4f}"
                                  + (", calibrated" if acc[t].calibrated else "")
                                  + f") with p99 bound {p.p99_upper_ms:.3g} ms <= {budget_ms:g} ms")
        candidates = [t for t in fits if t in acc]
        if candidates:
            t = max(candidates, key=lambda s: (acc[s].accuracy, -s))
            p = fits[t]
            return Recommendation(t, p.threads, p.p99_ms, p.p99_upper_ms, budget_ms,
                                  f"the plateau (best accuracy {best.accuracy:.4f} at T={best.samples}) does not fit "
                                  f"the budget; T={t} is the most accurate that does (p99 bound {p.p99_upper_ms:.3g} ms)")
    t = max(fits)
    p = fits[t]
    return Recommendation(t, p.threads, p.p99_ms, p.p99_upper_ms, budget_ms,
                          f"largest T with p99 bound {p.p99_upper_ms:.3g} ms <= budget {budget_ms:g} ms")


def _output_named(plan, name: str | None):
    if name is None:
        return plan.output
    for o in plan.outputs:
        if o.name == name:
            return o
    raise InvalidArgumentError(f"Expected one of the outputs {[o.name for o in plan.outputs]}. Received: "
                               f"output={name!r}")


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


def _check_ints(name: str, values: Sequence[int], low: int = 1) -> tuple[int, ...]:
    vals = tuple(values)
    if not vals or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low for v in vals):
        raise InvalidArgumentError(f"Invalid value for `{name}`. Expected a non-empty list of integers >= {low}. "
                                   f"Received: {list(vals)}")
    return tuple(sorted({int(v) for v in vals}))


def profile_model(
    path: str | os.PathLike,
    *,
    threads: Sequence[int] = (1,),
    samples: Sequence[int] = (1, 10, 30, 100),
    runs: int = 100,
    warmup: int | None = None,
    budget_ms: float = 5.0,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    runtime: bool = True,
    output: str | None = None,
    calibrated: bool = True,
) -> ModelProfile:
    """Profile one ``.tflite`` (see the module docstring).

    Args:
        path: The model file.
        threads: Interpreter thread counts to try.
        samples: MC sample counts T to try.
        runs: Measured predictions per (threads, T).
        warmup: Unmeasured predictions first (default ``max(10, runs // 5)``).
        budget_ms: Latency budget for one MC prediction.
        x, y: Optional labelled data (float32 inputs shaped like the model input; integer labels
            of a class output, or targets ``[N, *shape]`` of a value output) for the quality curve:
            accuracy/NLL/ECE, or RMSE/Gaussian NLL/interval coverage; ``x[0]`` is also the input timed.
        output: The output ``y`` belongs to (default: the file's first output).
        seed: Seeds the numpy generator of mask-input models and the synthetic timing input.
        progress: Called with the number of predictions just done (for a progress bar).
        runtime: Also time each (threads, T) on a second, separately loaded model, in alternation
            with the first (``runtime_p50_ms``/``runtime_p99_ms``): a check that the figures are the
            machine's, not one model instance's.
        calibrated: apply the file's temperature (if it carries one) to the accuracy curve's
            samples, as ``predict`` does.
    """
    threads = _check_ints("threads", threads)
    samples = _check_ints("samples", samples)
    if not isinstance(runs, int) or runs < 1:
        raise InvalidArgumentError(f"Invalid value for `runs`. Expected an integer >= 1. Received: {runs!r}")
    # Each new T resizes the sampler's input and re-plans the arena; the first calls after that are slow.
    warmup = max(10, runs // 5) if warmup is None else int(warmup)
    data = Path(path).read_bytes()
    # Unseeded, as `edgekit predict` loads a file without --seed: a seed fixes the strategy (see
    # MCModel), and the timings must be of what a user's predict runs.
    models = {t: _load(data, t, None) for t in threads}
    others = {t: _load(data, t, None) for t in threads} if runtime else {}
    first = models[threads[0]]
    step = first.plan.static_batch("sampler") or 1
    samples = tuple(sorted({-(-s // step) * step for s in samples}))  # the T that predict(samples=T) runs
    meta = first.metadata or None
    in_shape = first.input.shape
    if x is not None:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim >= 1 and x.shape[1:] != in_shape and x.shape[0] and x[0].size == int(np.prod(in_shape)):
            x = x.reshape(len(x), *in_shape)
        if x.shape[1:] != in_shape:
            raise InvalidArgumentError(f"Expected data inputs shaped [N, {', '.join(map(str, in_shape))}]. "
                                       f"Received: {list(x.shape)}")
        x1 = x[:1]
    else:
        # A synthetic input inside the range the metadata records (absent or null: [0, 1]).
        low, high = ((meta or {}).get("input") or {}).get("range") or (0.0, 1.0)
        x1 = np.random.default_rng(seed).uniform(low, high, (1, *in_shape)).astype(np.float32)

    points = []
    perf = time.perf_counter
    for t in threads:
        model, other = models[t], others.get(t)
        for s in samples:
            for _ in range(warmup):
                model.predict(x1, samples=s)
                if other is not None:
                    other.predict(x1, samples=s)
            total_ms, other_ms = [], []
            for k in range(runs):
                # Alternate which model goes first, so a slow phase of the machine hits both alike.
                for m in ((model, other) if k % 2 == 0 else (other, model)):
                    if m is None:
                        continue
                    t0 = perf()
                    m.predict(x1, samples=s)
                    (total_ms if m is model else other_ms).append((perf() - t0) * 1e3)
            strategy = model.strategy_at(s)
            split = strategy == "trunk+head" and model.has_trunk
            parts = model.time_parts(samples=s, repeats=max(3, min(runs, 30)),
                                     parts=("trunk_ms", "head_ms") if split else
                                     ("head_ms",) if not model.has_trunk else ("full_batch_ms",))
            rt = None if other is None else np.percentile(other_ms, [50, 99])
            points.append(LatencyPoint(
                threads=t, samples=s, runs=runs, **percentile_stats(total_ms),
                trunk_p50_ms=parts["trunk_ms"] if split else None,
                head_p50_ms=parts["head_ms"] if split or not model.has_trunk else parts["full_batch_ms"],
                runtime_p50_ms=None if rt is None else float(rt[0]),
                runtime_p99_ms=None if rt is None else float(rt[1]),
                strategy=strategy, latencies_ms=tuple(total_ms),
            ))
            if progress is not None:
                progress((warmup + runs) * (2 if runtime else 1))

    accuracy = values = None
    spec = _output_named(first.plan, output)
    if x is not None and y is not None:
        if spec.task == "classification":
            y = np.asarray(y).reshape(-1)
            if len(y) != len(x):
                raise InvalidArgumentError(f"Expected one label per input. Received: {len(x)} inputs, {len(y)} labels")
            probs = mc_probabilities(_load(data, threads[-1], seed), x, max(samples), output=spec.name)
            cal = spec.calibration if calibrated else None
            accuracy = tuple(accuracy_curve(probs, y, samples, calibration=cal))
        else:
            y = np.asarray(y)
            if y.shape[:1] != (len(x),):
                raise InvalidArgumentError(f"Expected targets of shape {(len(x), *spec.shape)} for value output "
                                           f"{spec.name!r} (one per input). Received: shape {y.shape}")
            rows = _load(data, threads[-1], seed).sample_rows(x, max(samples))
            values = tuple(value_curve(rows, spec, y, samples))
        if progress is not None:
            progress(len(x))

    plan = first.plan
    arena = {}
    for s in samples:
        if first.strategy_at(s) == "full" and plan.has_trunk:
            arena[s] = estimate_arena_bytes(data, plan.full, s)
        else:
            arena[s] = estimate_arena_bytes(data, plan.sampler, s)  # `masked` when the runtime feeds it
            if plan.has_trunk:
                # trunk and sampler run one after the other: the arena must hold the larger of the two.
                arena[s] = max(arena[s], estimate_arena_bytes(data, plan.trunk, 1))
    quant = ((meta or {}).get("quantization") or {}).get("mode")
    return ModelProfile(
        path=str(path),
        model_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        quantization=quant,
        stochastic=(meta or {}).get("stochastic"),
        strategy=first.strategy_at(samples[-1]),
        arena_bytes=arena,
        peak_rss_bytes=_peak_rss_bytes(),
        latency=tuple(points),
        accuracy=accuracy,
        recommended=recommend(points, budget_ms, accuracy, values),
        output=spec.name if x is not None and y is not None else None,
        values=values,
    )
