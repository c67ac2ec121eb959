"""MC layers: they sample at inference, keep their statistics, serialize, and convert with builtins only."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

keras = pytest.importorskip("keras", reason="the MC layers need the [train] extra (TensorFlow)")
tf = pytest.importorskip("tensorflow")

from edgekit.layers import MCAlphaDropout, MCDropout, MCSpatialDropout2D, dropout_off, mask_inputs  # noqa: E402

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


@pytest.mark.parametrize("layer", [MCDropout(0.0), MCAlphaDropout(0.0), MCSpatialDropout2D(0.0)])
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
    n = out.size
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


def test_bad_data_format():
    with pytest.raises(ValueError, match="Expected 'channels_last' or 'channels_first'. Received: data_format='nhwc'"):
        MCSpatialDropout2D(0.1, data_format="nhwc")


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


def test_get_config_from_config():
    for layer in (MCDropout(0.25), MCAlphaDropout(0.05), MCSpatialDropout2D(0.5, data_format="channels_first")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_converts_with_builtin_ops_only(tmp_path):
    """A model using all three layers converts with TFLITE_BUILTINS only (no Flex) and stays random."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model_with_all_layers()
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", model.call, input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
    archive.write_out(str(tmp_path / "sm"))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # With only TFLITE_BUILTINS allowed, conversion raises if any op would need Flex.
    blob = converter.convert()
    runner = Interpreter(model_content=blob).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    x = np.random.default_rng(0).random((1, 8, 8, 3), dtype=np.float32)
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
