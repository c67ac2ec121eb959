"""Magnitude pruning: the schedule, the masks during fine-tuning, the report, zeros after quantization."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

pytest.importorskip("tensorflow")
import keras
from ai_edge_litert.interpreter import Interpreter

from edgekit.sparsity import PolynomialSchedule, prune_once, sparsify, sparsity_report


def test_polynomial_schedule_golden_values():
    s = PolynomialSchedule(target=0.8, end_step=100, begin_step=0, frequency=10)
    # Zhu & Gupta: s(t) = 0.8 + (0 - 0.8) * (1 - t/100)^3; at t=50: 0.8 - 0.8 * 0.125 = 0.7.
    assert s.sparsity_at(0) == 0.0
    assert s.sparsity_at(50) == pytest.approx(0.7)
    assert s.sparsity_at(100) == s.sparsity_at(1000) == 0.8
    assert [t for t in range(101) if s.updates_at(t)] == list(range(0, 101, 10))


@pytest.mark.parametrize("bad", [{"target": 1.0}, {"target": -0.1}, {"end_step": -1, "begin_step": 0}, {"frequency": 0}])
def test_schedule_validation(bad):
    args = {"target": 0.5, "end_step": 10, **bad}
    with pytest.raises(ValueError, match="Expected"):
        PolynomialSchedule(**args)


def test_prune_once_zeros_the_smallest_magnitudes():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="d")])
    w = np.arange(1, 21, dtype=np.float32).reshape(4, 5) * np.where(np.arange(20) % 2, -1, 1).reshape(4, 5)
    model.get_layer("d").kernel.assign(w)
    prune_once(model, 0.25)
    kept = model.get_layer("d").kernel.numpy()
    # The 5 smallest |w| are 1..5 (signs alternate); everything else is untouched.
    assert np.array_equal(kept == 0, np.abs(w) <= 5)
    assert np.array_equal(kept[kept != 0], w[np.abs(w) > 5])


def test_sparsify_reaches_target_keeps_accuracy_and_zeros_survive_int8(tiny_mlp, mlp_data):
    from edgekit.converters import convert

    x, y, xt, yt = mlp_data
    result = sparsify(tiny_mlp, x, y, target=0.8, epochs=2, validation_data=(xt, yt))
    # Every kernel is pruned to round(0.8 * size) zeros: exact up to one weight of rounding.
    for layer in result.layers:
        assert layer.sparsity == pytest.approx(0.8, abs=1.0 / layer.weights)
    assert result.layers == sparsity_report(result.model)
    assert [s.name for s in result.layers] == ["dense_0", "dense_1", "probs"]
    # The synthetic task is easy; pruning 80% with fine-tuning should cost little. The bound is
    # loose (5 points = 15 of 300 test inputs) because the point is "no collapse", not a benchmark.
    assert result.accuracy_after >= result.accuracy_before - 0.05
    assert "total" in result.to_table()
    # The original model is not modified.
    assert np.count_nonzero(tiny_mlp.get_layer("dense_0").kernel.numpy() == 0) < 10

    converted = convert(result.model, quantize="int8", representative_data=x[:100])
    it = Interpreter(model_content=converted.tflite)
    kernels = {}
    for d in it.get_tensor_details():
        # Weight tensors of FULLY_CONNECTED are stored [units, inputs] in int8.
        if d["dtype"] == np.int8 and tuple(d["shape"]) in {(64, 784), (64, 64), (10, 64)}:
            kernels.setdefault(tuple(d["shape"]), it.get_tensor(d["index"]))
    assert set(kernels) == {(64, 784), (64, 64), (10, 64)}
    for shape, q in kernels.items():
        # Symmetric int8 weight quantization has zero point 0, so every exact zero stays 0; a few
        # tiny kept weights may round to 0 as well, hence >= rather than ==.
        assert np.mean(q == 0) >= 0.8 - 1.0 / q.size, shape
    # gzip sees the zeros: the sparse int8 file compresses much better than the dense one.
    dense = convert(tiny_mlp, quantize="int8", representative_data=x[:100])
    assert converted.report.gzip_bytes < 0.7 * dense.report.gzip_bytes


def test_sparsify_validation(tiny_mlp, mlp_data):
    x, y, _, _ = mlp_data
    with pytest.raises(ValueError, match="Expected a float value between 0 and 1"):
        sparsify(tiny_mlp, x, y, target=1.5)
    with pytest.raises(ValueError, match="as many labels as inputs"):
        sparsify(tiny_mlp, x, y[:10], target=0.5)
