"""Latency and accuracy profiling of an edgekit ``.tflite`` on the machine it runs on.

MC dropout trades latency for quality: T stochastic passes give a better mean and an uncertainty,
and cost more. This module measures both sides so you can pick T for a latency budget:

>>> from edgekit.runtime.profiling import profile_model
>>> report = profile_model("model.tflite", threads=(1, 2), samples=(1, 10, 30, 100),
...                        runs=100, budget_ms=5.0)
>>> report.recommended.samples, report.point(2, 30).p99_ms

For each (threads, T) it runs ``warmup`` unmeasured predictions, then ``runs`` measured ones, each
one MC prediction of a single input the way the runtime does it (docs/format.md): ``trunk`` once,
then ``head`` on T copies of the features (plus T fresh numpy keep-masks in mask-input mode), then
the mean of the T probability vectors. A model without ``trunk``/``head`` runs ``full`` on T copies.
Like ``MCModel`` (``rng="auto"``), an unseeded in-graph file with a ``masked`` signature runs
``masked`` instead of ``head`` (or ``full``), fed T fresh numpy keep-masks, not its ``RANDOM_UNIFORM``.
It reports p50/p90/p99/max, the trunk and head parts, the process's peak RSS, the file size and an
estimate of the tensor arena (:func:`estimate_arena_bytes`).

Given labelled data (``x``, ``y``), it also measures MC accuracy, negative log-likelihood and
expected calibration error (15 bins) against T. The recommended T (:func:`recommend`) is then the
smallest T on the accuracy plateau whose p99 fits the budget; without data it is the largest T
whose p99 fits. "Fits" uses a 95% upper confidence bound of the p99, not the point estimate.

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
from edgekit.runtime.mc import mask_plan, new_keep_masks
from edgekit.runtime.metadata import masked_twin, read_metadata, twin_mask_inputs
from edgekit.runtime.metrics import ECE_BINS, ece, nll

__all__ = [
    "LatencyPoint",
    "AccuracyPoint",
    "Recommendation",
    "ModelProfile",
    "profile_model",
    "recommend",
    "mc_probabilities",
    "accuracy_curve",
    "estimate_arena_bytes",
    "model_ops",
    "model_dtypes",
    "percentile_stats",
    "ECE_BINS",
]



def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - the fallback runtime on old devices
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


# ---------------------------------------------------------------------------------------------
# Results (frozen values; to_dict gives the JSON documented in docs/profile-schema.md).


@dataclass(frozen=True)
class LatencyPoint:
    """Latency of one MC prediction (one input, T samples) with ``threads`` interpreter threads.

    ``p99_upper_ms`` is a distribution-free 95% upper confidence bound of the p99 (see
    :func:`percentile_stats`); the recommendation uses it, not the noisy point estimate.
    ``runtime_p50_ms``/``runtime_p99_ms`` time the same prediction through
    :meth:`edgekit.runtime.MCModel.predict` (input checks, summary statistics and all), or are
    None when that was not measured.

    ``trunk_p50_ms`` is None when the model runs ``full`` only. ``latencies_ms`` holds every
    measured run (for histograms) and is left out of :meth:`to_dict`.
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
    latencies_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


@dataclass(frozen=True)
class AccuracyPoint:
    """MC quality at T samples over ``examples`` labelled inputs."""

    samples: int
    examples: int
    accuracy: float
    nll: float
    ece: float

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
    strategy: str  # "trunk+head" or "full"
    arena_bytes: Mapping[int, int]  # T -> estimated tensor arena in bytes
    peak_rss_bytes: int
    latency: tuple[LatencyPoint, ...]
    accuracy: tuple[AccuracyPoint, ...] | None
    recommended: Recommendation

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
            "recommended": self.recommended.to_dict(),
        }


# ---------------------------------------------------------------------------------------------
# Running one MC prediction the way the runtime does.


