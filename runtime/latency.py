"""The latency model: what one sampler invoke of T samples costs on this machine, now.

>>> lm = LatencyModel()
>>> lm.anchor(1, 1.1e-4); lm.anchor(128, 1.4e-3)     # calibration points (samples, seconds)
>>> lm.observe(64, 7.5e-4)                             # every timed invoke after that
>>> lm.typical(100), lm.p99(100), lm.largest_fitting(0.005, cap=1000)

The budget controller (:mod:`edgekit.runtime.budget`) sizes its chunks with it; the reasoning
is in docs/budgets.md. Standard library only.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LatencyModel"]


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
    last ``window`` invokes. The margin is the 99.5th percentile of recent residuals (observed -
    fitted, in seconds) **per size bucket** (T in [1], [2, 3], [4, 7], ...): delays add time
    rather than scale it, but a large invoke suffers more from a busy memory bus than a small
    one, so each size range gets the margin it has shown. A bucket with fewer than 20 recent
    residuals borrows the margin of all of them (so a range that was slow once is tried again
    instead of being avoided for ever); with fewer than 20 in all, the margin is half the cost.

    **Speed of the moment** (:meth:`speed`): each invoke moves a speed factor, the ratio of its
    time to the fit, with weight ``_SPEED_WEIGHT`` on the newest invoke, drifting back to 1 with
    time constant ``speed_memory_s`` of idleness. Predictions are the fit times that factor, and
    the margins are kept over what the factor does not explain: a shared machine runs in slow
    phases longer than a call (docs/budgets.md).

    Every update costs a few microseconds (running sums for the fit, sorted lists for the
    quantiles): it runs inside budgeted calls, so it must not be the delay it predicts.
    Times come from ``clock``. Thread-safe.
    """

    _MIN_RESIDUALS = 20
    # The quantile of the residuals used as the margin. Above 0.99 on purpose: a budgeted call is
    # late if its last chunk *or* the work after sampling runs late, so each gets less than 1%.
    _QUANTILE = 0.995
    _SPEED_WEIGHT = 0.5
    # One invoke moves the speed factor at most to 1/4 or 4x the fit: a single long delay in a
    # short invoke must not make the next calls plan for a machine many times slower.
    _SPEED_RANGE = (0.25, 4.0)

    def __init__(self, window: int = 256, *, clock: Callable[[], float] = time.perf_counter,
                 speed_memory_s: float = 1.0):
        self._window = window
        self._clock = clock
        self._speed_memory_s = speed_memory_s
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
        return 1.0 + (self._speed - 1.0) * math.exp(-max(0.0, now - self._speed_at) / self._speed_memory_s)

    def speed(self) -> float:
        """This moment's speed: recent invokes' time over the fit (1: as fitted, 2: twice as slow)."""
        with self._lock:
            return self._speed_now(self._clock())

    def observe(self, samples: int, seconds: float, *, residual: bool = True) -> None:
        with self._lock:
            if self.per_sample_s > 0:
                now = self._clock()
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
            speed = self._speed_now(self._clock()) if speed is None else speed
            return self.typical(samples) * speed + self._margin(samples)

    def largest_fitting(self, seconds: float, cap: int, speed: float | None = None) -> int:
        """Largest T <= cap with p99(T) <= seconds at ``speed`` (default: :meth:`speed`); 0 if even
        T=1 does not fit."""
        with self._lock:
            if self.per_sample_s <= 0:
                return cap
            speed = self._speed_now(self._clock()) if speed is None else speed
            # Each size bucket has its own margin: take the best T over the buckets.
            blind = self._margin_all() is None  # no residuals yet: margin = half the cost itself
            for b in range(self._bucket(cap), 0, -1):
                lo, hi = 1 << (b - 1), min(cap, (1 << b) - 1)
                room = seconds / 1.5 if blind else seconds - self._margin(lo)
                t = math.floor((room / speed - self.fixed_s) / self.per_sample_s)
                if min(t, hi) >= lo:
                    return int(min(t, hi))
            return 0
