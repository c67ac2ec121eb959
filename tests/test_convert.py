"""The converter against the real TFLite converter and the stock LiteRT interpreter (no mocks).

Differential where possible: the ``.tflite`` against the Keras model it came from.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]

tf = pytest.importorskip("tensorflow")
import keras
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from edgekit.converters import convert, evaluate
from edgekit.converters.export import FixedSeedWarning, NoMCLayerWarning, call_model
from edgekit.layers import MCDropout
from edgekit.runtime.inspect import dynamic_shape_ops, model_ops, op_counts, signature_batches
from edgekit.runtime.metadata import read_metadata, verify_integrity

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _keep_all_head(model, feats: np.ndarray) -> np.ndarray:
    """tiny_mlp's head from the features with every keep-mask 1: each MCDropout(0.2) computes
    ``inputs * keep * 1/(1 - rate)``, i.e. ``inputs / 0.8``."""
    h = call_model(model.get_layer("dense_1"), feats / 0.8)
    return call_model(model.get_layer("probs"), h / 0.8)


def _random_seeds(tflite: bytes) -> list[tuple[int, int]]:
    """(seed, seed2) of every RANDOM_UNIFORM op, read from the flatbuffer."""
    model = schema.Model.GetRootAs(tflite, 0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    seeds = []
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            if codes[op.OpcodeIndex()] == schema.BuiltinOperator.RANDOM_UNIFORM:
                opts = schema.RandomOptions()
                table = op.BuiltinOptions()
                opts.Init(table.Bytes, table.Pos)
                seeds.append((opts.Seed(), opts.Seed2()))
    return seeds


@pytest.mark.parametrize("which", ["mlp", "cnn"])
@pytest.mark.parametrize("quantize", MODES)
def test_every_mode_runs_on_the_stock_interpreter(converted, which, quantize, mlp_data, cnn_data):
    result = converted(which, quantize)
    meta = read_metadata(result.tflite)
    assert (meta["quantization"]["mode"], meta["quantization"]["io"]) == (quantize, "float32")
    # int8 quantizes Dense kernels per tensor by default (smaller file, see convert()).
    assert meta["quantization"].get("dense") == ("per-tensor" if quantize == "int8" else None)
    assert verify_integrity(result.tflite)
    it = Interpreter(model_content=result.tflite)
    sigs = it.get_signature_list()
    assert sigs["full"] == {"inputs": ["x"], "outputs": ["probs"]}
    if quantize == "int16x8":  # no split on purpose, see test_int16x8_is_not_split_and_stays_accurate
        assert set(sigs) == {"full"} and meta["signatures"]["trunk"] is None
        assert meta["signatures"]["masked"] is None  # nor a `masked` twin (same TF 2.21 reason)
    else:
        assert sigs["trunk"] == {"inputs": ["x"], "outputs": ["features"]}
        assert sigs["head"] == {"inputs": ["features"], "outputs": ["probs"]}
        # Unseeded in-graph: the `masked` twin of `head` (keep-masks as inputs), float masks with float I/O.
        assert sigs["masked"] == {"inputs": ["features", "mask_0", "mask_1"], "outputs": ["probs"]}
        assert meta["signatures"]["masked"] == "masked"
        masks = it.get_signature_runner("masked").get_input_details()
        assert masks["mask_0"]["dtype"] == masks["mask_1"]["dtype"] == np.float32
    ops = {op for per_sig in op_counts(result.tflite).values() for op in per_sig}
    assert "RANDOM_UNIFORM" in ops
    assert not any(op.startswith(("CUSTOM", "FLEX")) or op == "DELEGATE" for op in ops), ops
    x = (mlp_data if which == "mlp" else cnn_data)[2][:8]
    probs = it.get_signature_runner("full")(x=x)["probs"]
    assert probs.shape == (8, 10)
    # int8/int16 softmax outputs are quantized to steps of 1/256 (int8) or finer: 10 rounded
    # outputs can miss 1 by at most 10 * 1/512 ~ 0.02.
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)


def test_int8_is_smaller_and_keeps_float_islands_only_where_needed(converted):
    f32, i8 = converted("mlp", "float32"), converted("mlp", "int8")
    assert "masked" in f32.signatures and "masked" in i8.signatures  # the bound below includes the twin
    # int8 stores 1 byte per weight instead of 4. This MLP has only 55k weights, so the fixed
    # part (four signatures' graphs, metadata: ~17 KB, measured) keeps it at ~31%, not 25%.
    assert i8.report.size_bytes <= 0.36 * f32.report.size_bytes
    islands = i8.report.float_islands
    assert "RANDOM_UNIFORM" in islands  # no int8 kernel exists: it must stay float
    assert "FULLY_CONNECTED" not in islands  # the heavy ops are integer
    assert i8.report.gzip_bytes < i8.report.size_bytes


def test_trunk_and_full_match_keras(converted, tiny_mlp, mlp_data):
    result = converted("mlp", "float32")
    it = Interpreter(model_content=result.tflite)
    x = mlp_data[2][:16]
    trunk_keras = keras.Model(tiny_mlp.inputs, tiny_mlp.get_layer("mc_0").input)(x).numpy()
    feats = it.get_signature_runner("trunk")(x=x)["features"]
    # float32 both sides, same ops; 1e-5 covers a different summation order in FULLY_CONNECTED.
    np.testing.assert_allclose(feats, trunk_keras, rtol=1e-5, atol=1e-5)
    # MC means over 400 draws: per-class probability std is < 0.5, so the standard error of
    # each mean is < 0.025 and the difference of two means < 0.036; 0.15 is > 4 sigma.
    head = it.get_signature_runner("head")
    rep = np.repeat(feats[:4], 400, axis=0)
    tfl = head(features=rep)["probs"].reshape(4, 400, 10).mean(1)
    ker = tiny_mlp(np.repeat(x[:4], 400, axis=0)).numpy().reshape(4, 400, 10).mean(1)
    np.testing.assert_allclose(tfl, ker, atol=0.15)


def test_intermediate_tensor_names_are_stripped(converted):
    # Debug names cost ~4 KB per book-MLP file (issue 3's 27% int8 budget); inputs and outputs keep
    # theirs, and the signatures (which refer to tensors by index) still run.
    from ai_edge_litert import schema_py_generated as schema

    result = converted("mlp", "int8")
    model = schema.Model.GetRootAs(result.tflite, 0)
    ends_named = intermediates = 0
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        ends = set(sg.InputsAsNumpy().tolist()) | set(sg.OutputsAsNumpy().tolist())
        for t in range(sg.TensorsLength()):
            name = sg.Tensors(t).Name()
            if t in ends:
                assert name, (g, t)
                ends_named += 1
            else:
                assert not name, (g, t, name)
                intermediates += 1
    assert ends_named >= 8 and intermediates >= 20  # 4 signatures' inputs/outputs; dozens of others
    it = Interpreter(model_content=result.tflite)
    x = np.zeros((2, *it.get_signature_runner("full").get_input_details()["x"]["shape"][1:]), np.float32)
    assert it.get_signature_runner("full")(x=x)["probs"].shape[0] == 2


def test_masked_twin_is_head_with_keep_masks_as_inputs(converted, tiny_mlp, mlp_data):
    result = converted("mlp", "float32")
    assert result.metadata["signatures"]["masked"] == "masked" and "masked" in result.signatures
    it = Interpreter(model_content=result.tflite)
    assert it.get_signature_list()["masked"] == {"inputs": ["features", "mask_0", "mask_1"], "outputs": ["probs"]}
    assert result.report.signatures["masked"] == {"inputs": ["features", "mask_0", "mask_1"], "outputs": ["probs"]}
    assert "RANDOM_UNIFORM" not in result.report.ops["masked"] and "RANDOM_UNIFORM" in result.report.ops["head"]
    # One keep-mask per MC layer with rate > 0, in `mc_layers` order, shaped like that layer's mask.
    assert [m["mask_shape"] for m in result.metadata["mc_layers"]] == [[64], [64]]
    masked, head = it.get_signature_runner("masked"), it.get_signature_runner("head")
    feats = it.get_signature_runner("trunk")(x=mlp_data[2][:16])["features"]
    ones = np.ones((16, 64), np.float32)
    kept = masked(features=feats, mask_0=ones, mask_1=ones)["probs"]
    # float32 both sides, same ops; 1e-5 covers a different summation order in FULLY_CONNECTED.
    np.testing.assert_allclose(kept, _keep_all_head(tiny_mlp, feats), rtol=1e-5, atol=1e-5)
    dropped = masked(features=feats, mask_0=ones, mask_1=np.zeros_like(ones))["probs"]
    # mask_1 all 0: the last Dense sees 0, so softmax(bias) on every row (float32 rounding only).
    bias = _softmax(tiny_mlp.get_layer("probs").bias.numpy())
    np.testing.assert_allclose(dropped, np.broadcast_to(bias, dropped.shape), atol=1e-6)

    # Numpy-drawn masks give the same distribution as the file's own RANDOM_UNIFORM in `head`.
    n, k = 4000, 4
    rep = np.repeat(feats[:k], n, axis=0)
    rng = np.random.default_rng(0)
    draws = {f"mask_{i}": (rng.random((k * n, 64)) >= 0.2).astype(np.float32) for i in range(2)}
    ours = masked(features=rep, **draws)["probs"].reshape(k, n, 10)
    theirs = head(features=rep)["probs"].reshape(k, n, 10)
    for power in (1, 2):  # the MC mean, and the second moment (the spread the uncertainty comes from)
        a, b = ours**power, theirs**power
        se = np.sqrt(a.var(axis=1) / n + b.var(axis=1) / n)
        # 5 standard errors of the difference of two independent means: 80 comparisons at ~6e-7
        # two-sided each (normal; n=4000 samples), so a false failure is ~5e-5; the 1e-6 floor is
        # for classes whose probability barely moves (se ~ 0). Measured: max 2.9 SE.
        assert np.all(np.abs(a.mean(axis=1) - b.mean(axis=1)) <= 5 * se + 1e-6), (power, (a.mean(1) - b.mean(1)) / se)


def test_int8_masked_twin_has_float_masks_and_the_keras_function(converted, tiny_mlp, mlp_data):
    result = converted("mlp", "int8")  # float I/O
    assert result.metadata["signatures"]["masked"] == "masked"
    it = Interpreter(model_content=result.tflite)
    masked = it.get_signature_runner("masked")
    assert {k: v["dtype"] for k, v in masked.get_input_details().items()} == {
        "features": np.float32, "mask_0": np.float32, "mask_1": np.float32}
    x = mlp_data[2][:16]
    feats = it.get_signature_runner("trunk")(x=x)["features"]
    float_feats = call_model(keras.Model(tiny_mlp.inputs, tiny_mlp.get_layer("mc_0").input), x)
    ones = np.ones((16, 64), np.float32)
    kept = masked(features=feats, mask_0=ones, mask_1=ones)["probs"]
    dropped = masked(features=feats, mask_0=ones, mask_1=np.zeros_like(ones))["probs"]
    # int8 softmax outputs come in steps of 1/256 and the weights and activations are rounded
    # too: measured 0.004 from the float Keras function; 0.02 is 5x that.
    np.testing.assert_allclose(kept, _keep_all_head(tiny_mlp, float_feats), atol=0.02)
    bias = _softmax(tiny_mlp.get_layer("probs").bias.numpy())
    # Same reason (measured 0.003); the bias alone is rounded to int32 with the input's scale.
    np.testing.assert_allclose(dropped, np.broadcast_to(bias, dropped.shape), atol=0.02)
    # The two checks above can tell the masks apart: dropping a layer moves outputs far more than 0.02.
    assert np.abs(kept - dropped).max() > 0.2


def test_masked_twin_feeds_spatial_and_alpha_dropout_their_own_mask_shapes():
    from edgekit.layers import MCAlphaDropout, MCSpatialDropout2D, mask_inputs

    inputs = keras.Input((8, 8, 2))
    h = MCSpatialDropout2D(0.3, name="spatial")(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    h = keras.layers.Dense(16, activation="selu")(keras.layers.Flatten()(h))
    outputs = keras.layers.Dense(3, activation="softmax")(MCAlphaDropout(0.1, name="alpha")(h))
    model = keras.Model(inputs, outputs)
    result = convert(model)
    # One decision per sample and channel for the spatial layer, per unit for alpha dropout.
    assert [m["mask_shape"] for m in result.metadata["mc_layers"]] == [[1, 1, 4], [16]]
    it = Interpreter(model_content=result.tflite)
    x = np.random.default_rng(0).random((5, 8, 8, 2), dtype=np.float32)
    rng = np.random.default_rng(1)
    masks = {"mask_0": (rng.random((5, 1, 1, 4)) >= 0.3).astype(np.float32),
             "mask_1": (rng.random((5, 16)) >= 0.1).astype(np.float32)}
    feats = it.get_signature_runner("trunk")(x=x)["features"]
    got = it.get_signature_runner("masked")(features=feats, **masks)["probs"]
    with mask_inputs({"spatial": masks["mask_0"], "alpha": masks["mask_1"]}):
        expected = call_model(model, x)
    # The same masks on both sides; float32 both sides, 1e-5 covers a different summation order.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantize, options", [
    ("float32", {"seed": 7}),  # the seed promises the file's own mask sequence
    ("float32", {"stochastic": "mask-input"}),  # `full`/`head` already take the masks
    ("int16x8", {}),  # TF 2.21 mis-quantizes weights shared by several 16x8 signatures
])
def test_no_masked_twin_when_seeded_mask_input_or_int16x8(converted, quantize, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FixedSeedWarning)  # asserted in test_seed_gives_reproducible_masks_and_warns
        result = converted("mlp", quantize, **options)
    assert result.metadata["signatures"]["masked"] is None and "masked" not in result.signatures
    assert "masked" not in Interpreter(model_content=result.tflite).get_signature_list()
    assert "masked" not in result.report.signatures


def test_no_masked_twin_without_a_dropout_that_drops():
    # An MC layer with rate 0 is the identity: nothing to draw, so nothing to feed.
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), MCDropout(0.0),
                              keras.layers.Dense(3, activation="softmax")])
    result = convert(model)
    assert result.metadata["stochastic"] == "none" and result.metadata["signatures"]["masked"] is None
    assert "masked" not in Interpreter(model_content=result.tflite).get_signature_list()


def test_default_export_is_unseeded_even_after_set_random_seed(converted, tmp_path, mlp_data):
    result = converted("mlp", "float32")  # tiny_mlp was built and trained after set_random_seed(0)
    assert _random_seeds(result.tflite) and all(s == (0, 0) for s in _random_seeds(result.tflite))
    path = tmp_path / "m.tflite"
    path.write_bytes(result.tflite)
    np.save(tmp_path / "x.npy", mlp_data[2][:4])
    # A fresh process with nothing but the stock interpreter: no edgekit code runs.
    script = textwrap.dedent(f"""
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        x = np.load({str(tmp_path / "x.npy")!r})
        def run(it):
            return it.get_signature_runner("full")(x=x)["probs"]
        a = Interpreter(model_path={str(path)!r}); b = Interpreter(model_path={str(path)!r})
        first, second, other = run(a), run(a), run(b)
        print(int(not np.allclose(first, second)), int(not np.allclose(first, other)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["1", "1"]  # consecutive invokes differ; two interpreters differ


def test_seed_gives_reproducible_masks_and_warns(tiny_mlp, mlp_data):
    with pytest.warns(FixedSeedWarning, match="every device"):
        result = convert(tiny_mlp, seed=7)
    assert all(s != (0, 0) for s in _random_seeds(result.tflite))
    assert result.metadata["seed"] == 7
    x = mlp_data[2][:4]
    outs = [Interpreter(model_content=result.tflite).get_signature_runner("full")(x=x)["probs"] for _ in range(2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    # The caller's global seed survives the (unseeded) export.
    keras.utils.set_random_seed(3)
    convert(tiny_mlp)
    assert tf.compat.v1.random.get_seed(None)[0] == 3


def test_mask_input_mode_has_named_masks_and_no_random_op(converted, mlp_data):
    result = converted("mlp", "float32", stochastic="mask-input")
    ops = {op for per_sig in op_counts(result.tflite).values() for op in per_sig}
    assert "RANDOM_UNIFORM" not in ops
    assert [m["mask_input"] for m in result.metadata["mc_layers"]] == ["mask_0", "mask_1"]
    it = Interpreter(model_content=result.tflite)
    assert it.get_signature_list()["head"]["inputs"] == ["features", "mask_0", "mask_1"]
    full = it.get_signature_runner("full")
    x = mlp_data[2][:4]
    ones = {f"mask_{i}": np.ones((4, 64), np.float32) for i in range(2)}
    a, b = full(x=x, **ones)["probs"], full(x=x, **ones)["probs"]
    np.testing.assert_array_equal(a, b)  # no randomness left inside the file
    dropped = dict(ones, mask_1=np.zeros((4, 64), np.float32))
    assert not np.allclose(full(x=x, **dropped)["probs"], a)


def test_mask_input_deterministic_accuracy_matches_keras_dropout_off(converted, tiny_mlp, mlp_data):
    result = converted("mlp", "float32", stochastic="mask-input")
    _, _, xt, yt = mlp_data
    report = evaluate(result, tiny_mlp, xt[:100], yt[:100], samples=10)
    # Same float32 function (expected masks cancel the 1/(1-rate) scaling): identical argmax.
    assert report.accuracy["tflite"]["deterministic_accuracy"] == report.accuracy["keras"]["deterministic_accuracy"]


def test_int8_mc_accuracy_is_close_to_keras(converted, tiny_mlp, mlp_data):
    _, _, xt, yt = mlp_data
    report = evaluate(converted("mlp", "int8"), tiny_mlp, xt, yt, samples=30)
    acc = report.accuracy
    assert acc["keras"]["mc_accuracy"] > 0.8  # the task is learnable: otherwise the check is empty
    # 300 test inputs: one flipped prediction is 0.33 points; int8 rounding may flip a few
    # borderline ones and MC noise a few more. 3 points is far from a collapse to chance (90).
    assert abs(acc["mc_accuracy_delta_points"]) <= 3.0
    assert 0 <= acc["tflite"]["ece"] <= 1 and acc["tflite"]["nll"] > 0
    assert "accuracy" in report.to_table() and report.to_dict()["accuracy"]["n"] == 300


def test_a_shared_keras_reference_is_used_as_given(converted, tiny_mlp, mlp_data):
    from edgekit.converters import keras_reference

    _, _, xt, yt = mlp_data
    reference = keras_reference(tiny_mlp, xt[:50], samples=10)
    mc_mean, det = reference
    acc = evaluate(converted("mlp", "float16"), tiny_mlp, xt[:50], yt[:50], samples=10, reference=reference).accuracy
    # The Keras side comes from the reference itself (a fresh MC run would differ by sampling).
    assert acc["keras"]["mc_accuracy"] == float((mc_mean.argmax(1) == yt[:50]).mean())
    assert acc["keras"]["deterministic_accuracy"] == float((det.argmax(1) == yt[:50]).mean())
    with pytest.raises(ValueError, match="Expected a reference for 40 inputs. Received: 50 rows"):
        evaluate(converted("mlp", "float16"), tiny_mlp, xt[:40], yt[:40], samples=10, reference=reference)


def test_int16x8_is_not_split_and_stays_accurate(converted, tiny_mlp, mlp_data):
    # TF 2.21 mis-quantizes weights shared by several 16x8 signatures (book MLP: 64% instead of
    # 83% MC accuracy, bench/convert_report.py), so int16x8 files carry `full` only.
    result = converted("mlp", "int16x8")
    assert "int16x8" in result.report.split_reason
    _, _, xt, yt = mlp_data
    acc = evaluate(result, tiny_mlp, xt, yt, samples=30).accuracy
    assert abs(acc["mc_accuracy_delta_points"]) <= 3.0  # same bound and reason as the int8 test


def test_int8_io(converted, mlp_data):
    result = converted("mlp", "int8", int8_io=True)
    it = Interpreter(model_content=result.tflite)
    details = it.get_signature_runner("full").get_input_details()["x"]
    assert details["dtype"] == np.int8
    assert result.metadata["input"]["dtype"] == "int8" and result.report.io == "int8"
    # The `masked` twin's keep-masks are int8 inputs too; calibrated on real 0/1 masks, so both
    # values have exact codes (the runtime writes those codes).
    for name, d in it.get_signature_runner("masked").get_input_details().items():
        if name.startswith("mask_"):
            scale, zero = d["quantization"]
            assert d["dtype"] == np.int8
            codes = [round(v / scale + zero) for v in (0.0, 1.0)]
            assert all(-128 <= c <= 127 for c in codes)
            # Dequantized codes within float32 rounding of 0 and 1.
            np.testing.assert_allclose([(c - zero) * scale for c in codes], [0.0, 1.0], atol=1e-6)


def test_no_split_when_first_mc_layer_acts_on_the_input():
    dense = keras.layers.Dense(10, activation="softmax")
    model = keras.Sequential([keras.Input((64,)), MCDropout(0.3), dense])
    result = convert(model)
    assert result.metadata["signatures"] == {"full": "full", "trunk": None, "head": None, "masked": "masked"}
    it = Interpreter(model_content=result.tflite)
    sigs = it.get_signature_list()
    assert sorted(sigs) == ["full", "masked"]
    assert "acts on the model input" in result.report.split_reason
    # No trunk: the `masked` twin is the full graph and takes the model input `x`.
    assert sigs["masked"] == {"inputs": ["mask_0", "x"], "outputs": ["probs"]}
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    masked = it.get_signature_runner("masked")
    ones = masked(x=x, mask_0=np.ones((8, 64), np.float32))["probs"]
    # keep=1 everywhere: MCDropout computes x * 1 * 1/(1 - 0.3). float32 both sides, same ops;
    # 1e-5 covers a different summation order in FULLY_CONNECTED.
    np.testing.assert_allclose(ones, call_model(dense, x / 0.7), rtol=1e-5, atol=1e-5)
    zeros = masked(x=x, mask_0=np.zeros((8, 64), np.float32))["probs"]
    # Everything dropped: the Dense sees 0, so softmax(bias) on every row (float32 rounding only).
    np.testing.assert_allclose(zeros, np.broadcast_to(_softmax(dense.bias.numpy()), (8, 10)), atol=1e-6)


def test_model_without_mc_layer_warns_and_is_deterministic():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.warns(NoMCLayerWarning, match="deterministic"):
        result = convert(model)
    assert result.metadata["stochastic"] == "none"
    assert result.metadata["mc_layers"] == []


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((0, 28, 28), np.float32), "non-empty"),
        (np.zeros((5, 28, 27), np.float32), r"shape \(n, 28, 28\)"),
        (np.full((5, 28, 28), np.nan, np.float32), "finite"),
        (None, "Expected `representative_data`"),
    ],
)
def test_bad_representative_data(tiny_mlp, data, message):
    with pytest.raises(ValueError, match=message):
        convert(tiny_mlp, quantize="int8", representative_data=data)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantize": "int4"}, "Expected one of 'float32'"),
        ({"stochastic": "sometimes"}, "Expected one of 'in-graph'"),
        ({"int8_io": True}, "quantize='int8' with int8_io"),
        ({"sparse": True, "quantize": "dynamic"}, "XNNPACK"),
        ({"class_names": ["a", "b"]}, "Expected 10 class names"),
        ({"seed": -1}, "non-negative int"),
    ],
)
def test_bad_arguments(tiny_mlp, kwargs, message):
    with pytest.raises(ValueError, match=message):
        convert(tiny_mlp, **kwargs)


