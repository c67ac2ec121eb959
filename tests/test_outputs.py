"""Models with value outputs and several outputs: task inference, summaries, conversion, Keras vs file.

The first group (value summaries) is numpy only. The rest converts the issue's models (an MLP
regressor, a two-output model, a one-sigmoid binary classifier, a heteroscedastic head) with
TensorFlow and runs them in the real LiteRT interpreter.

Statistical checks compare MC means with standard errors (SE): the difference of two independent
T-sample means has SE sqrt(var_a / T + var_b / T), and a correct file stays within 4 SE of Keras
with probability ~6e-5 per value.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgekit.runtime.plan import OutputSpec, TensorSpec
from edgekit.runtime.summaries import standard_error, summarize_value_output

T = 400  # MC samples for the Keras-vs-file comparisons: SE = std / 20


# ----------------------------------------------------------------------------- value summaries (numpy)


def _spec(shape=(2,), *, noise=None, heteroscedastic=False, level=0.9, scale=1.0) -> OutputSpec:
    width = math.prod(shape)
    var = TensorSpec("log_var", shape, np.dtype(np.float32)) if heteroscedastic else None
    return OutputSpec(TensorSpec("value", shape, np.dtype(np.float32)), "regression", (), 0.0, None, shape,
                      (0, width), None, None, noise, var, (width, 2 * width) if heteroscedastic else None,
                      scale, level)


def _mixture_quantiles(mu, var, q, n=400_000, seed=0):
    """Monte Carlo quantiles of the equal-weight mixture of N(mu_t, var_t) over t, per value: [k]."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, mu.shape[0], n)
    draws = mu[t] + np.sqrt(var[t]) * rng.standard_normal((n, mu.shape[1]))
    return np.quantile(draws, q, axis=0)


