"""The budget controller (edgekit.runtime.budget) through its own API, on a fake clock (no interpreter).

A fake machine: every chunk of n samples "takes" ``cost(n)`` seconds, which the test adds to the
fake clock; nothing sleeps and nothing depends on this VM's noise. Random costs come from seeded
generators, so every number here is reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.runtime.budget import BudgetController, BudgetError, LatencyModel, SlackTracker, ladder_floor
from edgekit.runtime.stalls import StallTracker, runqueue_wait_clock

FIXED, PER = 1e-4, 1e-5  # the fake sampler: 0.1 ms per invoke plus 10 us per sample


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _controller(clock: FakeClock) -> BudgetController:
    c = BudgetController(clock=clock)
    for t in (1, 16, 128):  # what MCModel's calibration does, at the fake machine's exact cost
        c.anchor(t, FIXED + PER * t)
    return c


def _call(c: BudgetController, clock: FakeClock, budget_s: float, cost, *, cap: int = 100_000, observe: bool = True,
          after_s: float = 2e-5, step: int = 1, ladder: bool = False):
    """One budgeted input the way MCModel.predict runs it. Returns (samples, elapsed s, cut, chunk sizes)."""
    call = c.start(budget_s, cap, step=step, ladder=ladder)
    done, chunks = 0, []
    while (n := call.next_chunk(done, cap - done)) > 0:
        seconds = cost(n)
        clock.advance(seconds)
        # The call sees the chunk's whole wall time and, with `observe`, gives it to the latency model.
        call.ran(n, seconds, observe=observe)
        done += n
        chunks.append(n)
    call.sampled()
    clock.advance(after_s)  # statistics and the result
    return done, call.finish(), call.cut, chunks


def _usual(n: int) -> float:
    return FIXED + PER * n


def _learn(c, clock, budget_s, calls=60):
    return [_call(c, clock, budget_s, _usual) for _ in range(calls)]


def test_calibration_is_lazy_and_happens_once():
    seen = []

    def calibrate(lm):
        seen.append(lm)
        lm.anchor(1, 1e-4)
        lm.anchor(100, 1e-3)

    c = BudgetController(clock=FakeClock(), calibrate=calibrate)
    c.observe(10, 2e-4)  # a fixed-T caller's invokes update the model without calibrating it
    assert seen == []
    assert c.latency.per_sample_s > 0 and len(seen) == 1
    assert c.latency is seen[0] and len(seen) == 1


def test_budget_is_held_on_a_noisy_machine_with_most_of_the_samples():
    # Chunk costs with lognormal noise (sigma 0.1) and, 1 time in 300, a 0.2 ms delay. The budget
    # is the promise (p99 within it) and at least 70% of the samples that fit at the usual cost are
    # drawn (the issue-4 targets bench/mc_speed.py checks on the real machine). At 1 ms the floor of
    # 75% of the samples holds the share, and the p99 ends at 0.995 ms: a delay of 0.3 ms in 1 chunk
    # in 100 breaks it there (p99 1.05 ms), which is the floor's documented trade.
    rng = np.random.default_rng(0)
    clock = FakeClock()
    c = _controller(clock)

    def noisy(n):
        return _usual(n) * rng.lognormal(0.0, 0.1) + (2e-4 if rng.random() < 1 / 300 else 0.0)

    for budget in (0.001, 0.002, 0.005, 0.02):
        results = [_call(c, clock, budget, noisy) for _ in range(2000)]
        elapsed = np.array([r[1] for r in results[500:]])  # after the slack has learnt this budget
        fit = (budget - FIXED) / PER
        share = np.median([r[0] for r in results[500:]]) / fit
        assert np.quantile(elapsed, 0.99) <= budget, (budget, np.quantile(elapsed, 0.99))
        assert share >= 0.7, (budget, share)


def test_later_chunks_are_planned_at_the_speed_earlier_ones_ran():
    # A slow phase the latency model does not see (the delay is outside the invokes it times): the
    # call's own chunks ran 2x their fitted time, so its later chunks must be planned at that speed.
    clock = FakeClock()
    c = _controller(clock)
    fast = _learn(c, clock, 0.02)[-1][0]
    slow = [_call(c, clock, 0.02, lambda n: 2 * _usual(n), observe=False) for _ in range(5)]
    # Without the call's own speed (spent / fitted), the later chunks are planned at the fit's speed
    # and every call ends near 30 ms (checked: this fails then).
    assert max(r[1] for r in slow) <= 0.02, [r[1] for r in slow]
    assert all(r[2] for r in slow)  # cut by the budget, and it says so
    assert max(r[0] for r in slow) < 0.8 * fast


def test_even_the_first_chunk_is_planned_at_the_speed_of_the_moment():
    # A slow phase the latency model does see (every invoke takes 3x): its speed factor follows, so
    # a call's first chunk, planned before the call has run anything, shrinks about threefold.
    clock = FakeClock()
    c = _controller(clock)
    fast_first = _learn(c, clock, 0.02)[-1][3][0]
    for _ in range(2):  # two calls move the factor most of the way (weight 0.5 per invoke)
        _call(c, clock, 0.02, lambda n: 3 * _usual(n))
    first = _call(c, clock, 0.02, lambda n: 3 * _usual(n))[3][0]
    # Ideally 1/3 (checked: with a speed weight of 0, i.e. no speed factor, the first chunk keeps its size).
    assert first < 0.5 * fast_first, (fast_first, first)


def test_the_speed_factor_fades_on_the_injected_clock():
    clock = FakeClock()
    lm = LatencyModel(clock=clock, speed_memory_s=1.0)
    for t in (1, 16, 128):
        lm.anchor(t, _usual(t))
    for _ in range(4):
        lm.observe(16, 2 * _usual(16))
    excess = lm.speed() - 1
    assert excess > 0.5 and lm.speed() - 1 == excess  # no time passes on this clock between readings
    clock.advance(1.0)  # one memory: the excess over 1 has decayed by e
    assert lm.speed() - 1 == pytest.approx(excess / np.e, rel=1e-9)
    clock.advance(20.0)
    assert lm.speed() == pytest.approx(1.0, abs=1e-6)


def test_one_stall_after_sampling_does_not_starve_later_calls():
    # The reserve for the work after sampling is its 99.5th percentile over the last 256 inputs, so
    # one 50 ms stall there (a GC pass) would set it for 256 calls: capped at a quarter of the budget.
    clock = FakeClock()
    c = _controller(clock)
    before = _learn(c, clock, 0.02)[-1][0]
    _call(c, clock, 0.02, _usual, after_s=0.05)
    after = [_call(c, clock, 0.02, _usual)[0] for _ in range(16)]  # the reserve is recomputed every 8th input
    assert c.reserve_s > 0.02  # the stall is in the reserve...
    # ...but it costs at most a quarter of the budget, i.e. about a third of the samples
    # (1 - 0.25 / 0.75; checked: without the cap, every later call draws 1 sample).
    assert min(after[8:]) >= 0.6 * before, (before, after)


def test_a_budget_below_one_sample_is_an_error():
    clock = FakeClock()
    c = _controller(clock)
    with pytest.raises(BudgetError, match=r"Expected budget_ms >= 0\.110 .*Received: budget_ms=0\.05"):
        c.start(5e-5, 100)
    # Tight but possible: one sample, and the cut is reported.
    samples, _, cut, _ = _call(c, clock, 1.2e-4, _usual)
    assert samples == 1 and cut


def test_chunks_on_a_ladder_or_in_whole_batches():
    clock = FakeClock()
    c = _controller(clock)
    for budget in (0.0005, 0.001, 0.002, 0.005):
        for _ in range(20):
            _, _, _, chunks = _call(c, clock, budget, _usual, ladder=True)
            assert all(ladder_floor(n) == n for n in chunks), chunks  # a seeded file: few batch sizes
            _, _, _, chunks = _call(c, clock, budget, _usual, step=16, cap=4096)
            assert chunks and all(n % 16 == 0 for n in chunks), chunks  # a fixed-batch sampler
    # A budget that fits fewer samples than one batch still draws one batch: a prediction needs one.
    samples, _, cut, chunks = _call(c, clock, 2e-4, _usual, step=16, cap=4096)
    assert samples == 16 and chunks == [16] and cut
    ladder = [ladder_floor(n) for n in (0, 1, 2, 3, 5, 7, 11, 13, 100, 191, 192)]
    assert ladder == [0, 1, 2, 3, 4, 6, 8, 12, 96, 128, 192]


# ---------------------------------------------------------------- the latency model and the slack


def test_latency_model_fits_a_linear_cost_exactly():
    lm = LatencyModel(clock=FakeClock())
    for t in (1, 16, 128):
        lm.anchor(t, 0.001 + 0.0001 * t)
    assert lm.fixed_s == pytest.approx(0.001) and lm.per_sample_s == pytest.approx(0.0001)
    # Margin of half the cost until 20 residuals are seen: 10 ms / 1.5 - 1 ms = 5.67 ms -> 56.
    assert lm.largest_fitting(0.010, 1000) == 56
    assert lm.largest_fitting(0.010, 20) == 20
    assert lm.largest_fitting(0.001, 1000) == 0
    # Then the margin is the p99 of observed - predicted: 2 delays of 2 ms in 40 invokes set it
    # near 2 ms (the fit itself barely moves: relative-error weights shrink the outliers; 2.1 ms
    # allows for the fit and the speed factor predicting the on-time invokes a hair low).
    for i in range(40):
        lm.observe(16, 0.0026 + (0.002 if i in (5, 25) else 0.0))
    assert lm.margin_s is not None and 0.001 < lm.margin_s <= 0.0021
    # Predictions are the fit times the speed factor: back to ~1 after 14 on-time invokes (a
    # little under: the two delays pulled the fit up, so on-time invokes run ~1% under it).
    speed = lm.speed()
    assert speed == pytest.approx(1.0, abs=0.03)
    expected = int(((0.010 - lm.margin_s) / speed - lm.fixed_s) / lm.per_sample_s)
    assert lm.largest_fitting(0.010, 1000, speed=speed) == expected


def test_latency_margin_is_kept_per_size_bucket():
    lm = LatencyModel(clock=FakeClock())
    for t in (1, 16, 128, 1024):
        lm.anchor(t, 0.001 + 0.00001 * t)
    for i in range(40):  # small invokes: on time; large ones: 1 in 4 is 3 ms late
        lm.observe(8, 0.001 + 0.00008)
        lm.observe(600, 0.001 + 0.006 + (0.003 if i % 4 == 0 else 0.0))
    small, large = lm.p99(8) - lm.typical(8), lm.p99(600) - lm.typical(600)
    assert small < 0.0005 and large > 0.002  # each size range keeps the margin it has shown
    # A budget that only small batches fit is not punished for the large batches' delays.
    assert lm.largest_fitting(0.0013, 2000) >= 8


def test_latency_speed_follows_a_slow_phase():
    lm = LatencyModel(clock=FakeClock())
    for t in (1, 16, 128):
        lm.anchor(t, 0.001 + 0.0001 * t)
    for _ in range(60):  # the usual speed: margins of ~0
        lm.observe(16, 0.0026)
    usual = lm.largest_fitting(0.010, 1000)
    for _ in range(8):  # a slow phase: every invoke takes twice its usual time
        lm.observe(16, 0.0052)
    # The fit moves a little toward the slow invokes too (8 of 68 in its window), so the speed
    # factor over the moved fit is under 2; 1.5 shows it followed the phase.
    assert lm.speed() > 1.5
    slow = lm.largest_fitting(0.010, 1000)
    assert slow < 0.75 * usual  # planned at the phase's speed, not at the fit's
    assert lm.largest_fitting(0.010, 1000, speed=1.0) > slow
    # One pre-emption moves the factor at most halfway to 4x, however long it was.
    lm.observe(16, 1.0)
    assert lm.speed() <= 0.5 * (4.0 + 2.0)


def test_slack_settles_where_about_one_call_in_200_ends_late():
    # A simulated machine: a call aimed at (1 - slack) of the budget takes aim * r, r lognormal
    # with sigma 0.1 (p99.5 of r = 1.29), so the slack that makes P(late) = 0.5% is 1 - 1/1.29 =
    # 0.225 > maximum: raise the maximum here to see the tracker settle on its own.
    rng = np.random.default_rng(0)
    tracker = SlackTracker(maximum=0.5)
    budget = 0.005
    late = []
    for _ in range(40_000):
        elapsed = (1 - tracker.slack(budget)) * budget * rng.lognormal(0.0, 0.1)
        tracker.update(budget, elapsed)
        late.append(elapsed > budget)
    # Over the last 30,000 calls: the target is 0.5%; the tracker's steps (3% of the budget)
    # make it wobble around it. 0.25%-1% is that wobble with room (0.50% for seeds 0-4).
    assert 0.0025 < np.mean(late[10_000:]) < 0.01
    assert 0.15 < tracker.slack(budget) < 0.3
    # Other budgets keep their own slack, which starts at the cautious default.
    assert tracker.slack(0.020) == tracker.start


def test_slack_is_bounded_both_ways():
    tracker = SlackTracker()
    for _ in range(100):  # a machine where every call ends late
        tracker.update(0.001, 0.002)
    assert tracker.slack(0.001) == tracker.maximum
    for _ in range(10_000):  # a quiet one: never late
        tracker.update(0.001, 0.0005)
    assert tracker.slack(0.001) == 0.0


# ---------------------------------------------------------------- stalls: the CPU given to another process


class FakeWait:
    """The thread's cumulative wait for a CPU on the fake machine (seconds)."""

    def __init__(self) -> None:
        self.total = 0.0

    def __call__(self) -> float:
        return self.total