def test_unsupported_layer_is_one_clear_error():
    class Svd(keras.layers.Layer):  # no TFLite builtin computes an SVD
        def call(self, x):
            return tf.linalg.svd(tf.reshape(x, [-1, 4, 4]), compute_uv=False)

    inputs = keras.Input((16,))
    h = MCDropout(0.2)(keras.layers.Dense(16)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(Svd()(h))
    with pytest.raises(ValueError, match="Expected a model made of layers that convert to TFLite builtin ops"):
        convert(keras.Model(inputs, outputs))


def test_metadata_follows_the_format(converted):
    result = converted("cnn", "float32")
    meta = result.metadata
    assert meta["format"] == "edgekit/2" and meta["stochastic"] == "in-graph" and meta["seed"] is None
    assert [(m["name"], m["kind"], m["rate"]) for m in meta["mc_layers"]] == [
        ("mc_0", "MCDropout", 0.2), ("mc_1", "MCDropout", 0.2)]
    assert meta["mc_layers"][0]["mask_shape"] == [4 * 4 * 8]
    assert meta["input"]["shape"] == [16, 16, 1]
    assert meta["outputs"] == [{"name": "probs", "task": "classification", "shape": [10], "activation": "softmax",
                                "class_names": None, "calibration": None, "abstain": None}]
    assert meta["batch"] == {"full": None, "trunk": None, "head": None, "masked": None}  # dynamic everywhere
    assert len(meta["sha256"]) == 64
    # BN folding happened before export: no BatchNorm arithmetic left around the convolutions.
    assert [f["batchnorm"] for f in result.report.fold["folded"]] == ["bn_0", "bn_1"]


def test_warnings_do_not_leak_from_the_calibrator(tiny_mlp, mlp_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(tiny_mlp, quantize="int8", representative_data=mlp_data[0][:50])
    assert not [w for w in caught if "tf.lite.Interpreter is deprecated" in str(w.message)]


def test_no_split_when_a_skip_connection_bypasses_the_cut():
    inputs = keras.Input((16,))
    h = MCDropout(0.2, name="mc")(keras.layers.Dense(16)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Concatenate()([h, inputs]))
    result = convert(keras.Model(inputs, outputs))
    assert result.metadata["signatures"]["trunk"] is None
    assert "does not separate the graph" in result.report.split_reason


def test_sequential_loaded_from_a_file_is_split(tiny_mlp, tmp_path, mlp_data):
    tiny_mlp.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    result = convert(loaded)
    assert result.metadata["signatures"] == {"full": "full", "trunk": "trunk", "head": "head", "masked": "masked"}
    x = mlp_data[2][:3]
    feats = Interpreter(model_content=result.tflite).get_signature_runner("trunk")(x=x)["features"]
    expected = keras.Model(tiny_mlp.inputs, tiny_mlp.get_layer("mc_0").input)(x).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)  # same float32 ops, summation order aside


# ---------------------------------------------------------------------- static shapes


def _assert_no_needless_dynamic_shapes(tflite: bytes, signatures) -> None:
    """No signature computes a shape at run time where a constant one does the same job.

    With a dynamic batch only in-graph dropout needs one: RANDOM_UNIFORM draws a mask as large as
    the batch, so its shape (and the SHAPE op it comes from) follows the batch.
    """
    for sig in signatures:
        ops = model_ops(tflite, sig)
        assert set(dynamic_shape_ops(tflite, sig)) <= {"RANDOM_UNIFORM"}, (sig, dynamic_shape_ops(tflite, sig))
        if "RANDOM_UNIFORM" not in ops:
            assert "SHAPE" not in ops, (sig, ops)


@pytest.mark.parametrize("which, quantize, options", [
    ("mlp", "float32", {}), ("mlp", "int8", {}), ("mlp", "float32", {"stochastic": "mask-input"}),
    ("cnn", "float32", {}), ("cnn", "int8", {}), ("cnn", "float32", {"stochastic": "mask-input"}),
    ("cnn", "int16x8", {}),
])
def test_flatten_is_a_static_reshape_in_every_export(converted, which, quantize, options):
    result = converted(which, quantize, **options)
    _assert_no_needless_dynamic_shapes(result.tflite, result.signatures)
    if "trunk" in result.signatures:  # both trunks end in a Flatten
        assert "RESHAPE" in model_ops(result.tflite, "trunk") and "SHAPE" not in model_ops(result.tflite, "trunk")


@pytest.mark.parametrize("stochastic", ["in-graph", "mask-input"])
def test_a_flatten_after_spatial_dropout_is_static_too(stochastic):
    # The committed cnn fixture's layout: the Flatten sits in the head, after MCSpatialDropout2D.
    from edgekit.layers import MCSpatialDropout2D

    inputs = keras.Input((12, 12, 1), name="x")
    h = MCSpatialDropout2D(0.2, name="mc_spatial")(keras.layers.Conv2D(8, 3, activation="relu")(inputs))
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(h))
    outputs = keras.layers.Dense(4, activation="softmax")(MCDropout(0.3)(h))
    result = convert(keras.Model(inputs, outputs), stochastic=stochastic)
    _assert_no_needless_dynamic_shapes(result.tflite, result.signatures)
    assert "RESHAPE" in model_ops(result.tflite, "head")