class _Runner:
    """Signature runners of one interpreter plus what is needed to feed them."""

    def __init__(self, tflite: bytes, meta: dict | None, threads: int, seed: int):
        interp = _interpreter_class()(model_content=tflite, num_threads=threads)
        self.signatures = interp.get_signature_list()
        self.strategy = "trunk+head" if {"trunk", "head"} <= set(self.signatures) else "full"
        if "full" not in self.signatures and self.strategy == "full":
            if len(self.signatures) != 1:
                raise ValueError(
                    "Expected an edgekit model with a `full` signature (or a single signature). "
                    f"Received: signatures {sorted(self.signatures)}"
                )
        full_key = "full" if "full" in self.signatures else next(iter(self.signatures))
        self.full = interp.get_signature_runner(full_key)
        self.trunk = interp.get_signature_runner("trunk") if self.strategy == "trunk+head" else None
        self.head_input_name = "features" if self.strategy == "trunk+head" else "x"
        # The sampler: `head` (or `full`), or, as MCModel(rng="auto") does, the `masked` twin of an
        # unseeded in-graph file, fed numpy keep-masks `mask_i` (MC layer i, rate > 0).
        meta = meta or {}
        layers = meta.get("mc_layers") or []
        masked_key = masked_twin(meta, self.signatures)
        twin = masked_key is not None and self.head_input_name in self.signatures[masked_key]["inputs"]
        self.sampler_key = masked_key if twin else ("head" if self.strategy == "trunk+head" else full_key)
        self.head = interp.get_signature_runner(self.sampler_key) if self.sampler_key != full_key else self.full
        head_inputs = self.head.get_input_details()
        self.head_details = head_inputs
        self.x_details = self.full.get_input_details()["x"] if "x" in self.full.get_input_details() else None
        if self.x_details is None:
            names = sorted(self.full.get_input_details())
            raise ValueError(f"Expected a model input named `x` (docs/format.md). Received: inputs {names}")
        masks: list[tuple[str, tuple[int, ...], float]] = []
        if twin:
            for name, info in twin_mask_inputs(layers):
                if name not in head_inputs:
                    raise ValueError(
                        f"Expected the `{masked_key}` signature to take mask input `{name}` (docs/format.md). "
                        f"Received: inputs {sorted(head_inputs)}"
                    )
                masks.append((name, tuple(int(d) for d in info["mask_shape"]), float(info["rate"])))
        mask_names = [] if twin else sorted(n for n in head_inputs if n.startswith("mask_"))
        if mask_names:
            by_input = {m.get("mask_input"): m for m in layers}
            for name in mask_names:
                info = by_input.get(name)
                if info is None:
                    raise ValueError(
                        f"Expected edgekit metadata describing mask input `{name}` (mask-input mode). "
                        "Received: a model without it"
                    )
                masks.append((name, tuple(int(d) for d in info["mask_shape"]), float(info["rate"])))
        # Drawn as the runtime draws them (MCModel): SFC64, 16 bits per unit, written as the input's
        # dtype, so the timings include the mask cost a prediction pays. Other dtypes than float32
        # and int8 (none that convert() writes) are drawn as float32 and converted.
        self._bits = np.random.SFC64(seed)
        self.mask_plans = []
        for name, shape, rate in masks:
            d = head_inputs[name]
            scale, zero = d["quantization"]
            kind = d["dtype"] if d["dtype"] in (np.float32, np.int8) else np.float32
            self.mask_plans.append(mask_plan(name, shape, rate, kind, scale, zero))
        out = self.head.get_output_details()
        self.out_name = "probs" if "probs" in out else next(iter(out))
        self.out_details = out[self.out_name]

    @staticmethod
    def _feed(value: np.ndarray, details: dict) -> np.ndarray:
        dtype = details["dtype"]
        if value.dtype == dtype and value.flags.c_contiguous:
            return value  # the common float32 case: nothing to convert, keep the timed path lean
        if dtype in (np.int8, np.uint8, np.int16) and value.dtype.kind == "f":
            scale, zero = details["quantization"]
            info = np.iinfo(dtype)
            value = np.clip(np.round(value / scale + zero), info.min, info.max)
        return np.ascontiguousarray(value, dtype=dtype)

    def _probs(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype == np.float32:
            return raw
        if raw.dtype.kind in "iu":
            scale, zero = self.out_details["quantization"]
            return (raw.astype(np.float32) - zero) * np.float32(scale)
        return raw.astype(np.float32, copy=False)

    def _mask_feed(self, rows: int) -> dict[str, np.ndarray]:
        """Fresh keep-masks for ``rows`` samples, ready to feed."""
        if not self.mask_plans:  # in-graph without a twin: the file draws its own (keep the timed path lean)
            return {}
        arrays = new_keep_masks(self._bits.random_raw, self.mask_plans, rows)
        return {name: self._feed(value, self.head_details[name]) for name, value in arrays.items()}

    def features(self, x: np.ndarray) -> np.ndarray:
        """Trunk output for a batch of inputs (float32 x), or the fed x itself for `full` models."""
        xq = self._feed(x, self.x_details)
        if self.trunk is None:
            return xq
        return self.trunk(x=xq)["features"]

    def head_probs(self, feats: np.ndarray, repeats: int) -> np.ndarray:
        """Probabilities [rows * repeats, C] with each row of ``feats`` repeated ``repeats`` times."""
        rows = np.repeat(feats, repeats, axis=0)
        out = self.head(**{self.head_input_name: rows}, **self._mask_feed(rows.shape[0]))[self.out_name]
        return self._probs(out)

    def predict_timed(self, x1: np.ndarray, samples: int) -> tuple[float, float, np.ndarray]:
        """One MC prediction of one input: (trunk seconds, head seconds, mean probabilities).

        The same work as :meth:`features` + :meth:`head_probs`, inlined: this is the timed path,
        and every Python call here would be counted as model latency (bench/profile_check.py
        holds it within a few percent of a bare LiteRT loop).
        """
        perf = time.perf_counter
        t0 = perf()
        xq = x1 if x1.dtype == self.x_details["dtype"] else self._feed(x1, self.x_details)
        feats = xq if self.trunk is None else self.trunk(x=xq)["features"]
        t1 = perf()
        feed = {self.head_input_name: np.repeat(feats, samples, axis=0), **self._mask_feed(samples)}
        mean = self._probs(self.head(**feed)[self.out_name]).mean(axis=0)
        t2 = perf()
        return t1 - t0, t2 - t1, mean


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
        raise ValueError("Expected at least one latency. Received: an empty list")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    upper = float(np.sort(a)[_upper_order_statistic(a.size) - 1])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "p99_upper_ms": upper}