class StallingMachine:
    """Chunks of the fake sampler, and a stall of 3.5-4 ms (a scheduler time slice) that starts at a
    random moment of the call, ``rate`` times per second of work, with no invoke making progress:
    the clock and the wait clock both move by its length. Seeded."""

    def __init__(self, clock: FakeClock, wait: FakeWait, rate: float, seed: int = 0):
        self.clock, self.wait, self.rate = clock, wait, rate
        self.rng = np.random.default_rng(seed)

    def stall(self, seconds: float) -> float:
        if self.rng.random() < 1 - np.exp(-self.rate * seconds):
            s = self.rng.uniform(0.0035, 0.004)
            self.wait.total += s
            return s
        return 0.0

    def cost(self, n: int) -> float:
        work = _usual(n)
        return work + self.stall(work)


def _stalled_call(c, m: StallingMachine, budget_s: float, *, cap: int = 100_000, after_s: float = 2e-5):
    """``_call`` on the stalling machine: the work after sampling can stall too."""
    done, elapsed, cut, chunks = _call(c, m.clock, budget_s, m.cost, cap=cap, after_s=after_s + m.stall(after_s))
    return done, elapsed, cut, chunks


def _stall_controller(clock, wait, records=None):
    c = BudgetController(clock=clock, wait_clock=wait, on_finish=None if records is None else records.append)
    for t in (1, 16, 128):
        c.anchor(t, _usual(t))
    return c