def test_book_recipe_has_no_needless_dynamic_shape_and_runs_under_compiled_model(mlp_data):
    from ai_edge_litert.compiled_model import CompiledModel

    from edgekit.recipes import book

    result = convert(book())
    _assert_no_needless_dynamic_shapes(result.tflite, result.signatures)
    # The trunk is the standardization and the Flatten. Under LiteRT's CompiledModel API a
    # signature ending in a RESHAPE of a run-time shape gets a dynamic output, and the caller's
    # buffer is never written although the run returns OK; the static reshape is written.
    compiled = CompiledModel.from_buffer(result.tflite)
    index = compiled.get_signature_index("trunk")
    inputs, outputs = compiled.create_input_buffers(index), compiled.create_output_buffers(index)
    x = mlp_data[2][:1]
    inputs[0].write(x)
    outputs[0].write(np.full((1, 784), 123.0, np.float32))  # a sentinel the run must overwrite
    compiled.run_by_index(index, inputs, outputs)
    got = outputs[0].read(784, np.float32).reshape(1, 784)
    want = Interpreter(model_content=result.tflite).get_signature_runner("trunk")(x=x)["features"]
    # The same float32 kernels (a multiply-add per value) on both paths: equal up to rounding.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_static_batch_export_has_no_shape_computed_at_run_time(tiny_mlp, mlp_data):
    result = convert(tiny_mlp, batch=4)  # in-graph, with the masked twin
    assert result.metadata["batch"] == {"full": 4, "trunk": 1, "head": 4, "masked": 4}
    assert signature_batches(result.tflite) == {"full": 4, "head": 4, "masked": 4, "trunk": 1}
    for sig in result.signatures:
        # Even RANDOM_UNIFORM gets a constant shape: the batch is known when the file loads.
        assert dynamic_shape_ops(result.tflite, sig) == [] and "SHAPE" not in model_ops(result.tflite, sig), sig
    it = Interpreter(model_content=result.tflite)
    head = it.get_signature_runner("head")
    feats = it.get_signature_runner("trunk")(x=mlp_data[2][:1])["features"]
    rows = np.repeat(feats, 4, axis=0)
    a, b = head(features=rows)["probs"], head(features=rows)["probs"]
    assert a.shape == (4, 10) and not np.allclose(a, b)  # unseeded masks drawn in the graph, at batch 4
    # int8 calibration feeds each signature at its own batch (4 rows a time, the last group wrapping).
    q = convert(tiny_mlp, quantize="int8", representative_data=mlp_data[0][:10], batch=4)
    assert signature_batches(q.tflite) == {"full": 4, "head": 4, "masked": 4, "trunk": 1}


