"""Latency budgets: how many MC samples fit in the time left, decided by one controller.

>>> controller = BudgetController()                   # clock=time.perf_counter by default
>>> call = controller.start(0.005, cap=1000)          # one input, 5 ms from now
>>> while (n := call.next_chunk(done, want)) > 0:     # the sampler draws n samples per chunk
...     ...; call.ran(n, seconds); done += n
>>> call.sampled(); ...; call.finish()                # the work after sampling, then the outcome

What decides a chunk (the reasoning, with measurements, is in docs/budgets.md):

- A :class:`~edgekit.runtime.latency.LatencyModel` ``cost(T) = fixed + per_sample * T`` of one invoke, a tail
  margin learnt per size range, and the machine's speed of the moment.
- Sampling goes in chunks of at most a third of the budget (none shorter than ``_MIN_CHUNK_S``),
  so that a delay in an early chunk is absorbed by the later ones. Each chunk is planned at the
  speed of the moment: the latency model's, or the speed this call's chunks ran at if slower.
- The last chunk is the largest whose predicted 99.5th percentile fits what is left, minus a
  **reserve** for the work after sampling and a **slack** learnt from how often calls end late
  (:class:`SlackTracker`).
- **Stalls** (the thread waiting for a CPU while another process runs) are read from a
  ``wait_clock`` and learnt by a :class:`~edgekit.runtime.stalls.StallTracker`. While they are
  rare, they are kept out of the invoke timings, sampling aims to end where one is unlikely to
  break the budget, and no chunk crosses the *stall line* (the budget minus a stall); when
  several per call are likely, they count as the machine's slowness.
- Protection is capped: at least ``_MIN_SHARE`` of the samples that fit at the typical cost
  are drawn, unless the speed planned at shows they would end past the budget. The reserve is
  capped the same way.
- Chunk sizes can be held to multiples of ``step`` (a fixed-batch sampler) and to a ``ladder``
  of few sizes (1, 2, 3, 4, 6, 8, 12, ... steps: a seeded file keeps one interpreter per size).

Every time comes from the controller's ``clock`` and ``wait_clock`` (injectable), so the whole
controller can be driven by fake clocks and fake invoke costs. Thread-safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edgekit.errors import EdgekitError
from edgekit.runtime.latency import LatencyModel, _quantile
from edgekit.runtime.stalls import StallTracker

__all__ = [
    "BudgetCall",
    "BudgetController",
    "BudgetError",
    "CallRecord",
    "LatencyModel",
    "SlackTracker",
    "ladder_floor",
]

# Budgeted sampling goes in chunks of at most 1/_BUDGET_CHUNKS of the budget, none shorter than
# _MIN_CHUNK_S (each invoke has a fixed cost). A 2 ms budget then samples in two chunks, so that
# a delay in the first shrinks the second: the budget is the promise, the share of samples second.
_BUDGET_CHUNKS = 3
_MIN_CHUNK_S = 0.001
# Under a budget, at least this share of the samples that fit at the typical cost is drawn, however
# large the learnt margins and stall guards grow.
_MIN_SHARE = 0.75
# The reserve for the work after sampling is recomputed every this many inputs (a sort of 256 values).
_RESERVE_EVERY = 8
# A chunk is cut at the stall line only if the part before the line is worth an invoke: at least
# this many times the invoke's fixed cost.
_LINE_MIN_FIXED = 2.0
# Stalls are planned around one at a time while fewer than this many are expected in a call of
# the budget (rate x budget); above it, several per call are likely, and they are treated as the
# machine's slowness instead: in the invoke timings, the margins, the reserve and the slack.
_RARE_STALLS = 0.25


class BudgetError(EdgekitError, ValueError):
    """The latency budget is too small for even one MC sample on this machine."""


def ladder_floor(n: int) -> int:
    """Largest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5x them) <= n; 0 below 1."""
    if n < 1:
        return 0
    p = 1 << (n.bit_length() - 1)
    return p + p // 2 if p >= 2 and p + p // 2 <= n else p


class SlackTracker:
    """A slack per budget, learnt from how often budgeted calls actually end late.

    The latency model's margins, the reserve for the work after sampling and the stall guard
    cover delays they have seen in their own part of a call; what they miss (several small
    delays in one call, a slow phase starting) shows up only as calls ending late. So sampling
    aims to end ``slack(budget) * budget`` before the budget, and each call's outcome moves the
    slack: a late call adds ``step``, an on-time one takes off ``step * q / (1 - q)``. That
    settles where P(late) = q (a stochastic-approximation quantile tracker), with ``q`` half the
    1% a p99 allows. It cannot run away (a shorter aim makes calls end earlier, never later) and
    stays within [0, ``maximum``]: beyond that the slack would cost the share of samples a
    budget should buy, for delays that hit one sample as hard as many. It starts cautious at
    ``start``, so that the learning itself does not cost the p99.

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


