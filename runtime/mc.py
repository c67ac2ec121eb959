"""MC-dropout prediction on the device: T stochastic passes, their mean and their spread.

>>> from edgekit.runtime import MCModel
>>> model = MCModel("model.tflite")                 # verifies the digest, probes the model once
>>> pred = model.predict(x, samples=100)             # x: one input or a batch
>>> pred.mean[0], pred.std[0], pred.predicted[0], pred.mutual_information[0]
>>> pred = model.predict(x, budget_ms=5)             # as many samples as fit in 5 ms
>>> pred = model.predict(x, budget_ms=20, tolerance=0.01)   # stop once the top class is known

How the work is kept small
--------------------------
- An edgekit file has a deterministic ``trunk`` (everything before the first MC layer) and a
  stochastic ``head`` (docs/format.md). The trunk runs once per input; the head runs at batch T in
  **one** invoke, so T samples cost one interpreter call instead of T. A file without a trunk (the
  first MC layer acts on the model input) runs ``full`` at batch T.
- The masks are drawn here, not in the graph, whenever the file allows it (see Randomness): LiteRT's
  ``RANDOM_UNIFORM`` kernel is scalar and cost half of the book MLP's T=100 head.
- The repeated features and the masks are written straight into the interpreter's input buffers.
  The interpreter keeps its allocation between calls with the same batch size; a new batch size
  costs one resize (~30-50 us for the book MLP).
- With a fixed T, the inputs of a batch share head invokes (up to 1024 rows per invoke).
- Under a budget, a latency model ``cost(T) = fixed + per_sample * T`` (calibrated on first
  budgeted use for the thread count in use, updated from every invoke in O(1)) plus a tail margin
  learnt per size range sizes the work. Sampling goes in chunks of at most a third of the budget,
  so a delay in an early chunk is absorbed by the later ones. Every chunk is planned at the
  machine's speed of the moment: the latency model's speed factor from the last invokes, or the
  speed this call's earlier chunks ran if slower (a slow phase of the machine lasts longer than a
  call). The last chunk is the largest whose predicted 99.5th percentile fits what is left, minus
  the time the statistics after sampling take, minus a slack learnt from how often calls end late
  (about 1 in 200; :class:`_SlackTracker`). Protection against the margins is capped: at least
  75% of the samples that fit at the typical cost are drawn, unless the speed planned at shows
  they would end past the budget (the share of samples that counts is a median over calls). The
  first time a thread needs more rows than it has allocated, it grows to twice that (one slow
  call, once; :meth:`MCModel.warmup` pays it ahead). With a ``tolerance``, sampling goes in
  growing chunks and stops when the standard error of the top class's mean probability falls
  below it.

Randomness
----------
- Masks drawn here (``masks_from == "numpy"``): ``mask-input`` files, and unseeded ``in-graph``
  files that carry the ``masked`` twin (every file ``convert()`` writes in-graph without a seed).
  One SFC64 generator per model (``seed`` makes it reproducible), never reset, gives 16 random
  bits per unit (the rate is resolved to 1/65536), so masks never repeat across calls, threads or
  batch sizes. ``rng="graph"`` uses an in-graph file's own op instead.
- Masks drawn by the file (``masks_from == "file"``): LiteRT's ``RANDOM_UNIFORM``. Unseeded files
  are re-seeded from ``/dev/urandom`` whenever the kernel is prepared, so a resize never repeats
  masks. A *seeded* file restarts its sequence on every re-prepare; for those the runtime keeps one
  interpreter per batch size, so a sequence is never restarted and masks never repeat. Under a
  budget, T is then rounded down to 1, 2, 3, 4, 6, 8, 12, ... so the interpreters stay few.

Safety
------
The digest in the metadata is checked (a file without edgekit metadata runs with a warning); every
declared tensor is checked against a memory budget before anything is allocated; the first load of
a model is probed in a child process (:mod:`edgekit.runtime.safety`). Every input is validated
(shape, rank, dtype, empty batch, NaN/Inf) with an "Expected ... Received ..." message.

Threads: a LiteRT interpreter is not thread-safe, so each thread gets its own interpreter(s);
``predict`` may be called from many threads at once.

Uncertainty measures use natural logarithms (nats): ``entropy`` is the entropy of the mean
probabilities (total uncertainty), ``mutual_information`` is entropy minus the mean per-sample
entropy (BALD: the part due to the model's uncertainty, 0 when all samples agree).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, InvalidArgumentError, InvalidTypeError
from edgekit.runtime.metadata import masked_twin, read_metadata, twin_mask_inputs, verify_integrity
from edgekit.runtime.safety import ModelLoadError, declared_tensors, probe_model

__all__ = ["MCModel", "MCPrediction", "BudgetError", "OutputError", "UnverifiedModelWarning", "LatencyModel"]

DEFAULT_SAMPLES = 100  # the book's T
DEFAULT_MAX_SAMPLES = 1000  # cap for budget/tolerance sampling when `samples` is not given
DEFAULT_MEMORY_BYTES = 512 * 2**20
# Rows per head invoke when several inputs share one (fixed T): large enough to amortize the
# per-invoke overhead, small enough to stay in cache-friendly, modest arenas.
_ROWS_PER_INVOKE = 1024
# Budgeted sampling goes in chunks of at most 1/_BUDGET_CHUNKS of the budget, none shorter than
# _MIN_CHUNK_S (each invoke has a fixed cost: ~0.1 ms for the book MLP here). 1 ms, not 2: a 2 ms
# budget then samples in two chunks, so a delay in the first shrinks the second. Measured on the
# book MLP in alternating blocks: p99 1.91 and 1.89 ms (0.5% of calls late) against 2.07 and 2.12
# ms (2.3-2.8% late) with a 2 ms minimum, for 0.70 and 0.61 of the fitting samples instead of
# 0.82 and 0.72: the budget is the promise.
_BUDGET_CHUNKS = 3
_MIN_CHUNK_S = 0.001
# Under a budget, at least this share of the samples that fit at the typical cost is drawn, however
# large the learnt tail margins grow (see MCModel._sample).
_MIN_SHARE = 0.75


class BudgetError(EdgekitError, ValueError):
    """The latency budget is too small for even one MC sample on this machine."""


class OutputError(EdgekitError, RuntimeError):
    """The model ran but its output is not a probability vector (a damaged or foreign model)."""


class UnverifiedModelWarning(UserWarning):
    """The model has no edgekit metadata, so its integrity cannot be verified."""


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the install
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError(
                "edgekit.runtime needs a TFLite interpreter. Expected `ai-edge-litert` (pip install "
                "ai-edge-litert) or `tflite-runtime`. Received: neither is installed"
            ) from None
    return Interpreter


@dataclass(frozen=True)
class MCPrediction:
    """The MC-dropout result for a batch of N inputs (every array has N rows).

    Attributes:
        mean: ``[N, C]`` mean class probabilities over the samples.
        std: ``[N, C]`` standard deviation of the class probabilities over the samples.
        predicted: ``[N]`` index of the class with the highest mean probability.
        confidence: ``[N]`` that highest mean probability.
        entropy: ``[N]`` predictive entropy of ``mean`` (nats).
        mutual_information: ``[N]`` BALD mutual information (nats).
        samples: ``[N]`` number of MC samples used for each input.
        elapsed_ms: ``[N]`` wall time spent on each input.
        budget_cut: ``[N]`` True where the budget stopped sampling before ``samples`` was reached.
        class_names: names of the C classes (from the metadata, or ``"0"``, ``"1"``, ...).
    """

    mean: np.ndarray
    std: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    samples: np.ndarray
    elapsed_ms: np.ndarray
    budget_cut: np.ndarray
    class_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: one dict per input."""
        rows = []
        for i in range(len(self.predicted)):
            rows.append(
                {
                    "predicted": int(self.predicted[i]),
                    "label": self.class_names[int(self.predicted[i])],
                    "confidence": float(self.confidence[i]),
                    "mean": [float(v) for v in self.mean[i]],
                    "std": [float(v) for v in self.std[i]],
                    "entropy": float(self.entropy[i]),
                    "mutual_information": float(self.mutual_information[i]),
                    "samples": int(self.samples[i]),
                    "elapsed_ms": float(self.elapsed_ms[i]),
                    "budget_cut": bool(self.budget_cut[i]),
                }
            )
        return {"class_names": list(self.class_names), "predictions": rows}


