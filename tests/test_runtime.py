"""edgekit.runtime.MCModel on the committed fixtures in the real LiteRT interpreter (no TensorFlow).

Statistical checks compare MC means with standard errors (SE) and a 4-SE bound: a correct
runtime fails one such check with probability ~6e-5 per class.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
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
from edgekit.runtime.checks import check_probs
from edgekit.runtime.interpreter import PlanRunner, interpreter_class
from edgekit.runtime.safety import declared_tensors, probe_model
from edgekit.runtime.strategy import StrategyChooser
from edgekit.runtime.summaries import summarize

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
    feats = mlp.features(x)
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
    mlp = MCModel(FIX / f"{fixture}.tflite", seed=9)  # seeded: trunk + head (the strategy never switches)
    assert mlp.strategy_at(300, inputs=3) == "trunk+head" and bool(mlp.plan.masks) == (fixture == "mlp_twin")
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
    assert model.has_trunk and model.masks_from == "numpy"
    assert [p.name for p in model.plan.masks] == ["mask_0", "mask_1"]
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


# ---------------------------------------------------------------- one plan, two strategies


def test_strategy_chooser_measures_only_what_it_must():
    # A fake file where `full` costs 1 + r and trunk + sampler 4 + 0.2 r (arbitrary units) for r
    # rows: full is faster up to r = 3. The chooser measures at 1, 2, 4, ... up to the size asked,
    # stops at the first loss, and never measures a size it has bracketed.
    measured = []

    def measure(rows):
        measured.append(rows)
        return 1 + rows, 4 + 0.2 * rows

    chooser = StrategyChooser(max_rows=10_000)
    assert chooser.choose(1, measure) == "full" and measured == [1]
    assert chooser.choose(100, measure) == "trunk+head" and measured == [1, 2, 4]
    assert chooser.choose(3, measure) == "full" and measured == [1, 2, 4, 3]
    assert [chooser.choose(r, measure) for r in (2, 3, 4, 50, 10_000)] == ["full"] * 2 + ["trunk+head"] * 3
    assert measured == [1, 2, 4, 3]
    assert chooser.choose(20_000, measure) == "trunk+head"  # above the memory budget of `full`: never measured


def test_which_files_may_switch_strategy():
    assert MCModel(FIX / "mlp_ingraph.tflite").plan.strategies == ("trunk+head", "full")
    assert MCModel(FIX / "mlp_mask.tflite").plan.strategies == ("trunk+head", "full")
    # A seeded file promises one mask sequence (one signature); a seed given to the runtime promises
    # bitwise-reproducible results (the two strategies round differently in int8): never switched.
    seeded = MCModel(FIX / "mlp_seeded.tflite")
    assert seeded.plan.strategies == ("trunk+head",) and seeded.strategy_at(1) == "trunk+head"
    assert MCModel(FIX / "mlp_mask.tflite", seed=0).strategy_at(1) == "trunk+head"
    # Without a trunk there is one way to run a file: `full` (or its `masked` twin) at batch T.
    model = MCModel(FIX / "input_mc_twin.tflite")
    assert model.plan.trunk is None and model.strategy_at(1) == model.strategy_at(500) == "full"
    with pytest.warns(UnverifiedModelWarning):
        foreign = MCModel(FIX / "foreign.tflite")  # no metadata names a trunk: `full` only
    assert foreign.plan.strategies == ("full",) and foreign.strategy_at(1) == "full"


@pytest.mark.parametrize("fixture", ["mlp_ingraph", "mlp_mask"])
def test_both_strategies_sample_each_input_from_its_own_distribution(fixture):
    # The plan's runner itself, both ways, on 3 different inputs at once: `full` at batch 3 x 2000
    # and trunk (batch 3) + sampler (batch 3 x 2000). Each input's mean must match its own numpy
    # reference (a row-order mix-up would pull the means together).
    data = (FIX / f"{fixture}.tflite").read_bytes()
    plan = MCModel(data).plan
    runner = PlanRunner(lambda: interpreter_class()(model_content=data), plan, np.random.SFC64(0).random_raw,
                        lambda p: check_probs(p, 5, 1e-4, fixture))
    x = np.random.default_rng(5).random((3, 20), dtype=np.float32) * np.array([[1.0], [4.0], [-3.0]], np.float32)
    n = 2000
    for probs in (runner.full(x, n), runner.sample(runner.trunk(x), n)):
        probs = probs.reshape(3, n, 5)
        for i in range(3):
            ref = _numpy_mlp_mc(x[i : i + 1], 20000, seed=i)
            se = np.sqrt(probs[i].var(0) / n + ref.var(0) / 20000)
            assert np.all(np.abs(probs[i].mean(0) - ref.mean(0)) < 4 * se + 1e-6), i
        assert np.abs(probs[1].mean(0) - probs[2].mean(0)).max() > 0.05  # the inputs really differ


def test_one_sample_gives_the_same_result_as_the_general_path(mlp):
    # T=1 for one input has its own lean path; its result must be the one the general code gives.
    x = _x(mlp, 2)
    one = mlp.predict(x[0], samples=1)
    _, _, entropy, _ = summarize(one.mean)
    np.testing.assert_array_equal(one.std, 0)
    assert one.mutual_information[0] == 0 and one.entropy[0] == pytest.approx(entropy, rel=1e-12)
    assert one.predicted[0] == int(np.argmax(one.mean[0])) and one.confidence[0] == one.mean[0].max()
    assert one.samples.tolist() == [1] and not one.budget_cut[0] and one.elapsed_ms[0] > 0
    both = mlp.predict(x, samples=1)  # two inputs: the general path
    for field in ("mean", "std", "predicted", "confidence", "entropy", "mutual_information", "samples",
                  "elapsed_ms", "budget_cut"):
        a, b = getattr(one, field), getattr(both, field)
        assert a.dtype == b.dtype and a.shape[1:] == b.shape[1:] and len(a) == 1, field
    assert dataclasses.replace(one, samples=np.array([7])).samples[0] == 7  # a real frozen dataclass


def test_one_sample_calls_are_fresh_draws_whose_mean_is_the_mc_mean():
    # An unseeded in-graph file at T=1 runs one invoke of `full`, which draws its own masks: each call
    # is a new sample (64 dropout units: two equal masks in 3,000 calls are all but impossible) and
    # their mean is the MC mean of the numpy reference, within 4 standard errors. Each of two threads
    # gets its own interpreter; its first call goes the general way, the rest the short one.
    from concurrent.futures import ThreadPoolExecutor

    model = MCModel(FIX / "mlp_ingraph.tflite")
    x = _x(model)
    n = 1500

    def calls(_):
        return np.concatenate([model.predict(x, samples=1).mean for _ in range(n)])

    with ThreadPoolExecutor(2) as pool:
        rows = np.concatenate(list(pool.map(calls, range(2))))
    ref = _numpy_mlp_mc(x, 20000)
    se = np.sqrt(rows.var(0) / len(rows) + ref.var(0) / 20000)
    assert np.all(np.abs(rows.mean(0) - ref.mean(0)) < 4 * se + 1e-6)
    assert len(np.unique(rows, axis=0)) > 0.99 * len(rows)
    np.testing.assert_allclose(rows.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 20])
def test_probability_check_finds_nan_and_inf_anywhere(rows):
    # Python's min/max can skip a NaN (comparisons with it are False): the row sums must catch it.
    good = np.full((rows, 5), 0.2, np.float32)
    check_probs(good, 5, 1e-4, "m")
    for bad in (np.nan, np.inf, -np.inf, 1.5):
        for at in range(good.size):
            probs = good.copy().reshape(-1)
            probs[at] = bad
            with pytest.raises(OutputError, match="not class probabilities"):
                check_probs(probs.reshape(rows, 5), 5, 1e-4, "m")
    with pytest.raises(OutputError, match=r"wrong shape\. Expected \[samples, 4\]"):
        check_probs(good, 4, 1e-4, "m")


def test_sample_gives_per_sample_outputs_of_each_input():
    model = MCModel(FIX / "mlp_mask.tflite", seed=1)
    x = _x(model, 3, seed=2) * np.array([[1.0], [4.0], [-3.0]], np.float32)
    probs = model.sample(x, 2000)
    assert probs.shape == (3, 2000, 5) and probs.dtype == np.float32
    for i in range(3):
        ref = _numpy_mlp_mc(x[i : i + 1], 20000, seed=i)
        se = np.sqrt(probs[i].var(0) / 2000 + ref.var(0) / 20000)
        assert np.all(np.abs(probs[i].mean(0) - ref.mean(0)) < 4 * se + 1e-6), i
    np.testing.assert_array_equal(MCModel(FIX / "mlp_mask.tflite", seed=1).sample(x, 2000), probs)  # seeded


def test_deterministic_is_dropout_off_for_mask_input_files():
    x = _x(MCModel(FIX / "mlp_mask.tflite"), 7, seed=3)
    h = np.maximum(x @ W["mlp_0"] + W["mlp_1"], 0)  # dropout off: every unit kept, no 1/(1-rate)
    z = h @ W["mlp_2"] + W["mlp_3"]
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(MCModel(FIX / "mlp_mask.tflite").deterministic(x, rows=3), ref, atol=1e-5)  # float32
    assert MCModel(FIX / "mlp_ingraph.tflite").deterministic(x) is None  # no dropout-off path in the file


# ---------------------------------------------------------------- a fixed-batch file


@pytest.fixture(scope="module")
def fixed():
    return MCModel(FIX / "mlp_fixed_int8.tflite", seed=0)


def _x_in_int8_range(model, n, seed=0):
    return _x(model, n, seed) * np.float32(0.99)  # its int8 input represents [0, 0.995]


def test_fixed_batch_file_runs_at_its_batches(fixed):
    assert dict(fixed.plan.batch) == {"full": 1, "trunk": 1, "head": 4}
    assert fixed.plan.strategies == ("trunk+head",)  # its signatures run at their own batches only
    x = _x_in_int8_range(fixed, 3)
    pred = fixed.predict(x, samples=10)
    assert pred.samples.tolist() == [12, 12, 12]  # T rounded up to a multiple of the head's batch
    assert fixed.sample(x, 5).shape == (3, 8, 5)
    pred = fixed.predict(x[:1], samples=2000)
    ref = _numpy_mlp_mc(x[:1], 20000)
    se = np.sqrt(pred.std[0] ** 2 / 2000 + ref.std(0) ** 2 / 20000)
    # + 0.01: int8 weights, activations and output (steps of 1/256), as for the other int8 files.
    assert np.all(np.abs(pred.mean[0] - ref.mean(0)) < 4 * se + 0.01), (pred.mean[0], ref.mean(0))


def test_fixed_batch_file_draws_budgets_and_tolerances_in_whole_batches(fixed):
    x = _x_in_int8_range(fixed, 1)
    fixed.warmup(budget_ms=5)
    for budget in (0.3, 1.0, 5.0):
        for _ in range(5):
            pred = fixed.predict(x, budget_ms=budget)
            assert pred.samples[0] >= 4 and pred.samples[0] % 4 == 0, (budget, pred.samples)
    for tol in (0.2, 0.01, 1e-9):
        pred = fixed.predict(x, samples=500, tolerance=tol)
        assert pred.samples[0] % 4 == 0 and pred.samples[0] <= 500


def test_fixed_batch_file_dropout_off(fixed):
    x = _x_in_int8_range(fixed, 6, seed=4)
    h = np.maximum(x @ W["mlp_0"] + W["mlp_1"], 0)
    z = h @ W["mlp_2"] + W["mlp_3"]
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    # int8 everywhere: about one output step (1/256) per probability (measured 0.003 here).
    np.testing.assert_allclose(fixed.deterministic(x), ref, atol=0.01)


# ---------------------------------------------------------------- budget and tolerance


def test_tolerance_stops_early_and_caps(mlp):
    x = _x(mlp)
    loose = mlp.predict(x, samples=500, tolerance=0.5)
    assert loose.samples[0] == 16  # SE of a probability after 16 samples is < 0.5: first chunk
    tight = mlp.predict(x, samples=100, tolerance=1e-9)
    assert tight.samples[0] == 100 and not tight.budget_cut[0]


def test_a_generous_budget_draws_every_sample_asked_for(mlp):
    # 300 samples of this MLP take ~0.2 ms: a 200 ms budget holds them all, with room for a stall.
    pred = mlp.predict(_x(mlp), budget_ms=200, samples=300)
    assert pred.samples[0] == 300 and not pred.budget_cut[0]
    assert 0 < pred.elapsed_ms[0] < 200


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
    with pytest.warns(UnverifiedModelWarning), pytest.raises(ModelLoadError, match="killed by SIGSEGV"):
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