def test_a_budget_holds_beside_a_competing_process_with_most_of_its_samples():
    # Two stalls a second of work, 3.5-4 ms each: a 20 ms call catches one 4% of the time, and it
    # makes the call late whenever it starts in a chunk ending after 16 ms. Knowing the stalls,
    # sampling ends where a stall is unlikely (P ~ 0.5%) to break the budget, and no chunk crosses
    # the line after which one would: p99 within the budget at ~90% of the samples that fit.
    clock, wait = FakeClock(), FakeWait()
    c = _stall_controller(clock, wait)
    m = StallingMachine(clock, wait, rate=2.0)
    results = [_stalled_call(c, m, 0.02) for _ in range(4000)]
    elapsed = np.array([r[1] for r in results[1000:]])
    share = np.median([r[0] for r in results[1000:]]) / ((0.02 - FIXED) / PER)
    assert np.quantile(elapsed, 0.99) <= 0.02, np.quantile(elapsed, 0.99)
    # Checked: blind to the stalls (no wait clock), the controller holds the p99 only through
    # margins inflated by the stalled invokes, ending sampling ~4 ms early (share ~0.79).
    assert share >= 0.85, share


def test_no_chunk_crosses_the_stall_line():
    clock, wait = FakeClock(), FakeWait()
    records = []
    c = _stall_controller(clock, wait, records)
    m = StallingMachine(clock, wait, rate=2.0)
    for _ in range(300):
        _stalled_call(c, m, 0.02)
    lined = [r for r in records if r.stall_line_s is not None]
    assert len(lined) > 250  # the line is drawn once a stall has been seen
    for r in lined:
        ends = r.before_s + np.cumsum([seconds for _, seconds, _ in r.chunks])
        starts = ends - [seconds for _, seconds, _ in r.chunks]
        # A chunk may start within one sample's time before the line (chunks are whole samples);
        # none that starts earlier ends past it (its own stall left out: it is what the line is for).
        crossing = (starts < r.stall_line_s - PER) & (ends - [s for _, _, s in r.chunks] > r.stall_line_s)
        assert not crossing.any(), (r.stall_line_s, starts, ends)
    # The line sits one stall (3.5-4 ms, the 90th percentile of those seen) before the budget's end.
    assert 0.0155 < np.median([r.stall_line_s for r in lined]) < 0.0165