def summarize(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(mean, std, entropy, mutual information) of ``probs`` ``[T, C]`` (one input), in float64.

    ``std`` is the population standard deviation (as the seed text's ``y_probas.std(axis=0)``).
    Written with few numpy calls: for T=100 this runs in ~60 us instead of ~100 us.
    """
    p = probs.astype(np.float64)
    n = p.shape[0]
    mean = p.sum(axis=0) / n
    d = p - mean
    std = np.sqrt(np.einsum("tc,tc->c", d, d) / n)
    eps = 1e-12  # log(0) guard; probabilities below it contribute ~0 to the entropy anyway
    entropy = -float(mean @ np.log(mean + eps))
    expected = -float(np.vdot(p, np.log(p + eps))) / n
    return mean, std, entropy, max(0.0, entropy - expected)


def _quantile(ordered: list[float], q: float) -> float:
    """numpy's default (linear) quantile of an already sorted, non-empty list, in pure Python."""
    h = (len(ordered) - 1) * q
    lo = int(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


class LatencyModel:
    """``cost(T) = fixed + per_sample * T`` for one stochastic invoke, plus a p99 margin.

    ``fixed`` and ``per_sample`` are a relative-error least-squares fit (weights ``1/cost**2``,
    so a one-sample invoke counts as much as a 1000-sample one) on calibration anchors and the
    last 256 invokes. The margin is the 99.5th percentile of recent residuals (observed - fitted,
    in seconds) over the last 256 invokes, **per size bucket** (T in [1], [2, 3], [4, 7], ...):
    OS delays add time rather than scale it, but a large invoke also suffers more from a busy
    memory bus than a one-sample invoke, so each size range gets the margin it has shown. A bucket
    with fewer than 20 recent residuals borrows the margin of all of them (so a range that was
    slow once is tried again later instead of being avoided for ever); with fewer than 20 in all,
    the margin is half the fitted cost.

    **The machine's speed of the moment** (``speed()``): a shared machine runs in phases, seconds
    long, when everything takes 1.5-3x its usual time. So each invoke also moves a speed factor,
    the ratio of its time to the fit, averaged with weight ``_SPEED_WEIGHT`` on the newest invoke
    and drifting back to 1 over ``_SPEED_MEMORY_S`` of idleness; predictions are the fit times
    that factor, and the margins are kept over what it does not explain. Measured on this VM
    (book MLP, T=57, five traces of 3000 back-to-back calls): the log-times of consecutive calls
    correlate 0.42-0.78. Against the same controller without the factor, in alternating blocks
    of 50 budgeted calls (budgets of 1, 2 and 5 ms, 14 comparisons of 500-1500 calls, a very
    noisy hour): fewer calls ended late in 10 (at 1 ms: 2.8% vs 12.5%, 3.5% vs 12.7%), more in
    3, for a median share of the fitting samples ~0.03 lower.

    Every update is O(window) at worst and a few microseconds in practice (running sums for the
    fit, sorted lists for the quantiles): it runs inside budgeted calls, so it must never be the
    delay it is meant to predict (an earlier numpy refit took 0.2-1 ms every 8th invoke).
    Thread-safe.
    """

    _MIN_RESIDUALS = 20
    # The quantile of the residuals used as the margin. Above 0.99 on purpose: a budgeted call is
    # late if its last chunk *or* the work after sampling runs late, so each gets less than 1%.
    _QUANTILE = 0.995
    _SPEED_WEIGHT = 0.5
    _SPEED_MEMORY_S = 1.0
    # One invoke moves the speed factor at most to 1/4 or 4x the fit: a single pre-emption of
    # 10 ms in a 0.5 ms invoke must not make the next calls plan for a 20x slower machine.
    _SPEED_RANGE = (0.25, 4.0)

    def __init__(self, window: int = 256):
        self._window = window
        self._lock = threading.Lock()
        self._obs: deque[tuple[int, float]] = deque()
        self._sums = [0.0] * 5  # over the window: w, w*t, w*t*t, w*s, w*t*s with w = 1/s**2
        self._anchor_sums = [0.0] * 5
        self._n_anchors = 0
        # (size bucket, residual) of the most recent invokes: one window for all sizes, so a size
        # range not tried for `window` invokes forgets its old delays and gets explored again.
        self._residuals: deque[tuple[int, float]] = deque()
        self._sorted_all: list[float] = []
        self._sorted_by: dict[int, list[float]] = {}
        self._since_exact = 0
        self.fixed_s = 0.0
        self.per_sample_s = 0.0
        self._speed, self._speed_at = 1.0, 0.0

    @staticmethod
    def _bucket(samples: int) -> int:
        return max(1, int(samples)).bit_length()

    @staticmethod
    def _terms(samples: int, seconds: float) -> tuple[float, ...]:
        w = 1.0 / max(seconds, 1e-9) ** 2
        return w, w * samples, w * samples * samples, w * seconds, w * samples * seconds

    def anchor(self, samples: int, seconds: float) -> None:
        """A calibration point kept in every fit (the online window may hold only one T)."""
        with self._lock:
            for i, v in enumerate(self._terms(samples, seconds)):
                self._anchor_sums[i] += v
            self._n_anchors += 1
            self._refit()

    def _speed_now(self, now: float) -> float:
        """The speed factor, decayed toward 1 for the time since the last invoke."""
        return 1.0 + (self._speed - 1.0) * math.exp(-max(0.0, now - self._speed_at) / self._SPEED_MEMORY_S)

    def speed(self) -> float:
        """This moment's speed: recent invokes' time over the fit (1: as fitted, 2: twice as slow)."""
        with self._lock:
            return self._speed_now(time.perf_counter())

    def observe(self, samples: int, seconds: float, *, residual: bool = True) -> None:
        with self._lock:
            if self.per_sample_s > 0:
                now = time.perf_counter()
                speed, expected = self._speed_now(now), self.fixed_s + self.per_sample_s * samples
                if residual:
                    self._add_residual(self._bucket(samples), seconds - expected * speed)
                lo, hi = self._SPEED_RANGE
                ratio = min(hi, max(lo, seconds / expected))
                self._speed, self._speed_at = speed + self._SPEED_WEIGHT * (ratio - speed), now
            self._obs.append((samples, seconds))
            for i, v in enumerate(self._terms(samples, seconds)):
                self._sums[i] += v
            if len(self._obs) > self._window:
                old = self._obs.popleft()
                for i, v in enumerate(self._terms(*old)):
                    self._sums[i] -= v
            self._since_exact += 1
            if self._since_exact >= self._window:  # running sums drift: recompute now and then
                self._since_exact = 0
                self._sums = [sum(col) for col in zip(*(self._terms(*o) for o in self._obs))]
            self._refit()

    def _add_residual(self, bucket: int, r: float) -> None:
        self._residuals.append((bucket, r))
        bisect.insort(self._sorted_all, r)
        bisect.insort(self._sorted_by.setdefault(bucket, []), r)
        if len(self._residuals) > self._window:
            b, old = self._residuals.popleft()
            for ordered in (self._sorted_all, self._sorted_by[b]):
                del ordered[bisect.bisect_left(ordered, old)]

    def _refit(self) -> None:
        w, wt, wtt, ws, wts = (a + b for a, b in zip(self._sums, self._anchor_sums))
        if len(self._obs) + self._n_anchors < 2 or w <= 0:
            return
        det = w * wtt - wt * wt
        if det <= 1e-9 * w * wtt:  # one batch size only: keep the slope, move the intercept
            self.fixed_s = max(0.0, (ws - self.per_sample_s * wt) / w)
            return
        b = (w * wts - wt * ws) / det
        # Costs can't be negative; a negative intercept just means noise at small T.
        self.per_sample_s = max(b, 1e-9)
        self.fixed_s = max((ws - b * wt) / w, 0.0)

    @property
    def margin_s(self) -> float | None:
        """The margin over all sizes (None: fewer than 20 residuals yet)."""
        with self._lock:
            return self._margin_all()

    def _margin_all(self) -> float | None:
        if len(self._sorted_all) < self._MIN_RESIDUALS:
            return None
        return max(0.0, _quantile(self._sorted_all, self._QUANTILE))

    def typical(self, samples: int) -> float:
        """Fitted (not p99) cost of one invoke of ``samples`` samples, in seconds."""
        return self.fixed_s + self.per_sample_s * samples

    def _margin(self, samples: int) -> float:
        ordered = self._sorted_by.get(self._bucket(samples))
        if ordered is not None and len(ordered) >= self._MIN_RESIDUALS:
            return max(0.0, _quantile(ordered, self._QUANTILE))
        m = self._margin_all()
        return m if m is not None else 0.5 * self.typical(samples)

    def p99(self, samples: int, speed: float | None = None) -> float:
        """Predicted 99.5th-percentile cost of one invoke, at ``speed`` (default: :meth:`speed`)."""
        with self._lock:
            speed = self._speed_now(time.perf_counter()) if speed is None else speed
            return self.typical(samples) * speed + self._margin(samples)

    def largest_fitting(self, seconds: float, cap: int, speed: float | None = None) -> int:
        """Largest T <= cap with p99(T) <= seconds at ``speed`` (default: :meth:`speed`); 0 if even
        T=1 does not fit."""
        with self._lock:
            if self.per_sample_s <= 0:
                return cap
            speed = self._speed_now(time.perf_counter()) if speed is None else speed
            # Each size bucket has its own margin: take the best T over the buckets.
            blind = self._margin_all() is None  # no residuals yet: margin = half the cost itself
            for b in range(self._bucket(cap), 0, -1):
                lo, hi = 1 << (b - 1), min(cap, (1 << b) - 1)
                room = seconds / 1.5 if blind else seconds - self._margin(lo)
                t = math.floor((room / speed - self.fixed_s) / self.per_sample_s)
                if min(t, hi) >= lo:
                    return int(min(t, hi))
            return 0


class _SlackTracker:
    """A slack per budget, learnt from how often budgeted calls actually end late.

    The latency model's margins and the reserve for the work after sampling cover delays they
    have seen in their own part of a call; what they miss (a delay in the checks before
    sampling, several small delays in one call, a slow phase of the machine starting) shows up
    only as calls ending late. So sampling aims to end ``slack(budget) * budget`` before the
    budget, and each call's outcome moves the slack: a late call adds ``step``, an on-time one
    takes off ``step * q / (1 - q)``. That settles where P(late) = q (a stochastic-approximation
    quantile tracker), with ``q`` half the 1% a p99 allows. It cannot run away: a shorter aim
    makes calls end earlier, never later, and it stays within [0, ``maximum``] (at 0.2 the aim
    is already near the ``_MIN_SHARE`` floor of samples; more would cost the share of samples a
    budget should buy, for delays that hit one sample as hard as many). It starts cautious at
    ``start`` and relaxes by ``step * q / (1 - q)`` (1.5e-4 of the budget) per on-time call:
    ~1000 calls from 15% to 0. (Simulated with lognormal call times of sigma 0.05-0.08, a start
    of 5% ended more than 5 of the first 500 calls late in 17-100% of runs, 15% in 0-11%: the
    learning itself must not cost the p99.)

    Budgets are keyed by half-octaves: a 0.3 ms delay is a third of a 1 ms call and nothing to
    a 20 ms one. Thread-safe.
    """

    def __init__(self, *, q: float = 0.005, step: float = 0.03, start: float = 0.15, maximum: float = 0.2):
        self.q, self.step, self.start, self.maximum = q, step, start, maximum
        self._by_key: dict[int, float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(budget_s: float) -> int:
        return round(2 * math.log2(budget_s * 1e3))

    def slack(self, budget_s: float) -> float:
        """The fraction of ``budget_s`` to keep free at the end of sampling."""
        return self._by_key.get(self._key(budget_s), self.start)

    def update(self, budget_s: float, elapsed_s: float) -> None:
        key = self._key(budget_s)
        with self._lock:
            slack = self._by_key.get(key, self.start)
            slack += self.step if elapsed_s > budget_s else -self.step * self.q / (1 - self.q)
            self._by_key[key] = min(self.maximum, max(0.0, slack))


def mask_plan(name: str, shape: tuple[int, ...], rate: float, dtype=np.float32, scale: float = 0.0,
              zero_point: int = 0) -> tuple:
    """How keep-masks for one mask input are drawn: ``(name, shape, threshold, codes)``.

    16 random bits per unit, kept when >= ``rate * 2**16``: the rate is resolved to 1/65536.
    ``codes`` is None for a float32 input (1.0 keeps, 0.0 drops), else the int8 codes of 1.0 and
    0.0 (int8 I/O models quantize their mask inputs too).
    """
    codes = None
    if np.dtype(dtype) == np.int8:
        q = lambda v: int(np.clip(round(v / scale + zero_point), -128, 127))  # noqa: E731
        codes = (q(1.0), q(0.0))
    return name, tuple(int(d) for d in shape), round(float(rate) * 65536), codes


def fill_keep_masks(random_raw, arrays: dict[str, np.ndarray], plans: list, batch: int) -> None:
    """Write fresh keep-masks for ``batch`` samples into ``arrays`` (by input name), in place.

    ``random_raw(n)`` returns ``n`` random uint64 (a numpy bit generator's ``random_raw``; SFC64
    draws them 1.4x faster than PCG64 here). Shared by :class:`MCModel` and ``edgekit profile``,
    so the profiler times the masks the runtime pays for.
    """
    sizes = [batch * math.prod(shape) for _, shape, _, _ in plans]
    bits = random_raw((sum(sizes) + 3) // 4).view(np.uint16)  # 4 x 16 random bits per draw
    offset = 0
    for (name, _shape, threshold, codes), size in zip(plans, sizes):
        chunk = bits[offset : offset + size]
        offset += size
        out = arrays[name].reshape(-1)
        if codes is None:  # float32 keep-mask: 1.0 keeps, 0.0 drops
            np.greater_equal(chunk, threshold, out=out, casting="unsafe")
        else:
            out[...] = codes[1]
            out[chunk >= threshold] = codes[0]


def new_keep_masks(random_raw, plans: list, batch: int) -> dict[str, np.ndarray]:
    """Fresh keep-masks for ``batch`` samples as new arrays, by input name (see :func:`fill_keep_masks`)."""
    out = {name: np.empty((batch, *shape), dtype=np.float32 if codes is None else np.int8)
           for name, shape, _, codes in plans}
    fill_keep_masks(random_raw, out, plans, batch)
    return out


def _ladder_floor(n: int) -> int:
    """Largest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5x them) <= n."""
    if n < 1:
        return 0
    p = 1 << (n.bit_length() - 1)
    return p + p // 2 if p >= 2 and p + p // 2 <= n else p


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # without the batch axis
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0


class _Runner:
    """A signature runner that resizes and re-allocates only when an input's shape changes.

    LiteRT's ``SignatureRunner.__call__`` resizes every input and calls ``AllocateTensors`` on
    every call; skipping that when shapes are unchanged saves ~0.1 ms per invoke (7% of a T=100
    book-MLP head). This needs the interpreter's internal wrapper (stable across tflite_runtime
    and ai_edge_litert so far); without it, the public runner is used as is.
    """

    def __init__(self, interp, key: str):
        self._public = interp.get_signature_runner(key)
        self._shapes: dict[str, tuple] = {}
        try:
            self._wrapper = self._public._interpreter_wrapper
            self._subgraph = self._public._subgraph_index
            self._inputs = dict(self._public._inputs)
            self._outputs = list(self._public._outputs)
        except AttributeError:  # pragma: no cover - another interpreter build
            self._wrapper = None

    def _resize(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Resize the inputs whose shape changed, then re-allocate (only then)."""
        w, sg = self._wrapper, self._subgraph
        resized = False
        for name, shape in shapes.items():
            if self._shapes.get(name) != shape:
                w.ResizeInputTensor(self._inputs[name], np.array(shape, dtype=np.int32), False, sg)
                self._shapes[name] = shape
                resized = True
        if resized:
            try:
                w.AllocateTensors(sg)
            except Exception:
                self._shapes.clear()  # nothing is allocated: the next call must resize again
                raise

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        if self._wrapper is None:  # pragma: no cover
            return self._public(**feeds)
        if len(feeds) != len(self._inputs):
            return self._public(**feeds)  # let LiteRT raise its own message
        self._resize({name: value.shape for name, value in feeds.items()})
        for name, value in feeds.items():
            self._wrapper.SetTensor(self._inputs[name], value, self._subgraph)  # checks dtypes too
        return self.invoke()

    def inputs(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Writable input arrays of these shapes for the next :meth:`invoke`.

        They are views of the interpreter's own input buffers, so filling them is the only copy
        (no temporary array, no ``SetTensor`` copy: ~0.1 ms of a T=100 book-MLP draw). A view
        is valid until the next call here (which may re-allocate): callers fill, invoke and drop
        them within one function, never keep them.
        """
        if self._wrapper is None:  # pragma: no cover - another interpreter build
            details = self._public.get_input_details()
            self._pending = {n: np.empty(shape, dtype=details[n]["dtype"]) for n, shape in shapes.items()}
            return self._pending
        self._resize(shapes)
        w, sg = self._wrapper, self._subgraph
        return {name: w.tensor(w, self._inputs[name], sg) for name in shapes}

    def invoke(self) -> dict[str, np.ndarray]:
        """Run on what :meth:`inputs` handed out; the outputs are copies."""
        if self._wrapper is None:  # pragma: no cover
            return self._public(**self._pending)
        w, sg = self._wrapper, self._subgraph
        w.Invoke(sg)
        return {name: w.GetTensor(index, sg) for name, index in self._outputs}


class _Local(threading.local):
    def __init__(self):
        self.main = None  # interpreter for trunk (any batch) and for the sampler when resizing is safe
        self.by_size: dict[int, Any] = {}  # seeded in-graph files: one interpreter per sampler batch
        # Largest sampler batch allocated so far. Growing past it reallocates the arena (a one-off
        # cost several times an invoke); going back to any smaller batch is cheap.
        self.high_water = 0
        self.runners: dict[int, dict[str, _Runner]] = {}  # id(interpreter) -> signature -> runner


class MCModel:
    """An edgekit ``.tflite`` model ready for MC-dropout prediction.

    Args:
        path_or_bytes: Path to a ``.tflite`` file, or its bytes.
        threads: Interpreter threads (default: the device profile's ``default_threads``, else 1:
            predictable latency, and concurrent ``predict`` calls scale across cores).
        device: A device profile name or TOML path (``edgekit.devices``); gives default threads,
            the memory budget (``ram_bytes``) and the default latency budget.
        seed: Seed for the masks the runtime draws (see ``rng``), for reproducible predictions.
            Ignored when the file draws its own masks (its seeding is fixed in the file).
        rng: Who draws the keep-masks. ``"auto"`` (default): the runtime, with numpy, whenever
            the file allows it: mask-input files, and in-graph files that carry the ``masked``
            signature (unseeded in-graph exports do; the book MLP's prediction is ~1.5x faster
            that way, bench/mc_speed.py). Otherwise the file's own ``RANDOM_UNIFORM``.
            ``"graph"``: always the file's ``RANDOM_UNIFORM`` (in-graph files only).
        probe: Load the model in a child process first (cached by content hash). Set False only for
            models you already trust.
        memory_bytes: Largest total of declared tensor bytes a subgraph may allocate (default
            512 MiB, or the device's ``ram_bytes``).

    Raises:
        IntegrityError: the file differs from what was exported.
        ModelLoadError: LiteRT cannot load the model (the probe child died), or a tensor exceeds the
            memory budget, or the file lacks the signatures/inputs edgekit needs.
    """

    def __init__(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        device: str | None = None,
        seed: int | None = None,
        rng: str = "auto",
        probe: bool = True,
        memory_bytes: int | None = None,
    ):
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            data, self.source = bytes(path_or_bytes), "<bytes>"
        elif isinstance(path_or_bytes, (str, os.PathLike)):
            path = Path(path_or_bytes)
            if not path.is_file():
                raise FileNotFoundError(f"Model file not found. Expected an existing .tflite file. Received: {str(path)!r}")
            data, self.source = path.read_bytes(), str(path)
        else:
            raise TypeError(f"Expected a path or bytes for the model. Received: {type(path_or_bytes).__name__}")
        self.profile = None
        if device is not None:
            from edgekit.devices import load_profile

            self.profile = load_profile(device)
        if threads is None:
            threads = self.profile.default_threads if self.profile else 1
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"Expected `threads` to be an integer >= 1. Received: threads={threads!r}")
        if memory_bytes is None:
            memory_bytes = self.profile.ram_bytes if self.profile else DEFAULT_MEMORY_BYTES
        if rng not in ("auto", "graph"):
            raise ValueError(f"Expected `rng` to be 'auto' or 'graph'. Received: rng={rng!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"Expected `seed` to be a non-negative integer or None. Received: seed={seed!r}")
        self.threads = threads
        self.memory_bytes = int(memory_bytes)
        self._rng_choice = rng
        self._data = data

        # 1. Integrity: the digest covers every byte.
        self.verified = verify_integrity(data, require_metadata=False)
        if not self.verified:
            warnings.warn(
                f"{self.source} has no edgekit metadata, so its integrity cannot be verified; running it as is.",
                UnverifiedModelWarning,
                stacklevel=2,
            )
        self.metadata: dict = read_metadata(data) or {}

        # 2. Declared tensor sizes, before LiteRT allocates anything.
        self._tensors = declared_tensors(data)
        for t in self._tensors:
            if t.nbytes(1) > self.memory_bytes:
                raise ModelLoadError(
                    f"Tensor {t.name!r} declares {t.nbytes(1)} bytes at batch 1. Expected at most the memory "
                    f"budget of {self.memory_bytes} bytes. Received: shape={t.shape}"
                )

        # 3. Crash probe in a child process, then the real interpreter.
        if probe:
            probe_model(data, threads=threads)
        self._Interpreter = _interpreter_class()
        self._local = _Local()
        self._plan(self._interpreter())
        # SFC64: a small, fast generator of good statistical quality; its raw 64-bit output is
        # 1.4x faster to draw than PCG64's (the default) here. One generator, never reset, so
        # masks never repeat across calls, threads or batch sizes.
        self._bits = np.random.SFC64(seed)
        self._rng_lock = threading.Lock()
        self._latency = LatencyModel()
        self._calibrated = False
        self._calibrate_lock = threading.Lock()
        # Time a budgeted input needs after sampling (statistics, bookkeeping, and for the last
        # input of a call the result's assembly). Sampling aims to end its 99.5th percentile
        # before the budget does. (Not a reserve sized by how late whole calls end relative to
        # their aim: that ran away in tests, a larger reserve made calls end later relative to
        # their aim. The slack below only counts calls that end past the budget itself.)
        self._after_s: deque[float] = deque([1e-4], maxlen=256)
        self._after_n, self._reserve_s, self._after_med = 0, 1e-4, 1e-4
        self._slack = _SlackTracker()
        self._broadcast = self._feed_broadcasts()
        # One sample now, so a file whose output is not probabilities is refused at load.
        self._draw(np.zeros(self._feed.shape, dtype=self._feed.dtype), 1, observe=False)

    # ------------------------------------------------------------------ setup

    def _interpreter(self):
        try:
            return self._Interpreter(model_content=self._data, num_threads=self.threads)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"LiteRT cannot load {self.source}: {str(e).strip().splitlines()[0]}") from None

    def _plan(self, interp) -> None:
        meta = self.metadata
        sigs = interp.get_signature_list()
        names = meta.get("signatures") or {}
        full = names.get("full") or ("full" if "full" in sigs else None)
        if full is None and len(sigs) == 1:
            full = next(iter(sigs))  # a foreign file with one signature
        if full not in sigs:
            raise ModelLoadError(
                f"{self.source} has no usable signature. Expected a 'full' signature (docs/format.md). "
                f"Received: signatures={sorted(sigs)}"
            )
        trunk, head = names.get("trunk"), names.get("head")
        self.has_trunk = bool(trunk and head and trunk in sigs and head in sigs)
        self._trunk_key = trunk if self.has_trunk else None
        self._sampler_key = head if self.has_trunk else full
        self._full_key = full
        self.stochastic = meta.get("stochastic", "in-graph")
        self._mc_layers = list(meta.get("mc_layers") or [])
        # Mask inputs of the sampler: (input name, layer). In mask-input files `full`/`head` take
        # them; an in-graph file's `masked` twin takes `mask_i` for each MC layer i with rate > 0.
        fed = [(m["mask_input"], m) for m in self._mc_layers if m.get("mask_input")]
        if self._rng_choice == "graph" and self.stochastic == "mask-input":
            raise ValueError(
                f"{self.source} is a mask-input model: it has no random op of its own. Expected rng='auto' "
                f"for it. Received: rng='graph'"
            )
        masked = masked_twin(meta, sigs) if self._rng_choice == "auto" else None
        if masked is not None:
            self._sampler_key = masked
            fed = twin_mask_inputs(self._mc_layers)
        self._full_fed = fed if self._sampler_key in (full, head) else []
        self.masks_from = "numpy" if fed else ("file" if self.stochastic == "in-graph" else "none")
        # A seeded file restarts its sequence on re-prepare: see the module docstring.
        self.seeded = self.masks_from == "file" and meta.get("seed") is not None

        def details(runner, which):
            get = runner.get_input_details if which == "in" else runner.get_output_details
            out = {}
            for name, d in get().items():
                q = d.get("quantization_parameters") or {}
                scales, zps = q.get("scales", []), q.get("zero_points", [])
                shape = tuple(int(s) for s in d["shape_signature"][1:])
                out[name] = _Tensor(
                    name, shape, np.dtype(d["dtype"]),
                    float(scales[0]) if len(scales) else 0.0, int(zps[0]) if len(zps) else 0,
                )
            return out

        full_runner = interp.get_signature_runner(full)
        full_in = details(full_runner, "in")
        mask_names = {name for name, _ in fed} | {m.get("mask_input") for m in self._mc_layers if m.get("mask_input")}
        x_name = (meta.get("input") or {}).get("name", "x")
        if x_name not in full_in:
            candidates = [n for n in full_in if n not in mask_names]
            if len(candidates) != 1:
                raise ModelLoadError(
                    f"{self.source}: cannot tell which input is the data. Expected one input named "
                    f"{x_name!r}. Received: inputs={sorted(full_in)}"
                )
            x_name = candidates[0]
        self.input = full_in[x_name]
        sampler = interp.get_signature_runner(self._sampler_key)
        s_in, s_out = details(sampler, "in"), details(sampler, "out")
        for name, _ in fed:
            if name not in s_in:
                raise ModelLoadError(f"{self.source}: mask input {name!r} is missing. Received: {sorted(s_in)}")
        # (name, shape, 16-bit threshold, int8 (keep, drop) codes or None) per mask input.
        self._masks = [self._mask_plan(s_in[name], m) for name, m in fed]
        self._full_masks = [self._mask_plan(full_in[name], m) for name, m in self._full_fed]
        feeds = [n for n in s_in if n not in mask_names]
        if len(feeds) != 1:
            raise ModelLoadError(f"{self.source}: the stochastic signature has inputs {sorted(s_in)}; expected one data input.")
        self._feed = s_in[feeds[0]]
        out_name = (meta.get("output") or {}).get("name", "probs")
        if out_name not in s_out:
            out_name = next(iter(s_out))
        self._out = s_out[out_name]
        num_classes = self._out.shape[-1] if self._out.shape else 1
        self.num_classes = int(num_classes)
        # Per-value slack of the probability check (a sum may miss 1 by C times it): float32
        # softmax rounding (1e-4), plus half a quantization step where the softmax runs quantized.
        # An int8 model computes it in int8 (steps of 1/256) even when its output tensor is float.
        # Without edgekit metadata the file's quantization is unknown: allow the int8 step too.
        if self._out.dtype == np.int8:
            step = self._out.scale
        elif (meta.get("quantization") or {}).get("mode", "int8") in ("int8", "int16x8"):
            step = 1 / 256
        else:
            step = 0.0
        self._prob_slack = 1e-4 + step / 2
        names_ = meta.get("class_names")
        self.class_names = tuple(str(c) for c in names_) if names_ and len(names_) == self.num_classes else tuple(
            str(i) for i in range(self.num_classes)
        )
        # Largest sampler batch the memory budget allows.
        sampler_sg = self._subgraph_of(interp, self._sampler_key)
        fixed = sum(t.nbytes(0) for t in self._tensors if t.subgraph == sampler_sg)
        per = sum(t.nbytes(1) - t.nbytes(0) for t in self._tensors if t.subgraph == sampler_sg)
        self.max_batch = int((self.memory_bytes - fixed) // per) if per > 0 else 1 << 30
        if self.max_batch < 1:
            raise ModelLoadError(
                f"{self.source}: one MC sample needs {fixed + per} bytes of tensors. Expected at most the memory "
                f"budget of {self.memory_bytes} bytes. Received: {fixed + per}"
            )
        self._local.main = interp

    @staticmethod
    def _mask_plan(t: _Tensor, layer: dict) -> tuple:
        shape = layer.get("mask_shape") or t.shape
        return mask_plan(t.name, shape, float(layer["rate"]), t.dtype, t.scale, t.zero_point)

    @staticmethod
    def _subgraph_of(interp, key) -> int:
        try:
            return int(interp.get_signature_runner(key)._subgraph_index)
        except AttributeError:  # pragma: no cover - other interpreter builds
            return 0

    @property
    def latency(self) -> LatencyModel:
        """The latency model behind budgets, calibrated on first use (not at load: a fixed-T
        caller never needs it, and calibrating costs ~25 ms of start-up for the book MLP)."""
        if not self._calibrated:
            with self._calibrate_lock:
                if not self._calibrated:
                    self._calibrate()
                    self._calibrated = True
        return self._latency

    def _calibrate(self) -> None:
        # Fit the latency model for the thread count in use from the median of 5 invokes at batch
        # 1, 16 and 128 (after one untimed invoke each, which pays for allocation). Medians, so a
        # noisy neighbour during calibration cannot skew the fit.
        feat = np.zeros(self._feed.shape, dtype=self._feed.dtype)
        for t in sorted({min(t, self.max_batch) for t in (1, 16, 128)}):
            self._draw(feat, t, observe=False)
            self._anchor(feat, t, repeats=5)

    # ------------------------------------------------------------------ running

    def _runner(self, key: str, batch: int | None = None) -> "_Runner":
        local = self._local
        if local.main is None:
            local.main = self._interpreter()
        interp = local.main
        if batch is not None and self.seeded:
            interp = local.by_size.get(batch)
            if interp is None:
                interp = local.by_size[batch] = self._interpreter()
        runners = local.runners.setdefault(id(interp), {})
        runner = runners.get(key)
        if runner is None:
            runner = runners[key] = _Runner(interp, key)
        return runner

    def _quantize(self, t: _Tensor, x: np.ndarray, what: str) -> np.ndarray:
        if t.dtype == np.float32:
            return x.astype(np.float32, copy=False)
        if t.dtype == np.int8 and t.scale > 0:
            if x.dtype == np.int8:
                return x
            lo, hi = (-128 - t.zero_point) * t.scale, (127 - t.zero_point) * t.scale
            bad = (x < lo - t.scale / 2) | (x > hi + t.scale / 2)
            if bad.any():
                raise InvalidArgumentError(
                    f"The model's {what} is int8 (scale={t.scale:g}, zero_point={t.zero_point}), which represents "
                    f"[{lo:g}, {hi:g}]. Expected values in that range. Received: min={float(x.min()):g}, "
                    f"max={float(x.max()):g}"
                )
            return np.clip(np.round(x / t.scale) + t.zero_point, -128, 127).astype(np.int8)
        raise ModelLoadError(f"{self.source}: unsupported {what} dtype. Expected float32 or int8. Received: {t.dtype}")

    def _dequantize(self, t: _Tensor, y: np.ndarray) -> np.ndarray:
        if y.dtype == np.float32:
            return y
        return (y.astype(np.float32) - t.zero_point) * t.scale

    def _random_raw(self, n: int) -> np.ndarray:
        with self._rng_lock:  # one generator, never reset: masks never repeat across calls/sizes
            return self._bits.random_raw(n)

    def _masks_for(self, batch: int, plans: list | None = None) -> dict[str, np.ndarray]:
        """Fresh keep-masks for ``batch`` samples as new arrays (default: the sampler's inputs)."""
        return new_keep_masks(self._random_raw, self._masks if plans is None else plans, batch)

    def _draw(self, feature: np.ndarray, batch: int, *, observe: bool = True) -> np.ndarray:
        """``batch`` MC samples for one input's features (or raw input): probs ``[batch, C]``."""
        return self._invoke_rows(feature[None], batch, observe=observe)

    def _feed_broadcasts(self) -> bool:
        """Whether the sampler takes one feature row for T masks (its first op multiplies the
        features by the first mask, which broadcasts): then the T copies of the features are
        never written (314 KB per T=100 book-MLP prediction). Tried once on load: one row and two
        rows of the same features, with the same two masks, must give the same two outputs."""
        if not self._masks:
            return False
        runner = self._runner(self._sampler_key)
        masks = self._masks_for(2)
        # Not zeros: a zero feature row would hide masks paired with the wrong rows.
        n = math.prod(self._feed.shape)
        ramp = np.linspace(-1.0, 1.0, n) if self._feed.dtype == np.float32 else np.linspace(-100, 100, n).round()
        feature = ramp.astype(self._feed.dtype).reshape(1, *self._feed.shape)
        outs = []
        for rows in (1, 2):
            shapes = {self._feed.name: (rows, *self._feed.shape), **{k: v.shape for k, v in masks.items()}}
            try:
                arrays = runner.inputs(shapes)
                arrays[self._feed.name][...] = feature
                for name, value in masks.items():
                    arrays[name][...] = value
                del arrays
                outs.append(runner.invoke()[self._out.name])
            except (RuntimeError, ValueError):
                return False
        return outs[0].shape == outs[1].shape == (2, self.num_classes) and bool(np.array_equal(outs[0], outs[1]))

    def _invoke_rows(self, feats: np.ndarray, per: int, *, observe: bool = True) -> np.ndarray:
        """One stochastic invoke of ``per`` samples for each of the K rows of ``feats``
        ``[K, *feature]``: probs ``[K * per, C]``, input-major.

        The repeated rows and the masks are written straight into the interpreter's input
        buffers (no repeated copy of the features in between); with one input and a sampler that
        broadcasts, its features are written once.
        """
        start = time.perf_counter()
        batch = feats.shape[0] * per
        local = self._local
        grew = batch > local.high_water or (self.seeded and batch not in local.by_size)
        runner = self._runner(self._sampler_key, batch)
        one = self._broadcast and feats.shape[0] == 1
        shapes = {self._feed.name: (1 if one else batch, *self._feed.shape)}
        for name, shape, _, _ in self._masks:
            shapes[name] = (batch, *shape)
        arrays = runner.inputs(shapes)
        if one:
            arrays[self._feed.name][...] = feats
        else:
            arrays[self._feed.name].reshape(feats.shape[0], per, *self._feed.shape)[...] = feats[:, None]
        if self._masks:
            fill_keep_masks(self._random_raw, arrays, self._masks, batch)
        del arrays  # views into the interpreter: never kept past this invoke
        out = runner.invoke()[self._out.name]
        probs = self._dequantize(self._out, out)
        self._check_probs(probs)
        if grew:
            local.high_water = max(local.high_water, batch)  # this invoke paid for allocation: no latency sample
        elif observe:
            self._latency.observe(batch, time.perf_counter() - start)  # no calibration from here
        return probs

    def _check_probs(self, probs: np.ndarray) -> None:
        # A damaged op (say SOFTMAX replaced by another op in a file with a recomputed digest) can
        # run without error and return garbage; refuse anything that is not a probability vector.
        # Slack: float32 softmax rounding (1e-4), plus half an int8 step per class with int8 output.
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:  # e.g. SOFTMAX flipped to SQUEEZE
            raise OutputError(
                f"{self.source}: the model's output has the wrong shape. Expected [samples, {self.num_classes}]. "
                f"Received: shape={probs.shape}"
            )
        slack = self._prob_slack
        sums = probs.sum(axis=1)
        lo, hi = float(probs.min()), float(probs.max())
        # NaN fails every comparison and Inf fails the range: no separate finiteness pass needed.
        if not (lo >= -slack and hi <= 1 + slack and float(np.abs(sums - 1).max()) <= slack * max(1, self.num_classes)):
            raise OutputError(
                f"{self.source}: the model's output is not class probabilities. Expected values in [0, 1] "
                f"summing to 1 per sample. Received: min={lo:g}, max={hi:g}, sums in "
                f"[{float(np.nanmin(sums)):g}, {float(np.nanmax(sums)):g}]"
            )

    def _grow(self, feature: np.ndarray, batch: int) -> None:
        """Allocate for ``batch`` samples now so later invokes are cheap.

        Two unobserved invokes: the first re-allocates, the second touches the new memory for the
        first time (measured: ~2x a steady invoke); neither is a fair latency sample.
        """
        if batch > self._local.high_water:
            self._draw(feature, batch, observe=False)
            self._draw(feature, batch, observe=False)

    def _features(self, x: np.ndarray) -> np.ndarray:
        """Trunk outputs for a batch (or the quantized input itself when there is no trunk)."""
        xq = self._quantize(self.input, x, "input")
        if not self.has_trunk:
            return xq
        out = self._runner(self._trunk_key)(**{self.input.name: xq})
        return next(iter(out.values())) if len(out) == 1 else out[self._feed.name]

    # ------------------------------------------------------------------ validation

    def _check_input(self, x) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception:
                raise InvalidTypeError(f"Expected a numpy array as input. Received: {type(x).__name__}") from None
        shape = self.input.shape
        if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
            raise InvalidTypeError(
                f"Expected a float input (float32 preferred). Received: dtype={x.dtype}"
            )
        if x.dtype.kind in "iu" and not (self.input.dtype == np.int8 and x.dtype == np.int8):
            raise InvalidTypeError(
                f"Expected a float input (float32), already scaled as the model expects (see the metadata's "
                f"input.range). Received: dtype={x.dtype}"
            )
        if x.shape == shape:
            x = x[None]
        if x.ndim != len(shape) + 1 or x.shape[1:] != shape:
            raise InvalidArgumentError(
                f"Input has the wrong shape. Expected {shape} for one input or (batch, {', '.join(map(str, shape))}) "
                f"for a batch. Received: shape={x.shape}"
            )
        if x.shape[0] == 0:
            raise InvalidArgumentError(f"Input batch is empty. Expected at least one input of shape {shape}. Received: shape={x.shape}")
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                bad = np.argwhere(~finite)[0]
                raise InvalidArgumentError(
                    f"Input contains NaN or Inf. Expected finite values. Received: {int((~finite).sum())} non-finite "
                    f"value(s), the first at index {tuple(int(i) for i in bad)} = {x[tuple(bad)]!r}"
                )
        return x

    @staticmethod
    def _check_options(samples, budget_ms, tolerance):
        if samples is not None and (not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1):
            raise ValueError(f"Expected `samples` to be an integer >= 1. Received: samples={samples!r}")
        if budget_ms is not None:
            if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not math.isfinite(budget_ms) or budget_ms <= 0:
                raise ValueError(f"Expected `budget_ms` to be a finite number > 0. Received: budget_ms={budget_ms!r}")
        if tolerance is not None:
            if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
                raise ValueError(f"Expected `tolerance` to be a number in (0, 1). Received: tolerance={tolerance!r}")

    # ------------------------------------------------------------------ public

    def predict(
        self,
        x,
        *,
        samples: int | None = None,
        budget_ms: float | None = None,
        tolerance: float | None = None,
    ) -> MCPrediction:
        """MC-dropout prediction for one input or a batch.

        Args:
            x: One input (``input_shape``) or a batch (``[N, *input_shape]``), float.
            samples: Number of MC samples T per input. Default 100 without a budget; with a
                budget or a tolerance it is the cap (default 1000).
            budget_ms: Latency budget per input, in milliseconds. The largest T whose predicted
                p99 latency fits is used. **Documented choice:** if the budget is smaller than
                the fitted (typical) cost of one sample, :class:`BudgetError` is raised (a result
                from zero samples would be garbage, and a certain over-run would break the
                budget); when it is only tight (one sample fits typically but not at p99), one
                sample is drawn and ``budget_cut`` is set.
            tolerance: Stop early once the standard error of the top class's mean probability
                is below this value (checked between chunks).

        Raises:
            ValueError: bad shape, rank, empty batch, NaN/Inf, bad options.
            TypeError: wrong dtype.
            BudgetError: the budget is below the cost of one sample.
        """
        t_call = time.perf_counter()  # a budget counts from here: the checks are part of the call
        self._check_options(samples, budget_ms, tolerance)
        x = self._check_input(x)
        if budget_ms is None and tolerance is None:
            cap = int(samples or DEFAULT_SAMPLES)
        else:
            cap = int(samples or DEFAULT_MAX_SAMPLES)
        if cap > self.max_batch and budget_ms is None and tolerance is None:
            raise InvalidArgumentError(
                f"samples={cap} needs more tensor memory than the budget allows. Expected samples <= "
                f"{self.max_batch} (memory budget {self.memory_bytes} bytes). Received: samples={cap}"
            )
        cap = min(cap, self.max_batch)
        n = x.shape[0]
        means = np.empty((n, self.num_classes))
        stds = np.empty((n, self.num_classes))
        ent = np.empty(n)
        mi = np.empty(n)
        used = np.empty(n, dtype=np.int64)
        elapsed = np.empty(n)
        cut = np.zeros(n, dtype=bool)
        if budget_ms is None and tolerance is None:
            # Fixed T: several inputs share one head invoke (input-major rows), up to
            # _ROWS_PER_INVOKE rows, and the trunk runs once per group. elapsed_ms is the group's
            # time split evenly between its inputs.
            group = max(1, min(n, min(_ROWS_PER_INVOKE, self.max_batch) // cap))
            for lo in range(0, n, group):
                hi = min(n, lo + group)
                t0 = time.perf_counter()
                feats = self._features(x[lo:hi])
                probs = self._invoke_rows(feats, cap).reshape(hi - lo, cap, -1)
                for j in range(hi - lo):
                    means[lo + j], stds[lo + j], ent[lo + j], mi[lo + j] = summarize(probs[j])
                used[lo:hi] = cap
                elapsed[lo:hi] = (time.perf_counter() - t0) * 1e3 / (hi - lo)
            n_done = n
        else:
            n_done = 0
        budget_s = budget_ms / 1e3 if budget_ms is not None else None
        reserve = slack_s = 0.0
        if budget_s is not None:
            if self._after_n % 8 == 0:
                # tuple() copies a deque in one C call: safe while other threads append.
                after = sorted(tuple(self._after_s))
                self._reserve_s = _quantile(after, LatencyModel._QUANTILE)
                self._after_med = _quantile(after, 0.5)
            slack_s = self._slack.slack(budget_s) * budget_s
            # A stall after sampling longer than a quarter of the budget (a GC pass, a burst of
            # page faults) breaks its call whatever is reserved; reserving for it would starve
            # the next 256 calls instead (seen: one such stall made a 20 ms budget draw 1 sample
            # per call). Capped like the latency margins (see _MIN_SHARE).
            reserve = min(self._reserve_s, (1 - _MIN_SHARE) * budget_s)
        for i in range(n_done, n):
            t0 = t_call if i == 0 else time.perf_counter()
            deadline = t0 + budget_s - reserve - slack_s if budget_s is not None else None
            if deadline is not None and self.latency.typical(1) > budget_ms / 1e3:
                raise BudgetError(
                    f"The latency budget is smaller than one MC sample on this machine. Expected budget_ms >= "
                    f"{self.latency.typical(1) * 1e3:.3f} (the fitted cost of one sample with {self.threads} "
                    f"thread(s)). Received: budget_ms={budget_ms}"
                )
            feat = self._features(x[i : i + 1])[0]
            hard = t0 + budget_s - self._after_med if budget_s is not None else None
            probs, was_cut = self._sample(feat, cap, deadline, tolerance, hard)
            t_after = time.perf_counter()
            means[i], stds[i], ent[i], mi[i] = summarize(probs)
            used[i] = probs.shape[0]
            cut[i] = was_cut
            t_end = time.perf_counter()
            elapsed[i] = (t_end - t0) * 1e3
            if budget_s is not None and i < n - 1:
                self._after_s.append(t_end - t_after)
                self._after_n += 1
                self._slack.update(budget_s, t_end - t0)
        predicted = means.argmax(axis=1)
        result = MCPrediction(
            mean=means.astype(np.float32),
            std=stds.astype(np.float32),
            predicted=predicted,
            confidence=means[np.arange(n), predicted].astype(np.float32),
            entropy=ent,
            mutual_information=mi,
            samples=used,
            elapsed_ms=elapsed,
            budget_cut=cut,
            class_names=self.class_names,
        )
        if budget_s is not None:  # the last input's "after" lasts until its result is assembled
            t_end = time.perf_counter()
            self._after_s.append(t_end - t_after)
            self._after_n += 1
            self._slack.update(budget_s, t_end - t0)
        return result

    def _sample(self, feat, cap, deadline, tolerance, hard=None) -> tuple[np.ndarray, bool]:
        """Samples for one input: ``cap`` of them, or fewer if ``tolerance`` is met or the budget
        ends. ``deadline`` is when sampling should be done (the budget minus the reserve for the
        work after it and the learnt slack); ``hard`` (the budget minus the typical time after
        sampling) sizes the floor of samples."""
        if deadline is None and tolerance is None:
            return self._draw(feat, cap), False
        chunks: list[np.ndarray] = []
        done = 0
        # With a tolerance: growing chunks (16, 32, 64, ...) so the standard error can be checked
        # between them. Under a budget: chunks of at most a third of the budget (and no less than
        # _MIN_CHUNK_S, where the per-invoke cost would eat the samples), so a delay in an early
        # chunk is absorbed by sizing the later ones to what is left; only the last chunk is sized
        # by the p99 margin, and a delay there is the only one that can break the budget.
        chunk = cap if tolerance is None else min(16, cap)
        floor = cap
        if deadline is not None:
            now = time.perf_counter()
            chunk_s = max((deadline - now) / _BUDGET_CHUNKS, _MIN_CHUNK_S)
            per = max(self.latency.per_sample_s, 1e-9)
            # The p99 margins never cost more than (1 - _MIN_SHARE) of the samples that fit in the
            # whole budget at the typical cost: delays bigger than that hit one sample as hard as
            # fifty, so giving up more samples would cost the answer's quality and buy no latency.
            # (The floor still stops at the deadline at the speed planned at: see `left` below.)
            floor = int(_MIN_SHARE * (hard - now - self.latency.fixed_s) / per)
        cut = False
        # The speed to plan at: the latency model's speed of the moment (recent invokes, this
        # call's chunks included), or this call's own chunks' time over their fitted time if that
        # is slower. The latter also sees delays outside the invokes the model times, at full
        # weight: a call whose first chunk ran 1.5x slow will run its last one slow too.
        spent = fitted = 0.0
        while done < cap:
            want = min(chunk, cap - done)
            if deadline is not None:
                now = time.perf_counter()
                slow = self.latency.speed()
                if fitted > 0:
                    slow = max(slow, spent / fitted)
                # A chunk lasts chunk_s at the speed planned at (not at the fit's speed: in a
                # phase twice as slow, a third of the budget's worth of samples takes two thirds).
                want = min(want, max(1, int((chunk_s / slow - self.latency.fixed_s) / per)))
                fit = self.latency.largest_fitting(deadline - now, want, speed=slow)
                # The floor overrides the p99 margins, never the evidence of speed: it plans no
                # sample past the deadline at the speed planned at. (The share of samples is a
                # median over calls: a call in a slow phase may fall short of it.)
                left = int(((deadline - now) / slow - self.latency.fixed_s) / per)
                fit = max(fit, min(want, floor - done, left))
                if fit < want:
                    cut = done + fit < cap
                if fit < 1:
                    if done == 0:
                        fit = 1  # a prediction needs one sample; budget_cut says it was tight
                    else:
                        break
                if self.seeded:
                    fit = _ladder_floor(fit)  # bounded set of batch sizes = bounded interpreters
                if not self.seeded and fit > self._local.high_water:
                    # First time this thread needs so many samples: pay the allocation once, then
                    # re-plan with what is left. Grow to twice what is needed, so that the
                    # call-to-call wobble of T does not make every call pay for a few more rows.
                    self._grow(feat, min(cap, self.max_batch, 2 * fit))
                    fit = max(1 if done == 0 else 0, self.latency.largest_fitting(deadline - time.perf_counter(), fit, speed=slow))
                    if self.seeded:
                        fit = _ladder_floor(fit)
                    if fit < 1:
                        cut = True
                        break
                last = fit < want
                want = fit
            start = time.perf_counter()
            chunks.append(self._draw(feat, want))
            spent += time.perf_counter() - start
            fitted += self.latency.typical(want)
            done += want
            if deadline is not None and last:
                break
            if tolerance is not None:
                probs = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
                mean = probs.mean(axis=0)
                top = int(mean.argmax())
                se = probs[:, top].std(ddof=1) / math.sqrt(done) if done > 1 else math.inf
                if se < tolerance and done >= 8:  # fewer than 8 samples give no usable std estimate
                    break
                chunk *= 2
        probs = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return probs, cut

    def warmup(self, *, budget_ms: float | None = None, samples: int | None = None) -> int:
        """Allocate (on the calling thread) for the samples a budget or a fixed T will need.

        The first time a thread needs more rows than it has allocated, the allocation and the
        first touch of the new memory cost a few invokes, inside that call. Call this once before
        latency-critical use (``edgekit predict --budget-ms`` does) so no budgeted call pays it.
        Also adds the grown size as a calibration point. Returns the rows now allocated.
        """
        self._check_options(samples, budget_ms, None)
        if budget_ms is not None:
            cap = int(samples or DEFAULT_MAX_SAMPLES)
            need = self.latency.largest_fitting(budget_ms / 1e3, min(cap, self.max_batch))
        else:
            need = int(samples or DEFAULT_SAMPLES)
        need = max(1, min(need, self.max_batch))
        feat = np.zeros(self._feed.shape, dtype=self._feed.dtype)
        if self.seeded:
            need = _ladder_floor(need)
            self._draw(feat, need, observe=False)
            return need
        target = min(self.max_batch, 2 * need) if budget_ms is not None else need
        self._grow(feat, target)
        self._anchor(feat, need, repeats=3)
        return self._local.high_water

    def _anchor(self, feat: np.ndarray, samples: int, *, repeats: int) -> None:
        """Time ``repeats`` draws of ``samples`` and keep their median as a latency-model anchor."""
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self._draw(feat, samples, observe=False)
            times.append(time.perf_counter() - start)
        self._latency.anchor(samples, _quantile(sorted(times), 0.5))  # not np.median: it imports numpy.ma (~50 ms at start-up)

    def time_parts(self, *, samples: int = DEFAULT_SAMPLES, repeats: int = 20) -> dict[str, float]:
        """Median milliseconds of the parts of one prediction, for profiling.

        Returns ``{"trunk_ms": trunk at batch 1 (0 without a trunk), "head_ms": the stochastic
        signature at batch ``samples``, "full_ms": the full model at batch 1, "full_batch_ms": the
        full model at batch ``samples``}``, each the median of ``repeats`` runs after a warm-up.
        """
        x = np.zeros((1, *self.input.shape), dtype=np.float32)
        feat = self._features(x)[0]

        def med(fn):
            fn()
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return float(np.median(ts) * 1e3)

        full = self._runner(self._full_key)
        xq = self._quantize(self.input, x, "input")
        xb = np.repeat(xq, samples, axis=0)
        return {
            "trunk_ms": med(lambda: self._features(x)) if self.has_trunk else 0.0,
            "head_ms": med(lambda: self._draw(feat, samples, observe=False)),
            "full_ms": med(lambda: full(**{self.input.name: xq}, **self._masks_for(1, self._full_masks))),
            "full_batch_ms": med(lambda: full(**{self.input.name: xb}, **self._masks_for(samples, self._full_masks))),
        }

    def __repr__(self) -> str:
        return (
            f"MCModel({self.source!r}, stochastic={self.stochastic!r}, trunk={self.has_trunk}, "
            f"classes={self.num_classes}, threads={self.threads})"
        )
