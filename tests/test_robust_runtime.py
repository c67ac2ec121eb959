"""``MCModel`` under concurrency, hostile inputs and random inputs (hypothesis). No TensorFlow.

- 8 threads x 1,000 ``predict`` calls on one model: every result is finite, normalized and belongs
  to the calling thread's input (statistically: within 7 standard errors of that input's reference
  mean, while different inputs' means are further apart than that); RSS does not grow.
- Bad inputs get the documented error, never a crash or a garbage result.
- Properties: probabilities sum to 1, std >= 0, entropy <= log C, 0 <= MI <= entropy; the same
  seed in mask-input mode gives identical results whatever the interpreter thread count or the
  order in which threads run.
"""

from __future__ import annotations

import math
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from fuzz.stress import distinct_inputs, hammer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgekit.runtime import MCModel

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MODELS = {
    "mlp_ingraph": ((20,), 5),
    "mlp_mask": ((20,), 5),
    "cnn_ingraph": ((12, 12, 1), 4),
    "cnn_mask": ((12, 12, 1), 4),
    "book_ingraph": ((28, 28), 10),
}


@pytest.fixture(scope="module")
def models():
    return {name: MCModel(FIXTURES / f"{name}.tflite", seed=0) for name in MODELS}


# --- Concurrency ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_threads_thousand_calls_each_correct_and_no_leak():
    # In-graph RNG: each per-thread interpreter draws its own masks. How results are judged right
    # (nearest reference mean among confidently different inputs) is explained in fuzz/stress.py.
    model = MCModel(FIXTURES / "mlp_ingraph.tflite")
    inputs, refs = distinct_inputs(model, (20,))
    assert len(inputs) >= 3, "too few distinguishable inputs to detect cross-talk"
    assert min(np.abs(refs[i] - refs[j]).sum() for i in range(len(refs)) for j in range(i)) >= 1.0
    result = hammer(model, inputs, refs, threads=8, calls=1000, samples=16)
    assert result.total_calls == 8000
    assert not result.wrong, f"{len(result.wrong)} wrong results, e.g. {result.wrong[:3]}"
    # 8 MB over the last 6,000 calls: a leak of >= 1.4 KB per call (one [16, 5] float32 result is
    # 320 bytes) would exceed it; allocator noise here is ~1-2 MB.
    assert result.rss_drift_mb < 8.0, result.rss_trace_mb


def test_same_seed_same_results_whatever_interpreter_threads():
    x = np.random.default_rng(1).random((3, 20), dtype=np.float32)
    a = MCModel(FIXTURES / "mlp_mask.tflite", seed=7, threads=1)
    b = MCModel(FIXTURES / "mlp_mask.tflite", seed=7, threads=2)
    for samples in (1, 16, 100, 16):  # a new batch size reallocates: masks must still line up
        pa, pb = a.predict(x, samples=samples), b.predict(x, samples=samples)
        np.testing.assert_array_equal(pa.mean, pb.mean)
        np.testing.assert_array_equal(pa.mutual_information, pb.mutual_information)


def test_same_seed_same_results_whatever_thread_order():
    # Six models with the same seed, each driven by its own thread, started in shuffled order and
    # running concurrently: each must reproduce the single-threaded sequence exactly.
    x = np.random.default_rng(2).random((2, 20), dtype=np.float32)
    plan = [8, 32, 8, 64]

    def sequence(model):
        return [model.predict(x, samples=s).mean for s in plan]

    reference = sequence(MCModel(FIXTURES / "mlp_mask.tflite", seed=11))
    models = [MCModel(FIXTURES / "mlp_mask.tflite", seed=11, threads=1 + k % 2) for k in range(6)]
    results: dict[int, list] = {}
    order = list(range(6))
    random.Random(0).shuffle(order)
    pool = [threading.Thread(target=lambda k=k: results.__setitem__(k, sequence(models[k]))) for k in order]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for k in range(6):
        for got, want in zip(results[k], reference, strict=True):
            np.testing.assert_array_equal(got, want)


