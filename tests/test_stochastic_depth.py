"""Stochastic depth ("drop path") end to end: Keras -> to_mc -> convert -> the stock interpreter and MCModel.

The model is EfficientNet's pattern in miniature: two residual blocks whose branch ends in
``Dropout(noise_shape=(None, 1, 1, 1))`` (one keep/drop decision per sample for the whole branch),
BatchNorm after every convolution, and a plain ``Dropout`` before the classifier. Every file must
carry per-sample masks (``mask_shape`` ``[1, 1, 1]``, mask inputs ``[T, 1, 1, 1]``) and its MC
statistics must match Keras' (``edgekit.mc.predict``) within standard errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]

pytest.importorskip("tensorflow")
import keras
from ai_edge_litert.interpreter import Interpreter

from edgekit import mc
from edgekit.converters import convert
from edgekit.converters.export import FixedSeedWarning, call_model
from edgekit.layers import MCDropout, mask_inputs
from edgekit.runtime import MCModel
from edgekit.runtime.inspect import random_uniform_shapes

SHAPE = (16, 16, 1)  # conftest's cnn_data images
T = 400
DROP_PATH = ("block0_drop", "block1_drop")


def _drop_path_net() -> keras.Model:
    inputs = keras.Input(SHAPE, name="x")
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    h = keras.layers.Activation("swish")(keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(h))
    for i, rate in enumerate((0.3, 0.4)):
        b = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name=f"block{i}_conv")(h)
        b = keras.layers.Activation("swish")(keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(b))
        b = keras.layers.Conv2D(8, 1, use_bias=False, name=f"block{i}_project")(b)
        b = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_project_bn")(b)
        b = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"block{i}_drop")(b)
        h = keras.layers.Add(name=f"block{i}_add")([h, b])
    # Flatten, not EfficientNet's global pooling: the synthetic classes differ by where pixels are bright.
    h = keras.layers.Dropout(0.2, name="top_dropout")(keras.layers.Flatten()(h))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probs")(h))


@pytest.fixture(scope="module")
def net(cnn_data):
    """The trained MC model (to_mc of the plain Keras net)."""
    keras.utils.set_random_seed(0)
    model = _drop_path_net()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    x, y, _, _ = cnn_data
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return mc.to_mc(model)


@pytest.fixture(scope="module")
def files(net, cnn_data):
    """converted(name) -> ConvertedModel for the four exports under test, each converted once."""
    options = {
        "float32": {},
        "float32-seeded": {"seed": 7},  # the file's own RANDOM_UNIFORM draws the masks, reproducibly
        "float32-mask-input": {"stochastic": "mask-input"},
        "int8": {"quantize": "int8"},
    }
    cache = {}

    def get(name):
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FixedSeedWarning)
                cache[name] = convert(net, representative_data=cnn_data[0][:200], **options[name])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def keras_mc(net, cnn_data):
    keras.utils.set_random_seed(1)
    return mc.predict(net, cnn_data[2][:8], samples=T)


def test_to_mc_keeps_the_drop_path_and_every_batchnorm_folds(net, files):
    assert {name: net.get_layer(name).noise_shape for name in DROP_PATH} == dict.fromkeys(DROP_PATH, (None, 1, 1, 1))
    assert isinstance(net.get_layer("top_dropout"), MCDropout) and net.get_layer("top_dropout").noise_shape is None
    result = files("float32")
    assert [(m["name"], m["kind"], m["mask_shape"]) for m in result.metadata["mc_layers"]] == [
        ("block0_drop", "MCDropout", [1, 1, 1]), ("block1_drop", "MCDropout", [1, 1, 1]),
        ("top_dropout", "MCDropout", [512])]
    assert len(result.report.fold["folded"]) == 5 and result.report.fold["not_folded"] == []
    # The skip connection around block0's drop path bypasses the cut: no trunk, `masked` is `full` with masks.
    assert result.metadata["signatures"] == {"full": "full", "trunk": None, "head": None, "masked": "masked"}


@pytest.mark.parametrize("name, signature", [
    ("float32", "masked"), ("int8", "masked"), ("float32-mask-input", "full")])
def test_mask_inputs_are_per_sample_for_the_drop_path(files, name, signature):
    it = Interpreter(model_content=files(name).tflite)
    details = it.get_signature_runner(signature).get_input_details()
    shapes = {k: v["shape_signature"].tolist() for k, v in details.items() if k.startswith("mask_")}
    assert shapes == {"mask_0": [-1, 1, 1, 1], "mask_1": [-1, 1, 1, 1], "mask_2": [-1, 512]}
    assert {details[k]["dtype"] for k in shapes} == {np.float32}


def test_in_graph_files_draw_per_sample_masks(files):
    for name in ("float32", "float32-seeded", "int8"):
        shapes = random_uniform_shapes(files(name).tflite)
        # Two drop paths ([batch, 1, 1, 1]) and the top dropout ([batch, 8]) in `full`; `masked` draws nothing.
        assert shapes["full"] == [[-1, 1, 1, 1], [-1, 1, 1, 1], [-1, 512]], name
        assert shapes.get("masked", []) == [], name


def test_masked_twin_computes_the_keras_function_with_the_same_masks(net, files, cnn_data):
    x = cnn_data[2][:64]
    rng = np.random.default_rng(2)
    masks = {"mask_0": (rng.random((64, 1, 1, 1)) >= 0.3).astype(np.float32),
             "mask_1": (rng.random((64, 1, 1, 1)) >= 0.4).astype(np.float32),
             "mask_2": (rng.random((64, 512)) >= 0.2).astype(np.float32)}
    got = Interpreter(model_content=files("float32").tflite).get_signature_runner("masked")(x=x, **masks)["probs"]
    with mask_inputs(dict(zip((*DROP_PATH, "top_dropout"), masks.values()))):
        expected = call_model(net, x)
    # Same masks, float32 both sides (BN folded in the file, in float64): summation order and
    # folding rounding only.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # The check can tell a dropped branch from a kept one: flipping block 1's decisions moves outputs.
    with mask_inputs(dict(zip((*DROP_PATH, "top_dropout"), (masks["mask_0"], 1 - masks["mask_1"], masks["mask_2"])))):
        flipped = call_model(net, x)
    assert np.abs(flipped - expected).max() > 0.05


def _z(a_mean, a_std, b_mean, b_std, t) -> np.ndarray:
    # Two independent MC means of t samples each: their difference has standard error
    # sqrt(a_std^2 / t + b_std^2 / t). The 1e-18 floor keeps classes whose probability never moves finite.
    return np.abs(a_mean - b_mean) / np.sqrt(a_std**2 / t + b_std**2 / t + 1e-18)


@pytest.mark.parametrize("name", ["float32", "float32-seeded", "float32-mask-input"])
def test_float32_mc_statistics_match_keras(files, keras_mc, cnn_data, name):
    model = MCModel(files(name).tflite, seed=3, probe=False)
    assert model.masks_from == ("file" if name == "float32-seeded" else "numpy")
    x = cnn_data[2][:8]
    pred = model.predict(x, samples=T)
    assert np.all(pred.std.max(axis=1) > 0.01)  # stochastic: every input's samples spread
    assert not np.array_equal(pred.mean, model.predict(x, samples=T).mean)
    # 4 standard errors on 80 (input, class) means: each exceeds it with probability 6e-5 under
    # the null, and the runs are seeded (Keras, MCModel's numpy masks, the seeded file).
    # Measured: max 2.9 SE.
    z = _z(pred.mean, pred.std, keras_mc.mean, keras_mc.std, T)
    assert z.max() <= 4, z.max()
    # The spread too: per-unit masks instead of per-sample ones would average the branch noise
    # away and shrink it. Under the null the two sample variances have standard error
    # sqrt(2 (m4 - var^2) / T) together (m4: Keras' 4th central moment); 4 of them, plus 1e-6 for
    # classes that never move. Measured: max 2.5.
    var, m4 = keras_mc.probs.var(axis=0), ((keras_mc.probs - keras_mc.mean) ** 4).mean(axis=0)
    assert np.all(np.abs(pred.std**2 - var) <= 4 * np.sqrt(2 * (m4 - var**2) / T) + 1e-6)


def test_int8_mc_mean_is_close_to_keras(net, files, keras_mc, cnn_data):
    result = files("int8")
    # int8 rounding alone, with the same masks on both sides (4 inputs x 100 masks through the
    # masked twin): each softmax value is rounded to a step of 1/256 and the activations of the 6
    # quantized layers to 8 bits, so single passes differ by up to 16 steps (measured: 0.063),
    # but what an MC mean keeps is the average of those errors over its passes (measured: at
    # most 0.0077 per input and class). 0.02 is 5 output steps, 2.6x that measurement.
    x = np.repeat(cnn_data[2][:4], 100, axis=0)
    rng = np.random.default_rng(4)
    masks = {"mask_0": (rng.random((400, 1, 1, 1)) >= 0.3).astype(np.float32),
             "mask_1": (rng.random((400, 1, 1, 1)) >= 0.4).astype(np.float32),
             "mask_2": (rng.random((400, 512)) >= 0.2).astype(np.float32)}
    got = Interpreter(model_content=result.tflite).get_signature_runner("masked")(x=x, **masks)["probs"]
    with mask_inputs(dict(zip((*DROP_PATH, "top_dropout"), masks.values()))):
        expected = call_model(net, x)
    bias = np.abs((got - expected).reshape(4, 100, 10).mean(axis=1))
    assert bias.max() <= 0.02, bias.max()
    # The MC mean through MCModel: sampling error (4 SE, as for float32) plus that 0.02.
    pred = MCModel(result.tflite, seed=3, probe=False).predict(cnn_data[2][:8], samples=T)
    assert np.all(pred.std.max(axis=1) > 0.01)
    se = np.sqrt(pred.std**2 / T + keras_mc.std**2 / T)
    assert np.all(np.abs(pred.mean - keras_mc.mean) <= 4 * se + 0.02)