@dataclass(frozen=True)
class CallRecord:
    """What one budgeted input did, given to :attr:`BudgetController.on_finish` (diagnostics).

    Times are seconds from the call's start. ``chunks`` holds ``(samples, seconds, stalled)`` per
    sampler chunk; a chunk's wait for the CPU is read only when it ran slower than planned (so
    ``stalled`` is 0.0 for the others). ``stalls`` lists every stall of the call (waits of at least
    ``min_stall_s``), wherever it fell; ``stall_line`` is None when no line was drawn.
    """

    budget_s: float
    elapsed_s: float
    samples: int
    cut: bool
    aim_s: float
    stall_line_s: float | None
    before_s: float
    sampled_s: float
    after_s: float
    chunks: tuple[tuple[int, float, float], ...]
    stalls: tuple[float, ...]


class BudgetController:
    """Owns every piece of budget state: the latency model, the reserve after sampling, the slack, the stalls.

    Args:
        clock: the time source (seconds); a test passes a fake one.
        latency: the latency model (default: a new one on ``clock``).
        calibrate: called once with the latency model on first use of :attr:`latency` (the runtime
            times a few invokes there; None: the caller anchors the model itself).
        slack: the slack tracker (default: a new :class:`SlackTracker`).
        wait_clock: the calling thread's cumulative wait for a CPU in seconds
            (:func:`runqueue_wait_clock`); None: stalls are not told apart from slow invokes.
        stalls: the stall tracker (default: a new :class:`StallTracker` on ``clock``).
        on_finish: called with a :class:`CallRecord` after every budgeted input (settable later).
    """

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter, latency: LatencyModel | None = None,
                 calibrate: Callable[[LatencyModel], None] | None = None, slack: SlackTracker | None = None,
                 wait_clock: Callable[[], float] | None = None, stalls: StallTracker | None = None,
                 on_finish: Callable[[CallRecord], None] | None = None):
        self.clock = clock
        self._latency = latency if latency is not None else LatencyModel(clock=clock)
        self._calibrate = calibrate
        self._calibrated = calibrate is None
        self._calibrate_lock = threading.Lock()
        self.slack = slack if slack is not None else SlackTracker()
        self.wait_clock = wait_clock
        self.stalls = stalls if stalls is not None else StallTracker(clock=clock)
        self.on_finish = on_finish
        # Time a budgeted input needs after sampling (statistics, bookkeeping, and for the last
        # input of a call the result's assembly). Sampling aims to end its 99.5th percentile
        # before the budget does (measured after sampling only: see docs/budgets.md, "Reserve").
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
        line = aim = None
        plan = self.stalls.plan() if self.wait_clock is not None else None
        rare = plan is None or self.stalls.rate() * budget_s < _RARE_STALLS
        if plan is not None and rare and plan[1] < budget_s:  # rare, but likely enough to hit this budget
            length, window = plan
            line = t0 + budget_s - self._after_med - length
            aim = line + window
        return BudgetCall(self, budget_s, cap, t0, t0 + budget_s - reserve - slack_s, t0 + budget_s - self._after_med,
                          step, ladder, line, aim, rare)

    def _record(self, call: BudgetCall, after_s: float, elapsed_s: float, stalls: list[float]) -> None:
        self._after.append(after_s)
        self._after_n += 1
        stalled = sum(stalls)
        # While stalls are rare, the slack learns the lateness they do not explain: they have their
        # own guard, and a stall longer than the slack's range would push it to its maximum for nothing.
        self.slack.update(call.budget_s, elapsed_s - stalled if call.stalls_apart else elapsed_s)
        if self.wait_clock is not None:
            self.stalls.observe(elapsed_s - stalled, stalls)
        if self.on_finish is not None:
            self.on_finish(call._record(after_s, elapsed_s, stalls))


