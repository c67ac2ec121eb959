"""MC layers: they sample at inference, keep their statistics, serialize, and convert with builtins only."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

keras = pytest.importorskip("keras", reason="the MC layers need the [train] extra (TensorFlow)")
tf = pytest.importorskip("tensorflow")

from edgekit.errors import InvalidArgumentError
from edgekit.layers import (
    MC_LAYERS,
    MCAlphaDropout,
    MCDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
    dropout_off,
    mask_inputs,
)

WIDE = 4096  # wide enough that two independent masks never coincide (P ~ 2^-4096)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.mark.parametrize("layer_cls", [MCDropout, MCAlphaDropout])
def test_two_inference_calls_differ(layer_cls):
    layer = layer_cls(0.3)
    x = np.ones((2, WIDE), np.float32)
    a, b = np.asarray(layer(x, training=False)), np.asarray(layer(x, training=False))
    assert not np.array_equal(a, b)
    # ... and so do two rows of one call: each sample draws its own mask.
    assert not np.array_equal(a[0], a[1])


def test_spatial_two_calls_differ_and_drop_whole_channels():
    layer = MCSpatialDropout2D(0.5)
    x = np.ones((4, 5, 5, 128), np.float32)
    a, b = np.asarray(layer(x)), np.asarray(layer(x))
    assert not np.array_equal(a, b)
    # One decision per (sample, channel): every pixel of a channel is 0 or all are 1/(1-rate).
    per_channel = a.reshape(4, 25, 128)
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))
    assert set(np.unique(a)) <= {0.0, 2.0}


@pytest.mark.parametrize("layer_cls, shape, channel_axis", [
    (MCSpatialDropout1D, (64, 7, 32), 2),
    (MCSpatialDropout3D, (64, 3, 4, 5, 32), 4),
])
def test_spatial_1d_3d_drop_whole_channels(layer_cls, shape, channel_axis):
    x = np.ones(shape, np.float32)
    a = np.asarray(layer_cls(0.5)(x))
    # 64 samples x 32 channels = 2048 decisions: two calls never coincide by chance.
    assert not np.array_equal(a, np.asarray(layer_cls(0.5)(x)))
    per_channel = np.moveaxis(a, channel_axis, -1).reshape(shape[0], -1, shape[-1])
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # one decision per (sample, channel)
    assert set(np.unique(a)) <= {0.0, 2.0}


def test_spatial_channels_first_shares_the_other_axes():
    a = np.asarray(MCSpatialDropout3D(0.5, data_format="channels_first")(np.ones((64, 32, 2, 3, 4), np.float32)))
    flat = a.reshape(64, 32, -1)
    assert np.all(flat.min(axis=2) == flat.max(axis=2)) and 0 < (flat[:, :, 0] == 0).mean() < 1
    assert MCSpatialDropout3D(0.5, data_format="channels_first").mask_shape((None, 32, 2, 3, 4)) == (32, 1, 1, 1)
    assert MCSpatialDropout1D(0.5).mask_shape((None, 7, 16)) == (1, 16)
    assert MCSpatialDropout1D(0.5, data_format="channels_first").mask_shape((None, 16, 7)) == (16, 1)


def test_drop_path_keeps_or_drops_each_sample_whole():
    """noise_shape=(None, 1, 1, 1): stochastic depth, one decision per sample for the whole tensor."""
    n, rate = 4000, 0.3
    layer = MCDropout(rate, noise_shape=(None, 1, 1, 1))
    out = np.asarray(layer(np.ones((n, 4, 4, 8), np.float32))).reshape(n, -1)
    assert np.all(out.min(axis=1) == out.max(axis=1))  # every unit of a sample shares its decision
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.7)}
    # Each sample is dropped with probability rate: SE sqrt(0.21 / 4000) ~ 0.007; 5 SE = 0.036.
    assert abs((out[:, 0] == 0).mean() - rate) < 0.036
    assert layer.mask_shape((None, 4, 4, 8)) == (1, 1, 1)


def test_noise_shape_broadcasts_only_the_axes_given_as_1():
    # (batch, steps, features) with one mask per sample shared by all 6 steps, per unit across 64 features.
    layer = MCDropout(0.5, noise_shape=(None, 1, None))
    out = np.asarray(layer(np.ones((64, 6, 64), np.float32)))
    assert np.all(out.min(axis=1) == out.max(axis=1))
    assert not np.all(out[:, 0, :1] == out[:, 0, 1:2]) and not np.all(out[:1] == out[1:2])
    assert layer.mask_shape((None, 6, 64)) == (1, 64)
    # An integer equal to the input's size is the same as None (Keras' convention).
    assert MCDropout(0.5, noise_shape=(None, 1, 64)).mask_shape((None, 6, 64)) == (1, 64)
    alpha = MCAlphaDropout(0.2, noise_shape=(None, 1, None))
    a = np.asarray(alpha(np.ones((64, 6, 64), np.float32)))
    dropped = a == a.min()  # ones in: kept units give one value, dropped ones the (lower) saturation value
    assert np.all(dropped.min(axis=1) == dropped.max(axis=1)) and 0 < dropped.mean() < 1


@pytest.mark.parametrize("noise_shape, message", [
    ("1,1", r"Expected a tuple or list of integers. Received: noise_shape='1,1'"),
    (5, r"Expected an iterable of integers \(e.g., a tuple or list\). Received: noise_shape=5"),
    ((None, 1.5), r"Expected all elements to be integers or None. Received element at index 1: 1.5 \(type: float\)"),
    ((None, 0), r"Expected all dimensions to be positive integers or None. Received negative or zero value at index 1"),
    ((1, 1, 1, 1), (r"Expected None at index 0 \(the batch axis: every MC sample draws its own mask\). Received: "
                   r"noise_shape=\(1, 1, 1, 1\)")),
    ((), r"Expected None at index 0"),
])
def test_bad_noise_shape_is_a_keras_style_error(noise_shape, message):
    with pytest.raises(InvalidArgumentError, match=r"Invalid value received for argument `noise_shape`\. " + message):
        MCDropout(0.2, noise_shape=noise_shape)


@pytest.mark.parametrize("noise_shape", [(None, 1, 1), (None, 2, 1, 1)])
def test_noise_shape_that_does_not_fit_the_input(noise_shape):
    with pytest.raises(InvalidArgumentError, match=r"Expected one entry per input axis \(rank 4\), each None, 1 or "
                       r"the input's size on that axis. Received: noise_shape=.* for an input of shape \(2, 4, 4, 8\) "
                       r"\(layer 'mc'\)"):
        MCDropout(0.2, noise_shape=noise_shape, name="mc")(np.ones((2, 4, 4, 8), np.float32))


@pytest.mark.parametrize("layer", [MCDropout(0.0), MCAlphaDropout(0.0), MCSpatialDropout2D(0.0),
                                   MCDropout(0.0, noise_shape=(None, 1, 1, 1))])
def test_rate_zero_is_identity(layer):
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)


def test_mcdropout_mean_matches_input():
    rate, n = 0.5, 16 * WIDE
    out = np.asarray(MCDropout(rate)(np.ones((16, WIDE), np.float32)))
    # Each output is 0 or 1/(1-rate): mean 1, std sqrt(rate/(1-rate)) = 1, so the standard error
    # of the mean over n units is 1/sqrt(n) ~ 0.004; 5 SE keeps this seeded test far from flaky.
    assert abs(out.mean() - 1.0) < 5 / np.sqrt(n)
    assert set(np.unique(out)) == {0.0, 2.0}
    assert abs((out == 0).mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / n)


def test_alpha_dropout_keeps_selu_mean_and_variance():
    x = np.random.default_rng(1).standard_normal((64, WIDE)).astype(np.float32)
    out = np.asarray(MCAlphaDropout(0.2)(x))
    # The affine correction makes E = 0 and Var = 1 for standard-normal inputs. With 262k values
    # the standard error of the mean is ~0.002 and of the variance ~0.004 (heavier tail from the
    # saturation value): 0.02 is 5-10 SE.
    assert abs(out.mean()) < 0.02
    assert abs(out.var() - 1.0) < 0.02
    assert not np.array_equal(out, np.asarray(MCAlphaDropout(0.2)(x)))


def test_mask_inputs_and_dropout_off():
    layer = MCDropout(0.5, name="mc")
    x = np.ones((2, 64), np.float32)
    keep = np.zeros((2, 64), np.float32)
    keep[:, ::2] = 1
    with mask_inputs({"mc": tf.constant(keep)}):
        np.testing.assert_array_equal(np.asarray(layer(x)), keep * 2)
    with dropout_off():
        np.testing.assert_array_equal(np.asarray(layer(x)), x)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.2", True])
def test_bad_rate_is_a_keras_style_error(rate):
    with pytest.raises(ValueError, match=r"Invalid value received for argument `rate`\. Expected .* Received: rate="):
        MCDropout(rate)


@pytest.mark.parametrize("layer_cls", [MCSpatialDropout1D, MCSpatialDropout2D, MCSpatialDropout3D])
def test_bad_data_format(layer_cls):
    with pytest.raises(InvalidArgumentError,
                       match="Expected 'channels_last' or 'channels_first'. Received: data_format='nhwc'"):
        layer_cls(0.1, data_format="nhwc")


def _model_with_all_layers():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = MCSpatialDropout2D(0.2, name="sd")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="selu")(x)
    x = MCAlphaDropout(0.1, name="ad")(x)
    x = MCDropout(0.3, name="d")(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_save_and_load_round_trip(tmp_path):
    model = _model_with_all_layers()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the layers are registered
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert {layer.name: layer.get_config()["rate"] for layer in loaded.layers if hasattr(layer, "rate")} == {
        "sd": 0.2, "ad": 0.1, "d": 0.3}
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    with dropout_off():
        np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)


def _model_with_new_layers():
    """Drop path, a broadcast noise_shape and the 1D/3D spatial twins, in one model."""
    inputs = keras.Input((6, 6, 6, 2))
    h = keras.layers.Conv3D(8, 3, padding="same")(inputs)
    h = MCSpatialDropout3D(0.2, name="sd3")(h)
    h = keras.layers.Reshape((36, 48))(h)
    h = keras.layers.Conv1D(8, 3, padding="same")(h)
    h = MCSpatialDropout1D(0.25, name="sd1")(h)
    h = MCDropout(0.1, noise_shape=(None, 1, None), name="per_step")(h)
    branch = keras.layers.Conv1D(8, 1)(h)
    h = keras.layers.Add()([h, MCDropout(0.3, noise_shape=(None, 1, 1), name="drop_path")(branch)])
    h = MCAlphaDropout(0.05, noise_shape=(None, 1, 8), name="alpha")(h)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, outputs)


def test_noise_shape_and_1d_3d_layers_save_and_load(tmp_path):
    model = _model_with_new_layers()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # no custom_objects: the layers are registered
    got = {layer.name: layer.get_config() for layer in loaded.layers if isinstance(layer, MC_LAYERS)}
    assert got == {layer.name: layer.get_config() for layer in model.layers if isinstance(layer, MC_LAYERS)}
    assert got["drop_path"]["noise_shape"] == [None, 1, 1] and got["alpha"]["noise_shape"] == [None, 1, 8]
    assert loaded.get_layer("per_step").noise_shape == (None, 1, None)
    assert type(loaded.get_layer("sd1")) is MCSpatialDropout1D and type(loaded.get_layer("sd3")) is MCSpatialDropout3D
    x = np.random.default_rng(0).random((2, 6, 6, 6, 2), dtype=np.float32)
    with dropout_off():
        np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)
    # Loaded layers still draw: the drop-path layer decides per sample on 64 samples.
    h = np.asarray(loaded.get_layer("drop_path")(np.ones((64, 5, 8), np.float32))).reshape(64, -1)
    assert np.all(h.min(axis=1) == h.max(axis=1)) and 0 < (h[:, 0] == 0).sum() < 64


def test_get_config_from_config():
    for layer in (MCDropout(0.25), MCAlphaDropout(0.05), MCSpatialDropout2D(0.5, data_format="channels_first"),
                  MCDropout(0.2, noise_shape=(None, 1, 1, 1)), MCAlphaDropout(0.1, noise_shape=[None, 1, 4]),
                  MCSpatialDropout1D(0.3), MCSpatialDropout3D(0.4, data_format="channels_first")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        assert getattr(clone, "noise_shape", None) == getattr(layer, "noise_shape", None)


@pytest.mark.parametrize("make, shape", [(_model_with_all_layers, (8, 8, 3)), (_model_with_new_layers, (6, 6, 6, 2))])
def test_converts_with_builtin_ops_only(tmp_path, make, shape):
    """Models using every MC layer convert with TFLITE_BUILTINS only (no Flex) and stay random."""
    from ai_edge_litert.interpreter import Interpreter

    model = make()
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, input_signature=[tf.TensorSpec([None, *shape], tf.float32)])
    archive.write_out(str(tmp_path / "sm"))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # With only TFLITE_BUILTINS allowed, conversion raises if any op would need Flex.
    blob = converter.convert()
    runner = Interpreter(model_content=blob).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    outs = [next(iter(runner(**{name: x}).values())) for _ in range(2)]
    assert not np.array_equal(outs[0], outs[1])


def test_keep_decisions_are_independent_and_at_the_rate():
    """Each unit draws its own decision: columns do not correlate, and each drops at the rate."""
    n, width, rate = 4000, 128, 0.3
    keep = np.asarray(MCDropout(rate)(np.ones((n, width), np.float32))) > 0
    # Pairs of units j, j + 64. For independent Bernoulli columns the sample correlation
    # has standard error 1/sqrt(n) ~ 0.016; 5 SE = 0.08 bounds every one of the 64 pairs.
    a, b = keep[:, :64].astype(float), keep[:, 64:].astype(float)
    corr = ((a - a.mean(0)) * (b - b.mean(0))).mean(0) / (a.std(0) * b.std(0))
    assert np.all(np.abs(corr) < 0.08)
    # The drop rate holds per column too (SE sqrt(0.21 / 4000) ~ 0.007; 5 SE = 0.036).
    assert np.all(np.abs((~keep).mean(0) - rate) < 0.036)