def test_device_fit_checks_the_tensor_arena_against_ram(tiny_mlp, tmp_path):
    from edgekit.devices import PROFILE_DIR, DeviceFitError

    # A board like the Pi 4 but with 100 KB of RAM: the float32 file alone is ~240 KB.
    text = (PROFILE_DIR / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "tiny-board"')
    text = text.replace("ram_bytes = 4294967296", "ram_bytes = 100000").replace(
        "default_quantization = \"int8\"", "default_quantization = \"float32\"")
    (tmp_path / "tiny.toml").write_text(text)
    with pytest.raises(DeviceFitError, match=r"does not fit device 'tiny-board'.*model \+ tensor arena needs [\d,]+ bytes; "
                                             r"tiny-board has 100,000 bytes of RAM"):
        convert(tiny_mlp, device=tmp_path / "tiny.toml")


def test_device_defaults_apply_from_python(tiny_mlp, mlp_data):
    # rpi4: int8 (calibrated on the data given), in-graph, float I/O, dynamic batch.
    result = convert(tiny_mlp, device="rpi4", representative_data=mlp_data[0][:50])
    meta = result.metadata
    assert (meta["quantization"]["mode"], meta["quantization"]["io"], meta["stochastic"]) == ("int8", "float32", "in-graph")
    assert meta["batch"] == {"full": None, "trunk": None, "head": None, "masked": None}
    assert result.report.device == {"name": "rpi4", "problems": []}
    with pytest.raises(TypeError, match="Expected `device` to be a profile name"):
        convert(tiny_mlp, device=4)