def test_stalls_stay_out_of_the_latency_margins_and_the_slack():
    # A 1 ms budget cannot be held when a 4 ms stall hits (nothing can), but those stalls are no
    # reason to plan every later invoke as if it were 4 ms slow, or to keep the slack at its maximum.
    for blind in (False, True):
        clock, wait = FakeClock(), FakeWait()
        c = BudgetController(clock=clock, wait_clock=None if blind else wait)
        for t in (1, 16, 128):
            c.anchor(t, _usual(t))
        m = StallingMachine(clock, wait, rate=20.0, seed=1)
        results = [_stalled_call(c, m, 0.001) for _ in range(3000)]
        late = np.mean([r[1] > 0.001 for r in results[1000:]])
        assert late > 0.005  # the stalls do break 1 ms calls
        margin, slack = c.latency.margin_s, c.slack.slack(0.001)
        if blind:  # what the controller learns without the wait clock: the contrast that makes this test fail
            assert margin > 0.0015 and slack > 0.15, (margin, slack)
        else:
            assert margin < 1e-4 and slack < 0.05, (margin, slack)


def test_frequent_stalls_are_planned_as_the_machines_speed():
    # Sixty stalls a second of work: more than one per 20 ms call. Guarding against one stall at a
    # time is then too optimistic (checked: it ends 6.5% of calls late, p99 23 ms); the stalls are
    # the machine's speed instead, in the margins, the speed factor and the slack, as without a wait clock.
    clock, wait = FakeClock(), FakeWait()
    records = []
    c = _stall_controller(clock, wait, records)
    m = StallingMachine(clock, wait, rate=60.0)
    results = [_stalled_call(c, m, 0.02) for _ in range(3000)]
    elapsed = np.array([r[1] for r in results[1000:]])
    share = np.median([r[0] for r in results[1000:]]) / ((0.02 - FIXED) / PER)
    assert np.quantile(elapsed, 0.99) <= 0.02, np.quantile(elapsed, 0.99)
    assert share >= 0.6, share  # 0.70 here; an invoke of the first chunk meets a stall 1 time in 3
    assert all(r.stall_line_s is None for r in records[1000:])
    assert c.stalls.rate() == pytest.approx(60, rel=0.3)  # still learnt: the line returns when stalls become rare


def test_stall_tracker_rate_length_and_memory():
    clock = FakeClock()
    t = StallTracker(clock=clock, memory_s=5.0, prior_s=0.25, q=0.005)
    assert t.plan() is None and t.rate() == 0.0
    for i in range(100):  # 1 s of calls, 10 ms each, a 4 ms stall in every 10th: 10 stalls a second
        clock.advance(0.01)
        t.observe(0.01, [0.004] if i % 10 == 0 else [])
    # 10 stalls over 1 s of calls (faded a little over that second) plus the 0.25 s prior.
    assert t.rate() == pytest.approx(10 / 1.25, rel=0.15)
    length, window = t.plan()
    assert length == pytest.approx(0.004) and window == pytest.approx(0.005 / t.rate())
    clock.advance(60.0)  # a minute without calls ...
    t.observe(0.01, [])  # ... and the evidence has faded: no stall is likely any more
    assert t.rate() < 0.01 and t.plan()[1] > 1.0


def test_runqueue_wait_clock_counts_up():
    wait = runqueue_wait_clock(threads=1)
    assert wait is not None  # Linux: schedstat; elsewhere wall minus CPU time with one thread
    a = wait()
    sum(range(100_000))
    assert 0.0 <= a <= wait()