def test_mixture_interval_matches_a_monte_carlo_estimate():
    rng = np.random.default_rng(1)
    mu = rng.normal(0, 1, (2, 30, 2))  # 2 inputs, 30 samples, 2 values; the samples spread widely
    log_var = rng.normal(-1, 0.8, (2, 30, 2))  # each sample predicts its own variance
    rows = np.concatenate([mu, log_var], axis=-1).astype(np.float32)
    out = summarize_value_output(_spec(heteroscedastic=True), rows)
    var = np.exp(rows[..., 2:].astype(np.float64))
    for i in range(2):
        mc = _mixture_quantiles(rows[i, :, :2].astype(np.float64), var[i], [0.05, 0.95], seed=i)
        # The Monte Carlo quantile of 400k draws has a standard error of about
        # sqrt(q (1 - q) / n) / density ~ 3e-4 / 0.1 = 3e-3 here; 0.015 is 5 of them.
        np.testing.assert_allclose(out.low[i], mc[0], atol=0.015)
        np.testing.assert_allclose(out.high[i], mc[1], atol=0.015)
    # Total variance = epistemic (the means' spread) + mean aleatoric, both reported.
    epi = rows[..., :2].astype(np.float64).var(axis=1)
    np.testing.assert_allclose(out.std**2, epi, rtol=1e-6)
    np.testing.assert_allclose(out.aleatoric_std**2, var.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(out.total_std**2, epi + var.mean(axis=1), rtol=1e-6)


def test_noise_variance_path_adds_the_files_noise_to_every_sample():
    rng = np.random.default_rng(2)
    rows = rng.normal(0, 0.3, (3, 50, 2)).astype(np.float32)
    noise = (0.25, 4.0)
    out = summarize_value_output(_spec(noise=noise), rows)
    epi = rows.astype(np.float64).var(axis=1)
    np.testing.assert_allclose(out.aleatoric_std, np.sqrt(np.broadcast_to(noise, (3, 2))), rtol=1e-12)
    np.testing.assert_allclose(out.total_std**2, epi + np.array(noise), rtol=1e-6)
    # The second value's noise (sd 2) dwarfs the samples' spread (0.3): its 90% interval is close
    # to the Gaussian one, mean +- 1.645 * total sd (within the mixture's small departure from it).
    half = 1.6449 * out.total_std[:, 1]
    np.testing.assert_allclose(out.high[:, 1] - out.mean[:, 1], half, rtol=0.02)
    np.testing.assert_allclose(out.mean[:, 1] - out.low[:, 1], half, rtol=0.02)
    mc = _mixture_quantiles(rows[0].astype(np.float64), np.broadcast_to(noise, (50, 2)), [0.05, 0.95])
    np.testing.assert_allclose([out.low[0], out.high[0]], mc, atol=0.03)  # 5 Monte Carlo SEs, as above


def test_no_aleatoric_part_gives_the_samples_own_quantiles():
    rows = np.random.default_rng(3).normal(1.0, 2.0, (2, 101, 3)).astype(np.float32)
    out = summarize_value_output(_spec((3,), level=0.8), rows)
    assert out.aleatoric_std is None and out.level == 0.8
    np.testing.assert_array_equal(out.total_std, out.std)
    lo, hi = np.quantile(rows.astype(np.float64), [0.1, 0.9], axis=1)
    np.testing.assert_allclose(out.low, lo, rtol=1e-12)
    np.testing.assert_allclose(out.high, hi, rtol=1e-12)
    one = summarize_value_output(_spec((3,)), rows[:, :1])  # one sample: no spread, a point interval
    np.testing.assert_array_equal(one.low, one.high)
    np.testing.assert_array_equal(one.std, np.zeros((2, 3)))


@pytest.mark.parametrize("shape", [(1,), (4,), (2, 3)])
def test_value_summaries_keep_the_outputs_shape(shape):
    rows = np.random.default_rng(4).normal(size=(5, 20, math.prod(shape))).astype(np.float32)
    out = summarize_value_output(_spec(shape, noise=(0.1,) * math.prod(shape)), rows)
    for field in (out.mean, out.std, out.aleatoric_std, out.total_std, out.low, out.high):
        assert field.shape == (5, *shape)
    np.testing.assert_allclose(out.mean.reshape(5, -1), rows.astype(np.float64).mean(axis=1), rtol=1e-6)
    row = out.row(0)
    assert np.shape(row["mean"]) == shape and np.shape(row["interval"]["low"]) == shape
    assert json.loads(json.dumps(row)) == row  # plain JSON values


def test_standard_error_of_a_value_output_is_its_largest_values():
    rows = np.zeros((50, 2), np.float32)
    rows[:, 1] = np.random.default_rng(5).normal(0, 3.0, 50)
    plan = type("Plan", (), {"outputs": (_spec((2,)),)})()
    assert standard_error(plan, rows) == pytest.approx(rows[:, 1].std(ddof=1) / math.sqrt(50))


def test_value_curve_measures_rmse_nll_and_coverage_against_t():
    from edgekit.runtime.metrics import gaussian_nll
    from edgekit.runtime.profiling import value_curve

    rng = np.random.default_rng(6)
    truth = rng.normal(size=(400, 1))
    y = truth + rng.normal(0, 0.5, (400, 1))  # noise of variance 0.25, which the spec carries
    rows = (truth[:, None, :] + rng.normal(0, 0.1, (400, 64, 1))).astype(np.float32)
    spec = _spec((1,), noise=(0.25,))
    points = value_curve(rows, spec, y, [1, 8, 64])
    assert [p.samples for p in points] == [1, 8, 64] and points[0].values == 400
    s = summarize_value_output(spec, rows)
    last = points[-1]
    assert last.rmse == pytest.approx(float(np.sqrt(((s.mean - y) ** 2).mean())))
    assert last.nll == pytest.approx(gaussian_nll(s.mean, s.total_std**2, y))
    # 400 targets from the very distribution the interval describes: a binomial SE of 1.5 points.
    assert 0.85 <= last.coverage <= 0.95 and last.level == 0.9
    assert 0 < last.nll_se < 0.1
    bare = value_curve(rows, _spec((1,)), y, [1, 64])  # no aleatoric part: T=1 has no spread
    assert bare[0].nll is None and bare[0].coverage == 0.0 and bare[1].coverage < 0.5
    with pytest.raises(ValueError, match=r"Expected targets of shape \(400, 1\) for value output 'value' "
                                         r"\(one per input\). Received: shape \(400, 2\)"):
        value_curve(rows, spec, np.zeros((400, 2)), [1])


def _latency(samples, p99):
    from edgekit.runtime.profiling import LatencyPoint

    return LatencyPoint(1, samples, 100, p99, p99, p99, p99, p99, p99, None, p99)


def _value_point(samples, nll, coverage, nll_se=0.01):
    from edgekit.runtime.profiling import ValuePoint

    return ValuePoint(samples, 500, 500, 1.0, nll, nll_se, coverage, 0.9)


def test_recommend_takes_the_smallest_t_on_the_nll_coverage_plateau():
    from edgekit.runtime.profiling import recommend

    latency = [_latency(1, 0.1), _latency(10, 0.5), _latency(30, 1.0), _latency(100, 3.0)]
    values = [_value_point(1, 1.50, 0.70), _value_point(10, 1.105, 0.885), _value_point(30, 1.10, 0.89),
              _value_point(100, 1.098, 0.895)]
    # T=10 is within 1 SE (0.01) of the best NLL (1.098 at T=100), and its coverage (88.5%) is no
    # further from 90% than the best point's 0.5 points plus one binomial SE over 500 values (1.34).
    rec = recommend(latency, 5.0, values=values)
    assert rec.samples == 10 and "NLL/coverage plateau" in rec.reason
    # A budget that T=10 does not fit: the fitting T with the lowest NLL.
    assert recommend(latency, 0.2, values=values).samples == 1
    tight = [_value_point(1, 1.50, 0.70), _value_point(10, 1.20, 0.80), _value_point(30, 1.10, 0.89),
             _value_point(100, 1.098, 0.895)]
    assert recommend(latency, 5.0, values=tight).samples == 30  # T=10's coverage is off the plateau
    assert recommend(latency, 5.0, values=[_value_point(1, None, 0.0)]).samples == 100  # no NLL: largest fit


# ----------------------------------------------------------------------------- models (TensorFlow)

def _keras():
    return pytest.importorskip("keras", reason="converting needs the [train] extra (TensorFlow)")


def _data(n, seed):
    """8 features; a smooth value target with noise of sd 0.2, and 3 classes from two thresholds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    v = (np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2])[:, None] + 0.2 * rng.normal(size=(n, 1))
    c = (x[:, 3] > 0).astype(np.int64) + (x[:, 4] > 0.5)
    return x, v.astype(np.float32), c


@pytest.fixture(scope="module")
def data():
    return _data(1000, 0), _data(300, 1)


def _trunk(keras, inputs):
    """The issue's MLP body: Dense 64, Dropout, Dense 64, Dropout (Keras' own Dropout: to_mc rewrites it)."""
    h = keras.layers.Dense(64, activation="relu", name="dense_0")(inputs)
    h = keras.layers.Dropout(0.2, name="drop_0")(h)
    h = keras.layers.Dense(64, activation="relu", name="dense_1")(h)
    return keras.layers.Dropout(0.2, name="drop_1")(h)


@pytest.fixture(scope="module")
def regressor(data):
    """The issue's MLP regressor (Dense 64, Dropout, Dense 64, Dropout, Dense 1), trained, through to_mc."""
    keras = _keras()
    from edgekit import mc

    keras.utils.set_random_seed(0)
    (x, v, _), _ = data
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(64, activation="relu"), keras.layers.Dropout(0.2),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, v, epochs=15, batch_size=64, verbose=0)
    return mc.to_mc(model)


