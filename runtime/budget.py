"""Latency budgets: how many MC samples fit in the time left, decided by one controller.

>>> controller = BudgetController()                   # clock=time.perf_counter by default
>>> call = controller.start(0.005, cap=1000)          # one input, 5 ms from now
>>> while (n := call.next_chunk(done, want)) > 0:     # the sampler draws n samples per chunk
...     ...; call.ran(n, seconds); done += n
>>> call.sampled(); ...; call.finish()                # the work after sampling, then the outcome

What decides a chunk
--------------------
- A :class:`LatencyModel` ``cost(T) = fixed + per_sample * T`` of one sampler invoke (calibrated
  lazily on first budgeted use, updated from every invoke in O(1)) plus a tail margin learnt per
  size range, and a speed factor: the machine's speed of the moment.
- Sampling goes in chunks of at most a third of the budget (none shorter than ``_MIN_CHUNK_S``),
  so a delay in an early chunk is absorbed by the later ones. Every chunk is planned at the
  speed of the moment: the latency model's speed factor, or the speed this call's earlier chunks
  ran if slower (a slow phase of the machine lasts longer than a call).
- The last chunk is the largest whose predicted 99.5th percentile fits what is left, minus a
  **reserve** for the work after sampling (its 99.5th percentile over the last 256 inputs) and a
  **slack** learnt from how often calls end late (:class:`SlackTracker`, about 1 in 200).
- Protection against the margins is capped: at least ``_MIN_SHARE`` of the samples that fit at the
  typical cost are drawn, unless the speed planned at shows they would end past the budget (the
  share of samples that counts is a median over calls). The reserve is capped the same way: a
  single stall after sampling (a GC pass) must not starve the next 256 calls.
- Chunk sizes can be held to multiples of ``step`` (a fixed-batch file runs its sampler at exactly
  that batch) and to a ``ladder`` of few sizes (1, 2, 3, 4, 6, 8, 12, ... steps: a seeded file keeps
  one interpreter per batch size).

Every time comes from the controller's ``clock`` (``time.perf_counter`` unless a test injects
another), so the whole controller can be driven by a fake clock and fake invoke costs.
Thread-safe: calls from several threads share one controller.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from edgekit.errors import EdgekitError

__all__ = ["BudgetCall", "BudgetController", "BudgetError", "LatencyModel", "SlackTracker", "ladder_floor"]

# Budgeted sampling goes in chunks of at most 1/_BUDGET_CHUNKS of the budget, none shorter than
# _MIN_CHUNK_S (each invoke has a fixed cost: ~0.1 ms for the book MLP). 1 ms, not 2: a 2 ms
# budget then samples in two chunks, so a delay in the first shrinks the second (the budget is
# the promise, the share of samples second).
_BUDGET_CHUNKS = 3
_MIN_CHUNK_S = 0.001
# Under a budget, at least this share of the samples that fit at the typical cost is drawn, however
# large the learnt tail margins grow.
_MIN_SHARE = 0.75
# The reserve for the work after sampling is recomputed every this many inputs (a sort of 256 values).
_RESERVE_EVERY = 8


class BudgetError(EdgekitError, ValueError):
    """The latency budget is too small for even one MC sample on this machine."""


def ladder_floor(n: int) -> int:
    """Largest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5x them) <= n; 0 below 1."""
    if n < 1:
        return 0
    p = 1 << (n.bit_length() - 1)
    return p + p // 2 if p >= 2 and p + p // 2 <= n else p



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
    and drifting back to 1 over ``speed_memory_s`` of idleness; predictions are the fit times
    that factor, and the margins are kept over what it does not explain (consecutive calls' times
    are strongly correlated on a shared machine). ``speed_memory_s`` is that drift's time
    constant; times come from ``clock`` (injectable, as every time here).

    Every update is O(window) at worst and a few microseconds in practice (running sums for the
    fit, sorted lists for the quantiles): it runs inside budgeted calls, so it must never be the
    delay it is meant to predict (a numpy refit costs 0.2-1 ms).
    Thread-safe.
    """

    _MIN_RESIDUALS = 20
    # The quantile of the residuals used as the margin. Above 0.99 on purpose: a budgeted call is
    # late if its last chunk *or* the work after sampling runs late, so each gets less than 1%.
    _QUANTILE = 0.995
    _SPEED_WEIGHT = 0.5
    # One invoke moves the speed factor at most to 1/4 or 4x the fit: a single pre-emption of
    # 10 ms in a 0.5 ms invoke must not make the next calls plan for a 20x slower machine.
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


class SlackTracker:
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
    ~1000 calls from 15% to 0 (a cautious start, so that the learning itself does not cost the p99).

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