# --- Hostile inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda x: np.where(np.arange(20) == 3, np.nan, x).astype(np.float32), ValueError, "NaN or Inf"),
        (lambda x: np.where(np.arange(20) == 0, np.inf, x).astype(np.float32), ValueError, "NaN or Inf"),
        (lambda x: -np.full_like(x, np.inf), ValueError, "NaN or Inf"),
        (lambda x: x.astype(np.int32), TypeError, "dtype=int32"),
        (lambda x: x.astype(str), TypeError, "dtype"),
        (lambda x: x.astype(bool), TypeError, "dtype=bool"),
        (lambda x: x[None, None], ValueError, "shape=(1, 1, 20)"),
        (lambda x: x[:10], ValueError, "shape=(10,)"),
        (lambda x: np.float32(0.5), ValueError, "shape=()"),
        (lambda x: x[None][:0], ValueError, "empty"),
        (lambda x: [[object()] * 20], TypeError, "dtype"),
    ],
    ids=["nan", "inf", "neg-inf", "int", "str", "bool", "rank3", "short", "scalar", "empty", "object"],
)
def test_bad_inputs_get_the_documented_error(models, make, error, fragment):
    x = np.random.default_rng(3).random(20, dtype=np.float32)
    with pytest.raises(error) as info:
        models["mlp_mask"].predict(make(x), samples=4)
    message = str(info.value)
    assert fragment in message and "Expected" in message and "Received" in message, message
    assert "\n" not in message


def test_non_contiguous_input_gives_the_same_result_as_a_copy():
    wide = np.random.default_rng(4).random((3, 40), dtype=np.float32)
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    fortran = np.asfortranarray(wide[:, :20])
    a = MCModel(FIXTURES / "mlp_mask.tflite", seed=5)
    b = MCModel(FIXTURES / "mlp_mask.tflite", seed=5)
    np.testing.assert_array_equal(a.predict(strided, samples=32).mean, b.predict(np.ascontiguousarray(strided), samples=32).mean)
    np.testing.assert_array_equal(a.predict(fortran, samples=32).mean, b.predict(np.ascontiguousarray(fortran), samples=32).mean)


def test_batch_too_large_for_the_memory_budget():
    model = MCModel(FIXTURES / "mlp_mask.tflite", memory_bytes=100_000)
    with pytest.raises(ValueError) as info:
        model.predict(np.zeros(20, np.float32), samples=100_000)
    assert "memory" in str(info.value) and "Expected samples <=" in str(info.value)
    # The largest batch the budget allows still works.
    limit = int(str(info.value).split("Expected samples <= ")[1].split()[0])
    assert model.predict(np.zeros(20, np.float32), samples=limit).samples[0] == limit


@pytest.mark.parametrize("samples", [0, -1, 1.5, True, "10"])
def test_bad_sample_counts(models, samples):
    with pytest.raises(ValueError, match="Expected `samples`"):
        models["mlp_mask"].predict(np.zeros(20, np.float32), samples=samples)


# --- Properties ----------------------------------------------------------------------------------


@st.composite
def model_and_input(draw):
    name = draw(st.sampled_from(sorted(MODELS)))
    shape, _ = MODELS[name]
    batch = draw(st.integers(1, 3))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))  # far outside the training range too
    x = draw(hnp.arrays(np.float32, (batch, *shape), elements=st.floats(-1, 1, width=32)))
    return name, x * np.float32(scale), draw(st.integers(1, 48))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=model_and_input())
def test_mc_outputs_are_valid_distributions(models, case):
    name, x, samples = case
    pred = models[name].predict(x, samples=samples)
    classes = MODELS[name][1]
    mean = pred.mean.astype(np.float64)
    assert mean.shape == (x.shape[0], classes)
    assert np.all(np.isfinite(mean)) and np.all(mean >= 0)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, atol=1e-5)  # softmax output, float32 rounding
    assert np.all(pred.std >= 0)
    tiny = 1e-6  # float rounding in the entropy sums
    assert np.all(pred.entropy <= math.log(classes) + tiny)
    assert np.all(pred.mutual_information >= 0)
    assert np.all(pred.mutual_information <= pred.entropy + tiny)
    assert np.all(pred.samples == samples)
    if samples == 1:
        assert np.all(pred.std == 0) and np.all(pred.mutual_information <= tiny)


def test_int8_io_input_out_of_range_names_scale_and_zero_point():
    model = MCModel(FIXTURES / "mlp_int8io.tflite")
    with pytest.raises(ValueError) as info:
        model.predict(np.full(20, 1e6, np.float32), samples=4)
    message = str(info.value)
    for fragment in ("int8", "scale=", "zero_point=", "Expected", "Received: min=1e+06"):
        assert fragment in message, message
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.predict(np.full(20, np.nan, np.float32), samples=4)
    # In range, the int8 output dequantizes to probabilities: sums within half a step per class.
    pred = model.predict(np.full(20, 0.5, np.float32), samples=16)
    step = 1 / 256  # the output scale LiteRT gives an int8 softmax (0.00390625 in this file)
    assert abs(float(pred.mean.sum()) - 1) <= step * 5 / 2 + 1e-6