@pytest.fixture(scope="module")
def two_output(data):
    """A softmax class head ``cls`` and a value head ``value`` on one body, trained jointly, through to_mc."""
    keras = _keras()
    from edgekit import mc

    keras.utils.set_random_seed(1)
    (x, v, c), _ = data
    inputs = keras.Input((8,), name="x")
    h = _trunk(keras, inputs)
    model = keras.Model(inputs, {"cls": keras.layers.Dense(3, activation="softmax", name="cls")(h),
                                 "value": keras.layers.Dense(1, name="value")(h)})
    model.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy", "value": "mse"})
    model.fit(x, {"cls": c, "value": v}, epochs=15, batch_size=64, verbose=0)
    return mc.to_mc(model)


@pytest.fixture(scope="module")
def converted(regressor, two_output, data):
    """converted(which, quantize) -> ConvertedModel, each converted once (int8 calibrated on x_train)."""
    from edgekit.converters import convert

    cache = {}
    (x, _, _), _ = data

    def get(which, quantize):
        if (which, quantize) not in cache:
            model = {"regressor": regressor, "two": two_output}[which]
            cache[which, quantize] = convert(model, quantize=quantize, representative_data=x[:200])
        return cache[which, quantize]

    return get


@pytest.mark.slow
@pytest.mark.train
def test_to_mc_and_keras_mc_predict_give_every_output(regressor, two_output, data):
    from edgekit import mc
    from edgekit.layers import MCDropout

    for model in (regressor, two_output):
        assert sum(isinstance(layer, MCDropout) for layer in model.layers) == 2
    _, (xt, _, _) = data
    one = mc.predict(regressor, xt[:5], samples=7)
    assert one.probs.shape == (7, 5, 1) and one.mean.shape == (5, 1) and one.outputs == ()
    assert one[one.name] is one and one.names == (one.name,)
    both = mc.predict(two_output, xt[:5], samples=7)
    assert both.names == ("cls", "value")
    assert both["cls"].probs.shape == (7, 5, 3) and both["value"].samples.shape == (7, 5, 1)
    assert both.mean is both["cls"].mean  # the first output's fields are the result's own
    np.testing.assert_allclose(both["cls"].probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(both["value"].mean, both["value"].probs.mean(axis=0), rtol=1e-6)
    with pytest.raises(KeyError, match=r"Expected one of the outputs \['cls', 'value'\]. Received: 'nope'"):
        both["nope"]
    det = mc.predict_deterministic(two_output, xt[:5])
    assert set(det) == {"cls", "value"} and det["value"].shape == (5, 1)


def _z(file_samples, keras_result):
    """|file MC mean - Keras MC mean| / SE of their difference, per input and value."""
    a = np.asarray(file_samples, dtype=np.float64)  # [N, T, ...]
    b = np.moveaxis(np.asarray(keras_result.probs, dtype=np.float64), 0, 1)  # [T, N, ...] -> [N, T, ...]
    se = np.sqrt(a.var(axis=1) / a.shape[1] + b.var(axis=1) / b.shape[1])
    return np.abs(a.mean(axis=1) - b.mean(axis=1)), np.maximum(se, 1e-9)


# int8 rounds every activation to a step of 1/255 of its calibrated range (and saturates inputs
# beyond it): a bias, not sampling noise, so it gets an allowance on top of 4 SE. 0.03 in
# probability is 8 steps of the int8 softmax (1/256); 0.05 of the value is 6% of the targets'
# standard deviation (0.86) and about 4 steps of the widened int8 output.
INT8_BIAS = {"classification": 0.03, "regression": 0.05}


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("quantize", ["float32", "int8"])
@pytest.mark.parametrize("which", ["regressor", "two"])
def test_issue_models_are_stochastic_and_their_mc_means_match_keras(converted, regressor, two_output, data, which,
                                                                     quantize):
    from edgekit import mc
    from edgekit.runtime import MCModel

    model = {"regressor": regressor, "two": two_output}[which]
    result = converted(which, quantize)
    file = MCModel(result.tflite, seed=0)
    _, (xt, _, _) = data
    x = xt[:64]
    keras_mc = mc.predict(model, x, samples=T)
    tasks = {e["name"]: e["task"] for e in result.metadata["outputs"]}
    keras_names = dict(zip(tasks, keras_mc.names))  # a one-output file names its output `value`
    assert len(tasks) == (1 if which == "regressor" else 2)
    for name, task in tasks.items():
        samples = file.sample(x, T, output=name)
        assert np.all(samples.std(axis=1) > 0)  # stochastic: every input's samples differ
        diff, se = _z(samples, keras_mc[keras_names[name]])
        bound = 4 * se + (0.0 if quantize == "float32" else INT8_BIAS[task])
        assert np.all(diff <= bound), f"{name}: worst z = {float((diff / se).max()):.1f}"


@pytest.mark.slow
@pytest.mark.train
def test_two_output_file_carries_both_outputs_in_every_signature(converted):
    from ai_edge_litert.interpreter import Interpreter

    result = converted("two", "int8")
    assert result.metadata["format"] == "edgekit/2"
    assert [(e["name"], e["task"], e["shape"]) for e in result.metadata["outputs"]] == [
        ("cls", "classification", [3]), ("value", "regression", [1])]
    sigs = Interpreter(model_content=result.tflite).get_signature_list()
    for role in ("full", "head", "masked"):
        assert sorted(sigs[role]["outputs"]) == ["cls", "value"]


@pytest.mark.slow
@pytest.mark.train
def test_evaluate_measures_each_output_keras_against_the_file(converted, two_output, data):
    from edgekit.converters import evaluate, keras_reference

    _, (xt, vt, ct) = data
    result = converted("two", "float32")
    reference = keras_reference(two_output, xt, samples=30)
    report = evaluate(result, two_output, xt, {"cls": ct, "value": vt}, samples=30, reference=reference)
    acc = report.accuracy
    assert set(acc["outputs"]) == {"cls", "value"}
    assert acc["keras"] is acc["outputs"]["cls"]["keras"]  # the first class output's figures stay on top
    assert acc["keras"]["mc_accuracy"] > 0.7  # learnable: otherwise the comparison is empty
    value = acc["outputs"]["value"]
    assert [c["samples"] for c in value["curve"]] == [1, 10, 30]
    k, t = value["keras"], value["tflite"]
    # Float32 computes Keras' function: the only difference is sampling (300 inputs, T=30),
    # which moves an RMSE of ~0.4 by well under 5%.
    assert t["rmse"] == pytest.approx(k["rmse"], rel=0.05) and value["rmse_ratio"] == t["rmse"] / k["rmse"]
    assert value["aleatoric"] is None and value["curve"][0]["keras"]["nll"] is None  # T=1, no spread
    assert 0 <= t["coverage"] <= 1 and k["deterministic_rmse"] > 0
    table = report.to_table()
    assert "accuracy         output 'cls' on 300 samples" in table
    assert "values           output 'value' on 300 targets, 90% interval, no aleatoric part" in table
    json.dumps(report.to_dict())
    with pytest.raises(ValueError, match=r"Expected test targets of shape \(300, 1\) for value output 'value'. "
                                         r"Received: shape \(300, 2\)"):
        evaluate(result, two_output, xt, {"value": np.zeros((300, 2))}, samples=30, reference=reference)
    with pytest.raises(ValueError, match="Expected test targets per output name"):
        evaluate(result, two_output, xt, ct, samples=30, reference=reference)
    with pytest.raises(ValueError, match="Expected a reference of T=10 samples. Received: T=30"):
        evaluate(result, two_output, xt, {"cls": ct}, samples=10, reference=reference)


@pytest.mark.slow
@pytest.mark.train
def test_heldout_data_fits_a_noise_variance_that_the_intervals_use(two_output, data):
    from edgekit.converters import convert, evaluate

    (x, _, _), (xt, vt, _) = data
    # Held out from training and from the representative inputs: the first 150 of the test
    # distribution; the other 150 are the test set.
    result = convert(two_output, quantize="float32", representative_data=x[:200],
                     heldout_data=(xt[:150], {"value": vt[:150]}), heldout_samples=50)
    entry = result.metadata["outputs"][1]
    assert entry["name"] == "value" and len(entry["noise_variance"]) == 1 and entry["noise_variance"][0] > 0
    assert result.report.heldout["outputs"]["cls"] == {"fitted": False, "reason": "no held-out targets for this output"}
    fit = result.report.heldout["outputs"]["value"]
    assert fit["after"]["nll"] <= fit["before"]["nll"]
    acc = evaluate(result, two_output, xt[150:], {"value": vt[150:]}, samples=50).accuracy["outputs"]["value"]
    # Without the noise the intervals cover the model's spread only (~70% here); with it they
    # are near the 90% asked for. 150 test targets: a binomial SE of 2.4 points.
    assert acc["aleatoric"] == "noise_variance" and 0.8 <= acc["tflite"]["coverage"] <= 0.98
    with pytest.raises(ValueError, match=r"Expected held-out targets of shape \(150, 1\) for value output 'value'. "
                                         r"Received: shape \(150, 3\)"):
        convert(two_output, heldout_data=(xt[:150], {"value": np.zeros((150, 3))}))
    with pytest.raises(ValueError, match=r"too small for a stable noise-variance fit. Expected at least 50"):
        convert(two_output, heldout_data=(xt[:20], {"value": vt[:20]}))


@pytest.mark.slow
@pytest.mark.train
def test_one_sigmoid_unit_is_two_class_probabilities(data):
    keras = _keras()
    from edgekit.converters import convert, evaluate
    from edgekit.layers import MCDropout
    from edgekit.runtime import MCModel

    keras.utils.set_random_seed(2)
    (x, _, c), (xt, _, ct) = data
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64, activation="relu"), MCDropout(0.3),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, (c > 0).astype(np.float32), epochs=8, batch_size=64, verbose=0)
    result = convert(model, class_names=["low", "high"])
    entry = result.metadata["outputs"][0]
    assert (entry["name"], entry["task"], entry["activation"], entry["class_names"]) == (
        "probs", "classification", "sigmoid", ["low", "high"])
    file = MCModel(result.tflite, seed=0)
    x8 = xt[:8]
    p = file.sample(x8, 200)  # [N, T, 2]: [1 - p, p]
    assert p.shape == (8, 200, 2)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    pred = file.predict(x8, samples=200)
    assert pred.mean.shape == (8, 2) and pred.class_names == ("low", "high")
    # The summaries are those of the two class probabilities, from independent samples (a second
    # draw of 200): within 4 SE of the mean, and entropy and MI within the spread such a draw allows.
    se = p.std(axis=1) / math.sqrt(200)
    assert np.all(np.abs(pred.mean - p.mean(axis=1)) <= 4 * math.sqrt(2) * se + 1e-6)
    mean = p.mean(axis=1).astype(np.float64)
    entropy = -(mean * np.log(mean + 1e-12)).sum(-1)
    assert np.all(np.abs(pred.entropy - entropy) < 0.05)
    assert np.all(pred.mutual_information >= 0) and np.all(pred.mutual_information <= pred.entropy + 1e-9)
    acc = evaluate(result, model, xt, (ct > 0).astype(np.int64), samples=30).accuracy
    assert acc["keras"]["mc_accuracy"] > 0.7 and 0 <= acc["tflite"]["ece"] <= 1
    assert abs(acc["mc_accuracy_delta_points"]) <= 3.0  # float32: sampling noise only (300 inputs)