def mc_probabilities(runner_or_path, x: np.ndarray, max_samples: int, *, threads: int = 1, seed: int = 0,
                     rows_per_invoke: int = 4096) -> np.ndarray:
    """Per-sample probabilities ``[N, max_samples, C]`` for every input of ``x`` (float32).

    The first T samples of each input are an unbiased T-sample MC prediction, so one call gives
    the whole accuracy-vs-T curve.
    """
    runner = runner_or_path
    if not isinstance(runner, _Runner):
        data = Path(runner_or_path).read_bytes()
        runner = _Runner(data, read_metadata(data), threads, seed)
    n = len(x)
    chunk = max(1, rows_per_invoke // max_samples)
    parts = []
    for start in range(0, n, chunk):
        feats = runner.features(np.asarray(x[start:start + chunk], dtype=np.float32))
        probs = runner.head_probs(feats, max_samples)
        parts.append(probs.reshape(feats.shape[0], max_samples, -1))
    return np.concatenate(parts, axis=0)


def accuracy_curve(probs: np.ndarray, y: np.ndarray, samples: Sequence[int], *, bins: int = ECE_BINS) -> list[AccuracyPoint]:
    """Accuracy, NLL and ECE of the mean of the first T samples, for each T in ``samples``."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if probs.ndim != 3 or probs.shape[0] != y.shape[0]:
        raise ValueError(f"Expected probs [N, T, C] and N labels. Received: probs {probs.shape}, labels {y.shape}")
    out = []
    for t in samples:
        if not 1 <= t <= probs.shape[1]:
            raise ValueError(f"Expected 1 <= T <= {probs.shape[1]}. Received: T={t}")
        mean = probs[:, :t].mean(axis=1)
        accuracy = float((mean.argmax(axis=1) == y).mean())
        out.append(AccuracyPoint(int(t), int(len(y)), accuracy, nll(mean, y), ece(mean, y, bins)))
    return out


def recommend(latency: Sequence[LatencyPoint], budget_ms: float,
              accuracy: Sequence[AccuracyPoint] | None = None) -> Recommendation:
    """Pick T for ``budget_ms``.

    A T "fits" when the 95% upper bound of its p99 (``p99_upper_ms``) is within the budget: the
    point p99 of a few hundred runs is too noisy to promise a p99 over the next thousand.
    With accuracy points: the smallest fitting T whose accuracy is within one standard error
    (``sqrt(a(1-a)/N)`` at the best T) of the best accuracy measured (the plateau); if no T on the
    plateau fits, the most accurate T that fits. Without: the largest T that fits. Among thread
    counts, the one with the lowest bound at that T.
    """
    if not budget_ms > 0:
        raise ValueError(f"Expected a budget > 0 ms. Received: budget_ms={budget_ms}")
    fits: dict[int, LatencyPoint] = {}
    for p in latency:
        if p.p99_upper_ms <= budget_ms and (p.samples not in fits or p.p99_upper_ms < fits[p.samples].p99_upper_ms):
            fits[p.samples] = p
    if not fits:
        fastest = min(latency, key=lambda p: p.p99_upper_ms)
        return Recommendation(None, None, None, None, budget_ms,
                              f"no T fits: the lowest p99 bound, at T={fastest.samples} with {fastest.threads} "
                              f"thread(s), is {fastest.p99_upper_ms:.3g} ms > budget {budget_ms:g} ms")
    if accuracy:
        acc = {a.samples: a for a in accuracy}
        best = max(accuracy, key=lambda a: a.accuracy)
        se = math.sqrt(max(best.accuracy * (1 - best.accuracy), 0.0) / best.examples)
        plateau = best.accuracy - se
        on_plateau = sorted(t for t in fits if t in acc and acc[t].accuracy >= plateau)
        if on_plateau:
            t = on_plateau[0]
            p = fits[t]
            return Recommendation(t, p.threads, p.p99_ms, p.p99_upper_ms, budget_ms,
                                  f"smallest T on the accuracy plateau ({acc[t].accuracy:.4f} >= best "
                                  f"{best.accuracy:.4f} - 1 SE {se:.4f}) with p99 bound {p.p99_upper_ms:.3g} ms "
                                  f"<= {budget_ms:g} ms")
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


def _time_runtime(cache: dict, data: bytes, threads: int, samples: int, x1: np.ndarray, runs: int, warmup: int,
                  seed: int) -> tuple[float, float] | None:
    """(p50, p99) ms of ``MCModel.predict(x1, samples=T)``, or None if T exceeds what the runtime allows.

    A model the runtime refuses (its output, its load or its digest) raises: hiding that in a
    profile is how an int8 model that `predict` could not run once went unnoticed.
    """
    import warnings

    from edgekit.runtime.mc import MCModel, ModelLoadError, OutputError
    from edgekit.runtime.metadata import IntegrityError

    key = threads
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "no edgekit metadata": profile says so itself
            model = cache.get(key)
            if model is None:
                model = cache[key] = MCModel(data, threads=threads, seed=seed)
            for _ in range(warmup):
                model.predict(x1, samples=samples)
            lat = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model.predict(x1, samples=samples)
                lat.append((time.perf_counter() - t0) * 1e3)
    except (OutputError, ModelLoadError, IntegrityError):
        raise  # the runtime refuses this model: a profile must say so, not hide it
    except (ValueError, RuntimeError, OSError):
        return None  # e.g. T above the runtime's memory budget; the interpreter timing stands
    p50, p99 = np.percentile(lat, [50, 99])
    return float(p50), float(p99)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB


def _check_ints(name: str, values: Sequence[int], low: int = 1) -> tuple[int, ...]:
    vals = tuple(values)
    if not vals or any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low for v in vals):
        raise ValueError(f"Invalid value for `{name}`. Expected a non-empty list of integers >= {low}. Received: {list(vals)}")
    return tuple(sorted(set(int(v) for v in vals)))


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
) -> ModelProfile:
    """Profile one ``.tflite`` (see the module docstring).

    Args:
        path: The model file.
        threads: Interpreter thread counts to try.
        samples: MC sample counts T to try.
        runs: Measured predictions per (threads, T).
        warmup: Unmeasured predictions first (default ``max(10, runs // 5)``).
        budget_ms: Latency budget for one MC prediction.
        x, y: Optional labelled data (float32 inputs shaped like the model input, integer labels)
            for the accuracy/NLL/ECE curve; ``x[0]`` is also the input timed.
        seed: Seeds the numpy generator of mask-input models and the synthetic timing input.
        progress: Called with the number of predictions just done (for a progress bar).
        runtime: Also time each (threads, T) through ``MCModel.predict`` (the full runtime path,
            ``runtime_p50_ms``/``runtime_p99_ms``), to show what the runtime adds on top.
    """
    threads = _check_ints("threads", threads)
    samples = _check_ints("samples", samples)
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"Invalid value for `runs`. Expected an integer >= 1. Received: {runs!r}")
    # Each new T resizes the head input and re-plans the arena; the first calls after that are slow.
    warmup = max(10, runs // 5) if warmup is None else int(warmup)
    data = Path(path).read_bytes()
    meta = read_metadata(data)
    runners = {t: _Runner(data, meta, t, seed) for t in threads}
    first = runners[threads[0]]
    in_shape = tuple(int(d) for d in first.x_details["shape_signature"][1:])
    if x is not None:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim >= 1 and x.shape[1:] != in_shape and x.shape[0] and x[0].size == int(np.prod(in_shape)):
            x = x.reshape(len(x), *in_shape)
        if x.shape[1:] != in_shape:
            raise InvalidArgumentError(f"Expected data inputs shaped [N, {', '.join(map(str, in_shape))}]. Received: {list(x.shape)}")
        x1 = x[:1]
    else:
        # A synthetic input inside the range the metadata records (absent or null: [0, 1]).
        low, high = ((meta or {}).get("input") or {}).get("range") or (0.0, 1.0)
        x1 = np.random.default_rng(seed).uniform(low, high, (1, *in_shape)).astype(np.float32)

    points = []
    runtime_models: dict[int, Any] = {}  # threads -> MCModel, one per thread count like the runners
    for t in threads:
        runner = runners[t]
        for s in samples:
            for _ in range(warmup):
                runner.predict_timed(x1, s)
            trunk_ms, head_ms, total_ms = [], [], []
            for _ in range(runs):
                a, b, _mean = runner.predict_timed(x1, s)
                trunk_ms.append(a * 1e3)
                head_ms.append(b * 1e3)
                total_ms.append((a + b) * 1e3)
            stats = percentile_stats(total_ms)
            rt = _time_runtime(runtime_models, data, t, s, x1, runs, warmup, seed) if runtime else None
            points.append(LatencyPoint(
                threads=t, samples=s, runs=runs, **stats,
                trunk_p50_ms=float(np.median(trunk_ms)) if runner.trunk is not None else None,
                head_p50_ms=float(np.median(head_ms)),
                runtime_p50_ms=None if rt is None else rt[0], runtime_p99_ms=None if rt is None else rt[1],
                latencies_ms=tuple(total_ms),
            ))
            if progress is not None:
                progress((warmup + runs) * (2 if runtime else 1))

    accuracy = None
    if x is not None and y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise InvalidArgumentError(f"Expected one label per input. Received: {len(x)} inputs, {len(y)} labels")
        probs = mc_probabilities(runners[threads[-1]], x, max(samples))
        accuracy = tuple(accuracy_curve(probs, y, samples))
        if progress is not None:
            progress(len(x))

    arena_sig = first.sampler_key  # the signature that runs at batch T (`masked` when the runtime feeds it)
    arena = {}
    for s in samples:
        arena[s] = estimate_arena_bytes(data, arena_sig, s)
        if first.strategy == "trunk+head":
            # trunk and head run one after the other: the arena must hold the larger of the two.
            arena[s] = max(arena[s], estimate_arena_bytes(data, "trunk", 1))
    quant = ((meta or {}).get("quantization") or {}).get("mode")
    return ModelProfile(
        path=str(path),
        model_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        quantization=quant,
        stochastic=(meta or {}).get("stochastic"),
        strategy=first.strategy,
        arena_bytes=arena,
        peak_rss_bytes=_peak_rss_bytes(),
        latency=tuple(points),
        accuracy=accuracy,
        recommended=recommend(points, budget_ms, accuracy),
    )