class BudgetCall:
    """One input's budgeted sampling (made by :meth:`BudgetController.start`).

    Attributes:
        budget_s, cap, started: the budget, the most samples wanted, when the budget began.
        deadline: when sampling should be done (the budget minus the reserve and the slack).
        hard: the budget minus the typical time after sampling (sizes the floor of samples).
        stall_line: no chunk crosses it (the budget minus a stall of the usual length), or None.
        stall_aim: when sampling should be done for stalls to be unlikely to make it late, or None.
        stalls_apart: stalls are rare enough to be planned around one at a time (see ``_RARE_STALLS``):
            they are kept out of the latency model, the reserve and the slack.
        cut: True once the budget stopped sampling before ``cap``.
    """

    def __init__(self, controller: BudgetController, budget_s: float, cap: int, started: float, deadline: float,
                 hard: float, step: int = 1, ladder: bool = False, stall_line: float | None = None,
                 stall_aim: float | None = None, stalls_apart: bool = True):
        self.controller, self.budget_s, self.cap, self.started = controller, budget_s, cap, started
        self.deadline, self.hard, self.step, self.ladder = deadline, hard, max(1, int(step)), ladder
        self.stall_line, self.stall_aim, self.stalls_apart = stall_line, stall_aim, stalls_apart
        self.cut = False
        self._chunk_s = self._floor = None
        self._spent = self._stalled = self._fitted = 0.0
        self._last = False
        self._asked = 0
        self._slow = 1.0
        self._first: float | None = None
        self._sampled_at: float | None = None
        self._chunks: list[tuple[int, float, float]] = []
        self._stalls: list[float] = []
        wait = controller.wait_clock
        self._waited = wait() if wait is not None else 0.0

    def _speed(self, latency: LatencyModel, *, stalls: bool = True) -> float:
        # The speed to plan at: the latency model's speed of the moment (recent invokes, this
        # call's chunks included), or this call's own chunks' time over their fitted time if that
        # is slower. The latter also sees delays outside the invokes the model times, at full
        # weight: a call whose first chunk ran 1.5x slow will run its last one slow too. It keeps
        # this call's stalls (see ran()) unless ``stalls`` is False: the invokes' own speed.
        slow = latency.speed()
        if self._fitted > 0:
            slow = max(slow, (self._spent - (0.0 if stalls else self._stalled)) / self._fitted)
        return slow

    def _aim(self) -> float:
        return self.deadline if self.stall_aim is None else min(self.deadline, self.stall_aim)

    def next_chunk(self, done: int, want: int) -> int:
        """Samples to draw next, at most ``want`` (0: stop). ``done`` samples are drawn so far."""
        if self._last or done >= self.cap:
            return 0
        latency = self.controller.latency
        now = self.controller.clock()
        per = max(latency.per_sample_s, 1e-9)
        if self._chunk_s is None:
            self._first = now
            # Chunks of at most a third of the budget (and no less than _MIN_CHUNK_S, where the
            # per-invoke cost would eat the samples): only the last chunk is sized by the p99
            # margin, and a delay there is the only one that can break the budget.
            self._chunk_s = max((self.deadline - now) / _BUDGET_CHUNKS, _MIN_CHUNK_S)
            # The margins never cost more than (1 - _MIN_SHARE) of the samples that fit in the
            # whole budget at the typical cost: delays bigger than that hit one sample as hard as
            # fifty, so giving up more samples would cost the answer's quality and buy little latency.
            self._floor = int(_MIN_SHARE * (self.hard - now - latency.fixed_s) / per)
        want = min(want, self.cap - done)
        slow = self._slow = self._speed(latency)
        # A chunk lasts chunk_s at the speed planned at (not at the fit's speed: in a phase twice
        # as slow, a third of the budget's worth of samples takes two thirds).
        want = min(want, max(1, int((self._chunk_s / slow - latency.fixed_s) / per)))
        self._asked = want
        fit = latency.largest_fitting(self._aim() - now, want, speed=slow)
        # The floor overrides the p99 margins and the stall guard, never the evidence of speed: it
        # plans no sample past the deadline at the speed planned at.
        left = int(((self.deadline - now) / slow - latency.fixed_s) / per)
        fit = max(fit, min(want, self._floor - done, left))
        line = self.stall_line
        if line is not None:
            # No chunk crosses the stall line: a stall in a chunk that ends before it still fits.
            # Sized at the invokes' own speed, so that the chunk ends at the line if it does not stall.
            own = self._speed(latency, stalls=False)
            if line - now >= _LINE_MIN_FIXED * latency.fixed_s * own:
                before = self._round(int(((line - now) / own - latency.fixed_s) / per))
                if 1 <= before < fit:
                    return before
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
        fit = latency.largest_fitting(self._aim() - self.controller.clock(), planned, speed=self._speed(latency))
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

    def ran(self, samples: int, seconds: float, *, observe: bool = False) -> None:
        """This call's chunk of ``samples`` took ``seconds`` (wall time, everything included).

        A chunk slower than planned by half a stall or more reads the wait clock: time spent
        waiting for the CPU is a stall, not the invoke's cost, and while stalls are rare
        (``stalls_apart``) it is kept out of the latency model (given the chunk with ``observe``).
        This call's own speed keeps it: a call that has stalled once plans the rest of its chunks
        as if it may stall again, which keeps the floor of samples from carrying it past the line.
        """
        controller = self.controller
        latency = controller.latency
        stalled = 0.0
        wait = controller.wait_clock
        min_stall = controller.stalls.min_stall_s
        typical = latency.typical(samples)
        if wait is not None and seconds > typical * self._slow + 0.5 * min_stall:
            now = wait()
            waited, self._waited = now - self._waited, now
            if waited >= min_stall:
                self._stalls.append(waited)
                stalled = waited
        self._chunks.append((samples, seconds, stalled))
        self._spent += seconds
        self._stalled += stalled
        self._fitted += typical
        if observe:
            clean = seconds - stalled if self.stalls_apart else seconds
            # Below half the typical cost the wait (or part of it) fell before this chunk: its time is unknown.
            if clean >= 0.5 * typical:
                controller.observe(samples, clean)

    def sampled(self) -> None:
        """Sampling is over: the time from now to :meth:`finish` is the work after sampling."""
        self._sampled_at = self.controller.clock()

    def finish(self) -> float:
        """The input is done: learn from its after-sampling time and its outcome. Returns its seconds."""
        controller = self.controller
        end = controller.clock()
        after = end - (self._sampled_at if self._sampled_at is not None else end)
        wait = controller.wait_clock
        if wait is not None:
            waited = wait() - self._waited
            if waited >= controller.stalls.min_stall_s:
                self._stalls.append(waited)
                if waited <= after and self.stalls_apart:  # it fell after sampling (else before, in the trunk)
                    after -= waited
        elapsed = end - self.started
        controller._record(self, after, elapsed, self._stalls)
        return elapsed

    def _record(self, after_s: float, elapsed_s: float, stalls: list[float]) -> CallRecord:
        t0 = self.started
        sampled = (self._sampled_at if self._sampled_at is not None else t0 + elapsed_s) - t0
        return CallRecord(
            budget_s=self.budget_s, elapsed_s=elapsed_s, samples=sum(c[0] for c in self._chunks), cut=self.cut,
            aim_s=self._aim() - t0, stall_line_s=None if self.stall_line is None else self.stall_line - t0,
            before_s=(self._first if self._first is not None else t0) - t0, sampled_s=sampled,
            after_s=elapsed_s - sampled, chunks=tuple(self._chunks), stalls=tuple(stalls),
        )
