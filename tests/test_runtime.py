"""edgekit.runtime.MCModel on the committed fixtures in the real LiteRT interpreter (no TensorFlow).

Statistical checks compare MC means with standard errors (SE) and a 4-SE bound: a correct
runtime fails one such check with probability ~6e-5 per class.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime import (
    BudgetError,
    IntegrityError,
    MCModel,
    ModelLoadError,
    OutputError,
    UnverifiedModelWarning,
    embed_metadata,
    read_metadata,
)
from edgekit.runtime.budget import LatencyModel, SlackTracker as _SlackTracker
from edgekit.runtime.summaries import summarize
from edgekit.runtime.safety import declared_tensors, probe_model

FIX = Path(__file__).parent / "fixtures"
W = np.load(FIX / "weights.npz")


def _x(model, n=1, seed=0):
    return np.random.default_rng(seed).random((n, *model.input.shape)).astype(np.float32)


def _numpy_mlp_mc(x, samples, seed=0):
    """The fixture MLP (Dense 64 relu -> MCDropout 0.3 -> Dense 5 softmax) sampled in numpy."""
    rng = np.random.default_rng(seed)
    h = np.maximum(x @ W["mlp_0"] + W["mlp_1"], 0)
    keep = (rng.random((samples, h.shape[-1])) >= 0.3) / 0.7
    z = (h * keep) @ W["mlp_2"] + W["mlp_3"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def mlp():
    return MCModel(FIX / "mlp_ingraph.tflite")


@pytest.fixture(scope="module")
def mlp_mask():
    return MCModel(FIX / "mlp_mask.tflite", seed=0)


# ---------------------------------------------------------------- the statistics


def test_summarize_definitions():
    agree = np.tile([[0.2, 0.8]], (5, 1))
    mean, std, ent, mi = summarize(agree)
    np.testing.assert_allclose(mean, [0.2, 0.8])
    np.testing.assert_allclose(std, 0, atol=1e-12)
    assert ent == pytest.approx(-(0.2 * np.log(0.2) + 0.8 * np.log(0.8)))
    assert mi == pytest.approx(0, abs=1e-9)  # samples agree: no model uncertainty
    disagree = np.array([[1.0, 0.0], [0.0, 1.0]])
    _, std, ent, mi = summarize(disagree)
    assert ent == pytest.approx(np.log(2), abs=1e-9) and mi == pytest.approx(np.log(2), abs=1e-9)
    np.testing.assert_allclose(std, [0.5, 0.5])


@pytest.mark.parametrize(
    "fixture, rng, masks_from",
    [
        ("mlp_ingraph", "auto", "file"),  # no `masked` twin: the file's RANDOM_UNIFORM
        ("mlp_mask", "auto", "numpy"),
        ("mlp_twin", "auto", "numpy"),  # in-graph file whose `masked` twin gets numpy masks
        ("mlp_twin", "graph", "file"),  # the same file, its own RANDOM_UNIFORM
    ],
)
def test_mc_mean_matches_numpy_reference(fixture, rng, masks_from):
    model = MCModel(FIX / f"{fixture}.tflite", seed=1, rng=rng)
    assert model.masks_from == masks_from
    x = _x(model)
    pred = model.predict(x, samples=2000)
    ref = _numpy_mlp_mc(x, 20000)
    se = np.sqrt(pred.std[0] ** 2 / 2000 + ref.std(0) ** 2 / 20000)
    assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 1e-6), (pred.mean[0], ref.mean(0), se)
    assert pred.std[0].max() > 0.01  # dropout really is active
    assert pred.samples[0] == 2000 and not pred.budget_cut[0]
    # Keras-style checks on the result's shapes and types.
    assert pred.mean.shape == (1, 5) and pred.mean.dtype == np.float32
    np.testing.assert_allclose(pred.mean.sum(axis=1), 1, atol=1e-5)  # float32 softmax rounding
    assert pred.predicted[0] == int(np.argmax(pred.mean[0]))
    assert pred.confidence[0] == pytest.approx(pred.mean[0].max())


def test_int8_io_model_matches_float_reference():
    model = MCModel(FIX / "mlp_int8io.tflite")
    assert model.input.dtype == np.int8 and model.input.scale > 0
    assert model.masks_from == "numpy"  # its `masked` twin takes int8 masks: quantized codes
    _assert_int8_matches_float_reference(model)  # float input, quantized with the input's scale/zero point


def _assert_int8_matches_float_reference(model) -> None:
    x = _x(model)
    pred = model.predict(x, samples=2000)
    ref = _numpy_mlp_mc(x, 20000)
    se = np.sqrt(pred.std[0] ** 2 / 2000 + ref.std(0) ** 2 / 20000)
    # + 0.01: the int8 output step is 1/256 ~ 0.004 and int8 weights/activations move each mean
    # probability by about one step on this model; two steps of slack, not a different answer.
    assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 0.01), (pred.mean[0], ref.mean(0))


def test_int8_model_with_float_io_loads_and_matches_float_reference():
    """An int8 model with float I/O still computes its softmax in int8: sums miss 1 by up to C/512.

    Regression: the output check used float32 slack for it and refused every such model at load.
    """
    model = MCModel(FIX / "mlp_int8.tflite")
    assert model.input.dtype == np.float32
    _assert_int8_matches_float_reference(model)


def test_int8_mask_input_model_gets_quantized_masks():
    model = MCModel(FIX / "mlp_int8mask.tflite", seed=0)
    _assert_int8_matches_float_reference(model)


def test_int8_input_out_of_range_names_scale_and_zero_point():
    model = MCModel(FIX / "mlp_int8io.tflite")
    with pytest.raises(ValueError, match=r"int8 \(scale=[0-9.e-]+, zero_point=-?\d+\).*Received: min=5, max=5"):
        model.predict(np.full(20, 5.0, np.float32), samples=4)


def test_trunk_is_computed_like_numpy(mlp):
    # The deterministic trunk equals Dense+ReLU in numpy to float32 rounding.
    x = _x(mlp, 4)
    feats = mlp._features(x)
    np.testing.assert_allclose(feats, np.maximum(x @ W["mlp_0"] + W["mlp_1"], 0), rtol=1e-5, atol=1e-5)


def test_batch_gives_one_row_per_input(mlp):
    x = _x(mlp, 3)
    pred = mlp.predict(x, samples=32)
    assert pred.mean.shape == (3, 5) and pred.samples.tolist() == [32, 32, 32]
    assert len(pred.to_dict()["predictions"]) == 3
    single = mlp.predict(x[0], samples=32)  # one input without a batch axis
    assert single.mean.shape == (1, 5)


@pytest.mark.parametrize("fixture", ["mlp_ingraph", "mlp_twin"])
def test_inputs_sharing_one_head_invoke_keep_their_own_rows(fixture):
    # T=300 and 3 inputs: all 900 rows go through one head invoke; each input's mean must match
    # its own numpy reference (a row-order mix-up would pull the means together). With numpy
    # masks (mlp_twin) single inputs send one feature row that the graph broadcasts; a group
    # sends every row, and must still pair each row with its own masks.
    mlp = MCModel(FIX / f"{fixture}.tflite", seed=9)
    assert mlp._broadcast == (fixture == "mlp_twin")
    x = _x(mlp, 3, seed=5) * np.array([[1.0], [4.0], [-3.0]], np.float32)
    pred = mlp.predict(x, samples=300)
    for i in range(3):
        ref = _numpy_mlp_mc(x[i : i + 1], 20000, seed=i)
        se = np.sqrt(pred.std[i] ** 2 / 300 + ref.std(0) ** 2 / 20000)
        assert np.all(np.abs(pred.mean[i] - ref.mean(0)) < 4 * se + 1e-6), i
    assert abs(pred.mean[1] - pred.mean[2]).max() > 0.05  # the inputs really differ


def test_in_graph_draws_differ_between_calls_and_sizes(mlp):
    x = _x(mlp)
    a = mlp.predict(x, samples=64).mean
    mlp.predict(x, samples=17)  # re-allocate for another batch size
    b = mlp.predict(x, samples=64).mean
    assert not np.array_equal(a, b)


def test_seeded_file_is_reproducible_and_never_restarts_its_sequence():
    m1, m2 = MCModel(FIX / "mlp_seeded.tflite"), MCModel(FIX / "mlp_seeded.tflite")
    x = _x(m1)
    seq1 = [m1.predict(x, samples=s).mean for s in (64, 17, 64)]
    seq2 = [m2.predict(x, samples=s).mean for s in (64, 17, 64)]
    for a, b in zip(seq1, seq2):
        np.testing.assert_array_equal(a, b)  # same seed in the file: same masks everywhere
    # LiteRT re-seeds a seeded RANDOM_UNIFORM whenever it is re-prepared (resize); the runtime
    # keeps one interpreter per batch size so the third call continues the sequence.
    assert not np.array_equal(seq1[0], seq1[2])


def test_seeded_file_under_a_budget_uses_few_batch_sizes():
    from edgekit.runtime.budget import ladder_floor as _ladder_floor

    assert [_ladder_floor(n) for n in (1, 2, 3, 5, 7, 11, 13, 100, 191, 192)] == [1, 2, 3, 4, 6, 8, 12, 96, 128, 192]
    model = MCModel(FIX / "mlp_seeded.tflite")
    for budget in (0.5, 1.0, 2.0, 3.0, 5.0):
        model.predict(_x(model), budget_ms=budget)
    sizes = set(model._local.by_size)
    assert all(_ladder_floor(s) == s for s in sizes - {1, 16, 128})


@pytest.mark.parametrize("fixture", ["mlp_mask", "mlp_twin"])
def test_numpy_masks_seed_reproducible_and_generator_never_reset(fixture):
    a, b = MCModel(FIX / f"{fixture}.tflite", seed=3), MCModel(FIX / f"{fixture}.tflite", seed=3)
    x = _x(a)
    ra = [a.predict(x, samples=s).mean for s in (40, 9, 40)]
    rb = [b.predict(x, samples=s).mean for s in (40, 9, 40)]
    for p, q in zip(ra, rb):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(ra[0], ra[2])
    c = MCModel(FIX / f"{fixture}.tflite", seed=4)
    assert not np.array_equal(c.predict(x, samples=40).mean, ra[0])


def _numpy_book_mc(x, samples, seed=0):
    """The book fixture (Flatten -> MCDropout 0.2 -> Dense 32 elu -> MCDropout 0.2 -> Dense 10) in numpy."""
    rng = np.random.default_rng(seed)
    h = x.reshape(1, -1) * ((rng.random((samples, 784)) >= 0.2) / 0.8)
    h = h @ W["book_0"] + W["book_1"]
    h = np.where(h > 0, h, np.expm1(np.minimum(h, 0)))
    h = h * ((rng.random((samples, 32)) >= 0.2) / 0.8)
    z = h @ W["book_2"] + W["book_3"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_book_twin_feeds_two_masks():
    # Flatten is the trunk; `masked` is the head with two mask inputs (784 and 32 units). The
    # numpy masks must give the MC mean of numpy dropout.
    model = MCModel(FIX / "book_twin.tflite", seed=2)
    assert model.has_trunk and model.masks_from == "numpy" and len(model._masks) == 2
    x = np.random.default_rng(6).random((1, 28, 28)).astype(np.float32)
    pred = model.predict(x, samples=2000)
    ref = _numpy_book_mc(x, 20000)
    se = np.sqrt(pred.std[0] ** 2 / 2000 + ref.std(0) ** 2 / 20000)
    assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 1e-6), (pred.mean[0], ref.mean(0), se)
    assert pred.std[0].max() > 0.01


def test_twin_without_trunk_feeds_masks_to_the_full_graph():
    model = MCModel(FIX / "input_mc_twin.tflite", seed=5)
    assert not model.has_trunk and model.masks_from == "numpy"
    x = np.random.default_rng(7).standard_normal((1, 64)).astype(np.float32)
    pred = model.predict(x, samples=2000)
    rng = np.random.default_rng(0)
    z = (x * ((rng.random((20000, 64)) >= 0.25) / 0.75)) @ W["input_mc_0"] + W["input_mc_1"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    se = np.sqrt(pred.std[0] ** 2 / 2000 + ref.std(0) ** 2 / 20000)
    assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 1e-6), (pred.mean[0], ref.mean(0), se)
    assert pred.std[0].max() > 0.01


def test_rng_option_is_checked():
    with pytest.raises(ValueError, match="Expected `rng` to be 'auto' or 'graph'. Received: rng='numpy'"):
        MCModel(FIX / "mlp_twin.tflite", rng="numpy")
    with pytest.raises(ValueError, match="mask-input model.*Received: rng='graph'"):
        MCModel(FIX / "mlp_mask.tflite", rng="graph")
    # A seeded file promises its own mask sequence: the runtime does not swap in numpy masks.
    assert MCModel(FIX / "mlp_seeded.tflite").masks_from == "file"


@pytest.mark.parametrize("name", ["cnn_ingraph", "cnn_mask"])
def test_cnn_with_two_mc_layers(name):
    model = MCModel(FIX / f"{name}.tflite", seed=0)
    assert model.has_trunk and model.class_names == ("up", "down", "left", "right")
    pred = model.predict(_x(model, 2), samples=50)
    assert pred.mean.shape == (2, 4) and np.all(pred.std.max(axis=1) > 0)


def test_no_trunk_file_runs_full_at_batch_t():
    # A file without trunk/head signatures: the runtime samples `full` at batch T.
    data = (FIX / "mlp_ingraph.tflite").read_bytes()
    meta = read_metadata(data)
    meta["signatures"] = {"full": "full", "trunk": None, "head": None}
    model = MCModel(embed_metadata(data, meta))
    assert not model.has_trunk
    x = _x(model)
    pred = model.predict(x, samples=2000)
    ref = _numpy_mlp_mc(x, 20000)
    se = np.sqrt(pred.std[0] ** 2 / 2000 + ref.std(0) ** 2 / 20000)
    assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 1e-6)


# ---------------------------------------------------------------- budget and tolerance


def test_latency_model_fits_a_linear_cost_exactly():
    lm = LatencyModel()
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
    lm = LatencyModel()
    for t in (1, 16, 128, 1024):
        lm.anchor(t, 0.001 + 0.00001 * t)
    for i in range(40):  # small invokes: on time; large ones: 1 in 4 is 3 ms late
        lm.observe(8, 0.001 + 0.00008)
        lm.observe(600, 0.001 + 0.006 + (0.003 if i % 4 == 0 else 0.0))
    small, large = lm.p99(8) - lm.typical(8), lm.p99(600) - lm.typical(600)
    assert small < 0.0005 < 0.002 < large  # each size range keeps the margin it has shown
    # A budget that only small batches fit is not punished for the large batches' delays.
    assert lm.largest_fitting(0.0013, 2000) >= 8


def test_latency_speed_follows_a_slow_phase_and_fades():
    lm = LatencyModel()
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
    # Idle for many times its memory: back to the fit's own speed.
    lm._SPEED_MEMORY_S = 0.01
    time.sleep(0.2)
    assert lm.speed() == pytest.approx(1.0, abs=1e-3)


def test_slack_settles_where_about_one_call_in_200_ends_late():
    # A simulated machine: a call aimed at (1 - slack) of the budget takes aim * r, r lognormal
    # with sigma 0.1 (p99.5 of r = 1.29), so the slack that makes P(late) = 0.5% is 1 - 1/1.29 =
    # 0.225 > maximum: raise the maximum here to see the tracker settle on its own.
    rng = np.random.default_rng(0)
    tracker = _SlackTracker(maximum=0.5)
    budget = 0.005
    late = []
    for _ in range(40_000):
        elapsed = (1 - tracker.slack(budget)) * budget * rng.lognormal(0.0, 0.1)
        tracker.update(budget, elapsed)
        late.append(elapsed > budget)
    # Over the last 30,000 calls: the target is 0.5%; the tracker's steps (3% of the budget)
    # make it wobble around it. 0.25%-1% is that wobble with room (seen here: 0.50% for seeds 0-4).
    assert 0.0025 < np.mean(late[10_000:]) < 0.01
    assert 0.15 < tracker.slack(budget) < 0.3
    # Other budgets keep their own slack, which starts at the cautious default.
    assert tracker.slack(0.020) == tracker.start


def test_slack_is_bounded_both_ways():
    tracker = _SlackTracker()
    for _ in range(100):  # a machine where every call ends late
        tracker.update(0.001, 0.002)
    assert tracker.slack(0.001) == tracker.maximum
    for _ in range(10_000):  # a quiet one: never late
        tracker.update(0.001, 0.0005)
    assert tracker.slack(0.001) == 0.0


def _twin_at_20ms(learn: int = 30):
    """The twin MLP after ``learn`` predictions at a 20 ms budget (its latency model has learnt the
    usual speed), and a function making one more such prediction."""
    model = MCModel(FIX / "mlp_twin.tflite", seed=0)
    x = np.random.default_rng(0).random((1, 20), dtype=np.float32)
    model.warmup(budget_ms=20, samples=100_000)

    def predict():
        return model.predict(x, budget_ms=20, samples=100_000)

    for _ in range(learn):
        predict()
    return model, predict


def test_budget_plans_later_chunks_at_the_speed_earlier_ones_ran():
    # A slow phase of the machine that the latency model has not learnt yet: every chunk takes
    # twice its real time (a sleep after each draw, outside the model's own timing, so its fit
    # stays at the fast speed). Chunks are at most a third of the budget, so the later ones must
    # be planned at the speed the first one showed. Measured here: slowed calls ended at
    # 11.5-18.3 ms of a 20 ms budget (median ~12); without the speed factor (commit 467266c) at
    # 18.5-30.2 ms (medians 20.0 and 23.7 in two runs).
    model, predict = _twin_at_20ms()  # the latency model learns the fast speed
    fast = [int(predict().samples[0]) for _ in range(5)]
    draw = model._draw

    def slow_draw(feat, batch, *, observe=True):
        start = time.perf_counter()
        out = draw(feat, batch, observe=observe)
        time.sleep(time.perf_counter() - start)
        return out

    model._draw = slow_draw
    preds = [predict() for _ in range(5)]
    elapsed = [float(p.elapsed_ms[0]) for p in preds]
    # The median of 5, so one call may still meet a VM stall; 18 ms leaves the new planning 6 ms
    # of room for noise and fails the old one.
    assert np.median(elapsed) <= 18, elapsed
    assert np.median([int(p.samples[0]) for p in preds]) < 0.8 * np.median(fast)
    assert all(p.budget_cut[0] for p in preds)


def test_budget_plans_even_the_first_chunk_at_the_speed_of_the_moment():
    # A slow phase the latency model does see (every invoke of the sampler takes three times its
    # time): its speed factor follows, so even a call's first chunk, planned before the call has
    # run anything, holds about a third of the samples. Without the factor (speed weight 0, as
    # before it) the first chunk keeps its size: checked, this test then fails.
    model, predict = _twin_at_20ms()  # the latency model learns the usual speed
    sizes: list[int] = []
    draw = model._draw

    def recording_draw(feat, batch, *, observe=True):
        sizes.append(batch)
        return draw(feat, batch, observe=observe)

    model._draw = recording_draw

    def first_chunks(calls):
        out = []
        for _ in range(calls):
            sizes.clear()
            predict()
            out.append(sizes[0])
        return out

    fast = first_chunks(7)
    runner = model._runner(model._sampler_key)
    inputs, invoke, began = runner.inputs, runner.invoke, []

    def timed_inputs(shapes):
        began.append(time.perf_counter())
        return inputs(shapes)

    def slow_invoke():  # writing the inputs and invoking take three times as long
        out = invoke()
        time.sleep(2 * (time.perf_counter() - began[-1]))
        return out

    runner.inputs, runner.invoke = timed_inputs, slow_invoke
    first_chunks(2)  # two calls' invokes move the factor most of the way (weight 0.5 each)
    slow = first_chunks(7)
    # Ideally 1/3; 0.6 leaves room for the fit drifting toward the slow invokes and for this
    # VM's noise (the usual first chunk varied 7,000-10,700 samples within one test).
    assert np.median(slow) < 0.6 * np.median(fast), (fast, slow)


def test_one_stall_after_sampling_does_not_starve_later_calls():
    # The time after sampling (statistics, the result) is reserved at its 99.5th percentile over
    # the last 256 calls, so one stall there (a GC pass in a big process: it happened in this
    # suite) would set the reserve for 256 calls. Without the cap, a 50 ms stall made every
    # later call at 20 ms draw 1 sample (checked); with it they draw ~90% of what they did.
    model, predict = _twin_at_20ms()
    before = [int(predict().samples[0]) for _ in range(5)]
    model._after_s.append(0.05)  # one 50 ms stall after sampling
    model._after_n = 0  # the reserve is recomputed every 8th call: now
    after = [int(predict().samples[0]) for _ in range(5)]
    assert model._reserve_s > 0.02  # the stall is in the reserve...
    # ...but costs at most a quarter of the budget: 0.5 leaves room for this VM's noise.
    assert np.median(after) > 0.5 * np.median(before), (before, after)


def test_tolerance_stops_early_and_caps(mlp):
    x = _x(mlp)
    loose = mlp.predict(x, samples=500, tolerance=0.5)
    assert loose.samples[0] == 16  # SE of a probability after 16 samples is < 0.5: first chunk
    tight = mlp.predict(x, samples=100, tolerance=1e-9)
    assert tight.samples[0] == 100 and not tight.budget_cut[0]


def test_budget_uses_samples_and_reports(mlp):
    pred = mlp.predict(_x(mlp), budget_ms=200, samples=300)
    assert 1 <= pred.samples[0] <= 300 and pred.elapsed_ms[0] > 0


def test_warmup_allocates_ahead():
    model = MCModel(FIX / "mlp_mask.tflite", seed=0)
    assert model.warmup(samples=300) >= 300
    assert model.warmup(budget_ms=50) >= 300  # never shrinks
    with pytest.raises(ValueError, match="Received: budget_ms=-1"):
        model.warmup(budget_ms=-1)


def test_budget_below_one_sample_is_an_error(mlp):
    with pytest.raises(BudgetError, match=r"Expected budget_ms >= [0-9.]+ .*Received: budget_ms=1e-06"):
        mlp.predict(_x(mlp), budget_ms=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "x, error, pattern",
    [
        (np.zeros((2, 21), np.float32), ValueError, r"Expected \(20,\) for one input or \(batch, 20\).*Received: shape=\(2, 21\)"),
        (np.zeros((2, 2, 20), np.float32), ValueError, r"Received: shape=\(2, 2, 20\)"),
        (np.zeros((0, 20), np.float32), ValueError, r"Input batch is empty.*Received: shape=\(0, 20\)"),
        (np.zeros((1, 20), np.int32), TypeError, r"Expected a float input.*Received: dtype=int32"),
        (np.array([["a"] * 20]), TypeError, r"Received: dtype=<U1"),
        (np.full((1, 20), np.nan, np.float32), ValueError, r"NaN or Inf.*Received: 20 non-finite"),
        (np.array([[0.0] * 19 + [np.inf]], np.float32), ValueError, r"first at index \(0, 19\) = .*inf"),
    ],
)
def test_bad_inputs(mlp, x, error, pattern):
    with pytest.raises(error, match=pattern):
        mlp.predict(x, samples=4)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"samples": 0}, r"`samples` to be an integer >= 1. Received: samples=0"),
        ({"samples": 2.5}, r"Received: samples=2.5"),
        ({"budget_ms": 0}, r"`budget_ms` to be a finite number > 0. Received: budget_ms=0"),
        ({"budget_ms": -3.0}, r"Received: budget_ms=-3.0"),
        ({"budget_ms": float("nan")}, r"Received: budget_ms=nan"),
        ({"tolerance": 0}, r"`tolerance` to be a number in \(0, 1\). Received: tolerance=0"),
    ],
)
def test_bad_options(mlp, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        mlp.predict(_x(mlp), **kwargs)


def test_float64_input_is_accepted(mlp):
    assert mlp.predict(_x(mlp).astype(np.float64), samples=4).mean.shape == (1, 5)


# ---------------------------------------------------------------- safety


def test_corrupted_file_is_refused_before_loading():
    data = bytearray((FIX / "mlp_ingraph.tflite").read_bytes())
    data[len(data) // 2] ^= 0x10
    with pytest.raises(IntegrityError, match="Expected: sha256=.*Received: sha256="):
        MCModel(bytes(data))


def test_foreign_file_runs_with_a_warning():
    with pytest.warns(UnverifiedModelWarning, match="cannot be verified"):
        model = MCModel(FIX / "foreign.tflite")
    assert model.predict(np.zeros((1, 20), np.float32), samples=8).mean.shape == (1, 5)


def test_memory_budget_is_checked_before_allocation():
    with pytest.raises(ModelLoadError, match=r"Expected at most the memory budget of 1000 bytes"):
        MCModel(FIX / "cnn_ingraph.tflite", memory_bytes=1000)
    tensors = declared_tensors((FIX / "cnn_ingraph.tflite").read_bytes())
    assert any(t.shape[:1] == (-1,) for t in tensors)  # the batch axis is declared dynamic


def test_samples_beyond_memory_budget_is_an_error():
    model = MCModel(FIX / "mlp_ingraph.tflite", memory_bytes=200_000, probe=False)
    with pytest.raises(ValueError, match=r"Expected samples <= \d+"):
        model.predict(np.zeros((1, 20), np.float32), samples=model.max_batch + 1)


def test_probe_reports_a_model_litert_cannot_load():
    data = (FIX / "foreign.tflite").read_bytes()
    with pytest.raises(ModelLoadError, match="probe process"):
        probe_model(data[: len(data) // 3], threads=1, use_cache=False)


def test_model_that_segfaults_litert_is_caught_by_the_probe():
    # crash_segv.tflite: foreign.tflite with 3 random bytes changed (found by a seeded fuzz run);
    # it has no edgekit metadata, and LiteRT dies with SIGSEGV while loading or running it.
    with pytest.warns(UnverifiedModelWarning):
        with pytest.raises(ModelLoadError, match="killed by SIGSEGV"):
            MCModel(FIX / "crash_segv.tflite")
    # ... and this process is still alive to say so.


def test_output_that_is_not_probabilities_is_refused():
    # Replace the head's SOFTMAX opcode by LOGISTIC in place, then re-embed the metadata so the
    # digest vouches for the damaged file: only the output check can catch it.
    from ai_edge_litert import schema_py_generated as schema

    data = bytearray((FIX / "mlp_ingraph.tflite").read_bytes())
    model = schema.Model.GetRootAs(bytes(data), 0)
    codes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    softmax = next(c for c in codes if c.BuiltinCode() == schema.BuiltinOperator.SOFTMAX)
    # deprecated_builtin_code (int8) sits in the table; find and patch both code fields.
    tab = softmax._tab
    for slot in (4, 10):  # vtable slots of deprecated_builtin_code and builtin_code
        off = tab.Offset(slot)
        if off:
            size = 1 if slot == 4 else 4
            data[tab.Pos + off : tab.Pos + off + size] = int(schema.BuiltinOperator.LOGISTIC).to_bytes(size, "little")
    meta = read_metadata(bytes(data))
    bad = embed_metadata(bytes(data), meta)
    with pytest.raises(OutputError, match=r"not class probabilities\. Expected values in \[0, 1\] summing to 1"):
        MCModel(bad, probe=False)


def test_missing_file_and_wrong_type():
    with pytest.raises(FileNotFoundError, match="Received: 'nope.tflite'"):
        MCModel("nope.tflite")
    with pytest.raises(TypeError, match="Expected a path or bytes"):
        MCModel(3)


def test_concurrent_predictions_from_8_threads(mlp_mask):
    x = _x(mlp_mask)
    ref = _numpy_mlp_mc(x, 20000)
    results, errors = [None] * 8, []

    def work(i):
        try:
            results[i] = mlp_mask.predict(x, samples=1000)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for pred in results:
        se = np.sqrt(pred.std[0] ** 2 / 1000 + ref.std(0) ** 2 / 20000)
        assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 1e-6)
    # One shared generator, never reset: no two threads got the same masks.
    assert len({p.mean.tobytes() for p in results}) == 8


def test_concurrent_budgeted_predictions(mlp_mask):
    # Budget mode shares the latency model and the after-sampling statistics between threads.
    errors = []

    def work():
        try:
            for _ in range(30):
                pred = mlp_mask.predict(_x(mlp_mask), budget_ms=5, tolerance=0.02)
                assert pred.samples[0] >= 1
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_time_parts_reports_each_part(mlp):
    parts = mlp.time_parts(samples=32, repeats=3)
    assert set(parts) == {"trunk_ms", "head_ms", "full_ms", "full_batch_ms"}
    assert all(v > 0 for v in parts.values())


def test_runtime_never_imports_tensorflow_or_keras():
    code = (
        "import sys, numpy as np\n"
        "from edgekit.runtime import MCModel\n"
        f"m = MCModel({str(FIX / 'mlp_ingraph.tflite')!r})\n"
        "m.predict(np.zeros((1, 20), np.float32), samples=8)\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