@pytest.mark.slow
@pytest.mark.train
def test_heteroscedastic_head_reports_aleatoric_and_epistemic_parts(data):
    keras = _keras()
    from edgekit.converters import convert
    from edgekit.layers import MCDropout
    from edgekit.runtime import MCModel

    keras.utils.set_random_seed(3)
    (x, v, _), (xt, vt, _) = data
    inputs = keras.Input((8,), name="x")
    h = MCDropout(0.2)(keras.layers.Dense(64, activation="relu")(inputs))
    mean = keras.layers.Dense(1, name="mean")(h)
    log_var = keras.layers.Dense(1, name="log_var")(h)
    model = keras.Model(inputs, [mean, log_var])
    # Train both heads with the Gaussian NLL through a view that concatenates them.
    both = keras.Model(inputs, keras.layers.Concatenate()([mean, log_var]))

    def nll(y, out):
        return keras.ops.mean(0.5 * (out[:, 1:] + (y - out[:, :1]) ** 2 / keras.ops.exp(out[:, 1:])))

    both.compile(optimizer="adam", loss=nll)
    both.fit(x, v, epochs=10, batch_size=64, verbose=0)
    result = convert(model, variance={"mean": "log_var"}, heldout_data=(xt[:100], {"mean": vt[:100]}),
                     heldout_samples=50)
    (entry,) = result.metadata["outputs"]  # the log-variance is not an output of its own
    assert entry["name"] == "mean" and entry["variance"] == {"output": "log_var", "kind": "log_variance"}
    assert entry["noise_variance"] is None and entry["variance_scale"] > 0
    file = MCModel(result.tflite, seed=0)
    spec = file.plan.output
    rows = file.sample_rows(xt[100:108], 300)
    out = file.predict(xt[100:108], samples=300)["mean"]
    # Two independent draws of 300 samples: the mean aleatoric variance of the prediction is that
    # of the rows (times the fitted scale) within sampling noise; total = epistemic + aleatoric.
    aleatoric = np.exp(rows[..., slice(*spec.variance_columns)].astype(np.float64)).mean(axis=1) * spec.variance_scale
    np.testing.assert_allclose(out.aleatoric_std**2, aleatoric, rtol=0.15)
    np.testing.assert_allclose(out.total_std**2, out.std**2 + out.aleatoric_std**2, rtol=1e-6)
    assert np.all(out.std > 0) and np.all(out.aleatoric_std > 0)
    row = file.predict(xt[:1], samples=50).to_dict()["predictions"][0]
    assert set(row) >= {"mean", "std", "aleatoric_std", "total_std", "interval"}
    assert row["interval"]["low"][0] < row["mean"][0] < row["interval"]["high"][0]
    with pytest.raises(ValueError, match=r"Expected 'mean2' to be a value output of the same shape as its "
                                         r"log-variance 'log_var'"):
        convert(keras.Model(inputs, [keras.layers.Dense(2, name="mean2")(h), log_var]), variance={"mean2": "log_var"})