class BudgetController:
    """Owns every piece of budget state: the latency model, the reserve after sampling, the slack.

    Args:
        clock: the time source (seconds); a test passes a fake one.
        latency: the latency model (default: a new one on ``clock``).
        calibrate: called once with the latency model on first use of :attr:`latency` (the runtime
            times a few invokes there; None: the caller anchors the model itself).
        slack: the slack tracker (default: a new :class:`SlackTracker`).
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, latency: LatencyModel | None = None,
                 calibrate: Callable[[LatencyModel], None] | None = None, slack: SlackTracker | None = None):
        self.clock = clock
        self._latency = latency if latency is not None else LatencyModel(clock=clock)
        self._calibrate = calibrate
        self._calibrated = calibrate is None
        self._calibrate_lock = threading.Lock()
        self.slack = slack if slack is not None else SlackTracker()
        # Time a budgeted input needs after sampling (statistics, bookkeeping, and for the last
        # input of a call the result's assembly). Sampling aims to end its 99.5th percentile
        # before the budget does. (Not a reserve sized by how late whole calls end relative to
        # their aim: a larger reserve makes calls end later relative to their aim, so that one runs
        # away. The slack only counts calls that end past the budget itself.)
        self._after: deque[float] = deque([1e-4], maxlen=256)
        self._after_n = 0
        self._reserve_s = self._after_med = 1e-4

    @property
    def latency(self) -> LatencyModel:
        """The latency model, calibrated on first use (not at load: a fixed-T caller never needs it)."""
        if not self._calibrated:
            with self._calibrate_lock:
                if not self._calibrated:
                    self._calibrate(self._latency)
                    self._calibrated = True
        return self._latency

    def observe(self, samples: int, seconds: float) -> None:
        """One sampler invoke of ``samples`` samples took ``seconds`` (never calibrates)."""
        self._latency.observe(samples, seconds)

    def anchor(self, samples: int, seconds: float) -> None:
        """A calibration point of the latency model (see :meth:`LatencyModel.anchor`)."""
        self._latency.anchor(samples, seconds)

    @property
    def reserve_s(self) -> float:
        """The reserve for the work after sampling, uncapped (its 99.5th percentile)."""
        return self._reserve_s

    def min_budget_s(self) -> float:
        """The fitted cost of one sample: a budget below it raises :class:`BudgetError`."""
        return self.latency.typical(1)

    def start(self, budget_s: float, cap: int, *, started: float | None = None, step: int = 1,
              ladder: bool = False) -> BudgetCall:
        """Plan one input's sampling: at most ``cap`` samples, ``budget_s`` from ``started`` (default: now).

        Chunks are multiples of ``step`` (``cap`` should be one too); with ``ladder``, only 1, 2, 3,
        4, 6, 8, 12, ... steps (:func:`ladder_floor`).

        Raises:
            BudgetError: the budget is below the fitted cost of one sample.
        """
        latency = self.latency
        if latency.typical(1) > budget_s:
            raise BudgetError(
                f"The latency budget is smaller than one MC sample on this machine. Expected budget_ms >= "
                f"{latency.typical(1) * 1e3:.3f} (the fitted cost of one sample). "
                f"Received: budget_ms={budget_s * 1e3:g}"
            )
        if self._after_n % _RESERVE_EVERY == 0:
            after = sorted(tuple(self._after))  # noqa: C414 - tuple() copies a deque in one C call: safe while others append
            self._reserve_s = _quantile(after, LatencyModel._QUANTILE)
            self._after_med = _quantile(after, 0.5)
        # A stall after sampling longer than a quarter of the budget breaks its call whatever is
        # reserved; reserving for it would starve the next 256 calls instead. Capped like the margins.
        reserve = min(self._reserve_s, (1 - _MIN_SHARE) * budget_s)
        slack_s = self.slack.slack(budget_s) * budget_s
        t0 = self.clock() if started is None else started
        return BudgetCall(self, budget_s, cap, t0, t0 + budget_s - reserve - slack_s, t0 + budget_s - self._after_med,
                          step, ladder)

    def _record(self, budget_s: float, after_s: float, elapsed_s: float) -> None:
        self._after.append(after_s)
        self._after_n += 1
        self.slack.update(budget_s, elapsed_s)


class BudgetCall:
    """One input's budgeted sampling (made by :meth:`BudgetController.start`).

    Attributes:
        budget_s, cap, started: the budget, the most samples wanted, when the budget began.
        deadline: when sampling should be done (the budget minus the reserve and the slack).
        hard: the budget minus the typical time after sampling (sizes the floor of samples).
        cut: True once the budget stopped sampling before ``cap``.
    """

    def __init__(self, controller: BudgetController, budget_s: float, cap: int, started: float, deadline: float,
                 hard: float, step: int = 1, ladder: bool = False):
        self.controller, self.budget_s, self.cap, self.started = controller, budget_s, cap, started
        self.deadline, self.hard, self.step, self.ladder = deadline, hard, max(1, int(step)), ladder
        self.cut = False
        self._chunk_s = self._floor = None
        self._spent = self._fitted = 0.0
        self._last = False
        self._asked = 0
        self._sampled_at: float | None = None

    def _speed(self, latency: LatencyModel) -> float:
        # The speed to plan at: the latency model's speed of the moment (recent invokes, this
        # call's chunks included), or this call's own chunks' time over their fitted time if that
        # is slower. The latter also sees delays outside the invokes the model times, at full
        # weight: a call whose first chunk ran 1.5x slow will run its last one slow too.
        slow = latency.speed()
        if self._fitted > 0:
            slow = max(slow, self._spent / self._fitted)
        return slow

    def next_chunk(self, done: int, want: int) -> int:
        """Samples to draw next, at most ``want`` (0: stop). ``done`` samples are drawn so far."""
        if self._last or done >= self.cap:
            return 0
        latency = self.controller.latency
        now = self.controller.clock()
        per = max(latency.per_sample_s, 1e-9)
        if self._chunk_s is None:
            # Chunks of at most a third of the budget (and no less than _MIN_CHUNK_S, where the
            # per-invoke cost would eat the samples): only the last chunk is sized by the p99
            # margin, and a delay there is the only one that can break the budget.
            self._chunk_s = max((self.deadline - now) / _BUDGET_CHUNKS, _MIN_CHUNK_S)
            # The p99 margins never cost more than (1 - _MIN_SHARE) of the samples that fit in the
            # whole budget at the typical cost: delays bigger than that hit one sample as hard as
            # fifty, so giving up more samples would cost the answer's quality and buy no latency.
            self._floor = int(_MIN_SHARE * (self.hard - now - latency.fixed_s) / per)
        want = min(want, self.cap - done)
        slow = self._speed(latency)
        # A chunk lasts chunk_s at the speed planned at (not at the fit's speed: in a phase twice
        # as slow, a third of the budget's worth of samples takes two thirds).
        want = min(want, max(1, int((self._chunk_s / slow - latency.fixed_s) / per)))
        self._asked = want
        fit = latency.largest_fitting(self.deadline - now, want, speed=slow)
        # The floor overrides the p99 margins, never the evidence of speed: it plans no sample past
        # the deadline at the speed planned at.
        left = int(((self.deadline - now) / slow - latency.fixed_s) / per)
        fit = max(fit, min(want, self._floor - done, left))
        return self._settle(fit, want, done)

    def _round(self, n: int) -> int:
        """``n`` rounded down to an allowed chunk size (0 if below the smallest)."""
        k = n // self.step
        return (ladder_floor(k) if self.ladder else k) * self.step

    def _settle(self, fit: int, want: int, done: int) -> int:
        if fit < want:
            self.cut = done + fit < self.cap
        if fit < 1:
            if done > 0:
                return 0
            fit = 1  # a prediction needs one sample; budget_cut says it was tight
        fit = self._round(fit)
        if fit < 1:
            if done > 0:
                self.cut = self.cut or done < self.cap
                return 0
            fit = self.step  # the smallest chunk there is: one batch
        self._last = fit < self._asked
        return fit

    def replan(self, done: int, planned: int) -> int:
        """After a slow step outside the plan (an allocation): what of ``planned`` still fits (0: stop)."""
        latency = self.controller.latency
        fit = latency.largest_fitting(self.deadline - self.controller.clock(), planned, speed=self._speed(latency))
        fit = max(1 if done == 0 else 0, fit)
        fit = self._round(fit) if fit >= self.step or done > 0 else self.step
        if fit < 1:
            self.cut = True
            self._last = True
            return 0
        self._last = fit < self._asked
        if fit < planned:
            self.cut = done + fit < self.cap
        return fit

    def ran(self, samples: int, seconds: float) -> None:
        """This call's chunk of ``samples`` took ``seconds`` (wall time, everything included)."""
        self._spent += seconds
        self._fitted += self.controller.latency.typical(samples)

    def sampled(self) -> None:
        """Sampling is over: the time from now to :meth:`finish` is the work after sampling."""
        self._sampled_at = self.controller.clock()

    def finish(self) -> float:
        """The input is done: learn from its after-sampling time and its outcome. Returns its seconds."""
        end = self.controller.clock()
        after = end - (self._sampled_at if self._sampled_at is not None else end)
        elapsed = end - self.started
        self.controller._record(self.budget_s, after, elapsed)
        return elapsed