@pytest.mark.slow
@pytest.mark.train
def test_task_inference_names_the_output_and_the_override():
    keras = _keras()
    from edgekit.converters import convert
    from edgekit.errors import UnsupportedModelError
    from edgekit.layers import MCDropout

    inputs = keras.Input((8,))
    h = MCDropout(0.2)(keras.layers.Dense(16, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="relu", name="speed")(h))
    with pytest.raises(UnsupportedModelError, match=(
            r"Cannot tell whether output 'speed' \(activation 'relu'\) holds classes or values. .* Pass "
            r"tasks=\{'speed': 'classification' or 'regression'\} \(CLI: --task speed=regression\)")):
        convert(model)
    result = convert(model, tasks={"speed": "regression"})
    assert [(e["name"], e["task"], e["shape"]) for e in result.metadata["outputs"]] == [("value", "regression", [2])]
    with pytest.raises(UnsupportedModelError, match="Output 'speed' is declared a class output, but its activation "
                                                    "is 'relu'"):
        convert(model, tasks={"speed": "classification"})
    with pytest.raises(ValueError, match=r"`tasks` names output\(s\) \['sped'\] the model does not have"):
        convert(model, tasks={"sped": "regression"})


@pytest.mark.slow
@pytest.mark.train
def test_several_inputs_are_refused_with_one_message():
    keras = _keras()
    from edgekit.converters import convert
    from edgekit.errors import UnsupportedModelError
    from edgekit.layers import MCDropout

    a, b = keras.Input((4,)), keras.Input((3,))
    out = keras.layers.Dense(2, activation="softmax")(MCDropout(0.2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(UnsupportedModelError, match=r"Expected a model with one input \(any number of outputs\). "
                                                    r"Received: 2 inputs .*concatenate them into one input first"):
        convert(keras.Model([a, b], out))


@pytest.mark.slow
@pytest.mark.train
def test_a_value_output_that_yields_nan_is_an_output_error():
    keras = _keras()
    from edgekit.converters import convert
    from edgekit.layers import MCDropout
    from edgekit.runtime import MCModel, OutputError

    inputs = keras.Input((4,))
    h = MCDropout(0.5)(keras.layers.Dense(64, name="sum")(inputs))
    out = keras.layers.Dense(1, activation=keras.ops.log, name="log_out")(h)
    model = keras.Model(inputs, out)
    # Every unit is the sum of the inputs s; the output is log(1 + s * (share of units kept) / 0.5):
    # finite at s = 0 (the zero features the runtime draws at load) and for s > 0, NaN for s = -12.
    model.get_layer("sum").set_weights([np.ones((4, 64), np.float32), np.zeros(64, np.float32)])
    model.get_layer("log_out").set_weights([np.full((64, 1), 1 / 64, np.float32), np.ones(1, np.float32)])
    result = convert(model, tasks={"log_out": "regression"})  # the log cannot be inferred: overridden
    file = MCModel(result.tflite, seed=0)
    assert np.isfinite(file.predict(np.ones((1, 4), np.float32), samples=10).mean).all()
    with pytest.raises(OutputError, match=r"value output 'value' holds NaN or Inf in \d+ of 10 sampled values. "
                                          r"Expected finite values"):
        file.predict(np.full((1, 4), -3.0, np.float32), samples=10)


@pytest.mark.slow
@pytest.mark.train
def test_predict_cli_shows_one_block_per_output(converted, data, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    path = tmp_path / "two.tflite"
    path.write_bytes(converted("two", "float32").tflite)
    _, (xt, _, _) = data
    np.save(tmp_path / "one.npy", xt[0])
    np.save(tmp_path / "three.npy", xt[:3])

    def run(*args):
        return CliRunner().invoke(cli, ["predict", str(path), *map(str, args)])

    r = run(tmp_path / "one.npy", "--samples", 30)
    assert r.exit_code == 0, r.output
    blocks = r.stdout.strip().split("\n\n")
    assert blocks[0].startswith("output 'cls' (classification)\nclass ")
    assert "predicted: " in r.stdout and "mutual information" in r.stdout
    value = next(b for b in blocks if b.startswith("output 'value' (regression)"))
    assert value.splitlines()[1].split()[:4] == ["value", "mean", "+-", "std"]
    timing = [b for b in blocks if b.startswith("samples: 30")]
    assert len(timing) == 1 and blocks.index(timing[0]) > blocks.index(value)  # once, after every output
    r = run(tmp_path / "three.npy", "--samples", 30)
    assert r.exit_code == 0, r.output
    cls_rows = [ln for ln in r.stdout.splitlines() if ln.split()[:1] in (["0"], ["1"], ["2"])]
    assert len(cls_rows) == 6  # three inputs in each block, with their T and time
    assert all(ln.split()[-2] == "30" for ln in cls_rows)
    r = run(tmp_path / "three.npy", "--samples", 30, "--json")
    js = json.loads(r.stdout)
    assert [o["name"] for o in js["outputs"]] == ["cls", "value"] and js["class_names"] == ["0", "1", "2"]
    row = js["predictions"][2]
    assert set(row["outputs"]) == {"cls", "value"} and row["predicted"] == row["outputs"]["cls"]["predicted"]
    assert set(row["outputs"]["value"]) == {"mean", "std", "aleatoric_std", "total_std", "interval"}
    # profile --data measures the output --output-name names, from its own targets in the .npz.
    _, (xt, vt, ct) = data
    np.savez(tmp_path / "test.npz", x_test=xt, y_test=ct, y_test_value=vt)
    prof = ["profile", str(path), "--data", str(tmp_path / "test.npz"), "--sweep", "1,10", "--runs", "2",
            "--no-runtime", "--json"]
    js = json.loads(CliRunner().invoke(cli, [*prof, "--output-name", "value"]).stdout)["models"][0]
    assert js["output"] == "value" and js["accuracy"] is None and [v["samples"] for v in js["values"]] == [1, 10]
    js = json.loads(CliRunner().invoke(cli, prof).stdout)["models"][0]  # the first output, cls, by default
    assert js["output"] == "cls" and js["values"] is None and [a["samples"] for a in js["accuracy"]] == [1, 10]
    r = CliRunner().invoke(cli, [*prof, "--output-name", "nope"])
    assert r.exit_code == 1 and "Expected one of the outputs ['cls', 'value']. Received: output='nope'" in r.stderr


@pytest.mark.slow
@pytest.mark.train
def test_a_dict_of_outputs_keeps_its_keys_whatever_order_it_was_written_in(data):
    keras = _keras()
    from edgekit import mc
    from edgekit.converters import convert
    from edgekit.layers import MCDropout
    from edgekit.runtime import MCModel

    keras.utils.set_random_seed(5)
    inputs = keras.Input((8,), name="x")
    h = MCDropout(0.2)(keras.layers.Dense(64, activation="relu")(inputs))
    # Written cls first; Keras flattens the outputs by sorted key (box, cls), and names the box
    # output's layer "reshape": the file must pair each tensor with its own key.
    model = keras.Model(inputs, {"cls": keras.layers.Dense(3, activation="softmax")(h),
                                 "box": keras.layers.Reshape((2, 2))(keras.layers.Dense(4)(h))})
    assert mc.output_names(model) == ["box", "cls"]
    result = convert(model)  # a Reshape of a linear Dense is a value output
    assert [(e["name"], e["shape"]) for e in result.metadata["outputs"]] == [("box", [2, 2]), ("cls", [3])]
    file = MCModel(result.tflite, seed=0)
    _, (xt, _, _) = data
    keras_mc = mc.predict(model, xt[:64], samples=T)
    assert keras_mc["box"].probs.shape == (T, 64, 2, 2) and keras_mc["cls"].probs.shape == (T, 64, 3)
    for name in ("box", "cls"):
        diff, se = _z(file.sample(xt[:64], T, output=name), keras_mc[name])
        assert np.all(diff <= 4 * se), name  # float32: within 4 SE, as above
    pred = file.predict(xt[:2], samples=50)
    assert pred["box"].mean.shape == (2, 2, 2) and pred["box"].low.shape == (2, 2, 2)
    np.testing.assert_allclose(pred["cls"].mean.sum(-1), 1.0, atol=1e-5)
