"""edgekit.mc: to_mc keeps weights exactly; predict is the seed's MC estimate, batched."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

keras = pytest.importorskip("keras", reason="edgekit.mc needs the [train] extra (TensorFlow)")

from edgekit import mc
from edgekit.errors import UnsupportedModelError
from edgekit.layers import (
    MC_LAYERS,
    MCAlphaDropout,
    MCDropout,
    MCSpatialDropout1D,
    MCSpatialDropout2D,
    MCSpatialDropout3D,
)


def _plain_functional():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.SpatialDropout2D(0.2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(96, activation="selu")(x)
    x = keras.layers.AlphaDropout(0.1)(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_to_mc_functional_replaces_layers_and_keeps_weights_exactly():
    keras.utils.set_random_seed(0)
    model = _plain_functional()
    new = mc.to_mc(model)
    kinds = [type(layer) for layer in new.layers]
    assert MCSpatialDropout2D in kinds and MCAlphaDropout in kinds and MCDropout in kinds
    assert not any(type(layer) in (keras.layers.Dropout, keras.layers.AlphaDropout) for layer in new.layers)
    assert [layer.name for layer in new.layers[1:]] == [layer.name for layer in model.layers[1:]]
    for a, b in zip(model.get_weights(), new.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # exact, not approximate
    # The original is untouched, and with dropout off both compute the same function.
    assert any(type(layer) is keras.layers.Dropout for layer in model.layers)
    x = np.random.default_rng(0).random((4, 8, 8, 2), dtype=np.float32)
    np.testing.assert_allclose(mc.predict_deterministic(new, x), model.predict(x, verbose=0), rtol=1e-5, atol=1e-7)


def test_to_mc_sequential_and_rates():
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(64), keras.layers.Dropout(0.25),
                              keras.layers.Dense(3)])
    new = mc.to_mc(model)
    assert isinstance(new, keras.Sequential)
    assert [(type(layer).__name__, getattr(layer, "rate", None)) for layer in new.layers] == [
        ("Dense", None), ("MCDropout", 0.25), ("Dense", None)]
    assert mc.has_mc_layers(new) and not mc.has_mc_layers(model)


def test_to_mc_keeps_noise_shape_and_maps_spatial_1d_3d():
    inputs = keras.Input((6, 4, 4, 8))
    v = keras.layers.SpatialDropout3D(0.2, data_format="channels_first", name="sd3")(inputs)
    h = keras.layers.Reshape((16, 18))(keras.layers.Conv3D(3, 1)(v))
    h = keras.layers.SpatialDropout1D(0.3, name="sd1")(h)
    branch = keras.layers.Dropout(0.1, noise_shape=(None, 1, 1), name="drop_path")(keras.layers.Conv1D(18, 1)(h))
    h = keras.layers.Add()([h, branch])
    # Keras' own docstring example puts the training batch size in noise_shape: MC samples still each draw.
    h = keras.layers.Dropout(0.2, noise_shape=(32, 1, 18), name="per_step")(h)
    h = keras.layers.AlphaDropout(0.05, noise_shape=(None, 16, 1), name="alpha")(h)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(h))
    new = mc.to_mc(keras.Model(inputs, outputs))
    got = {layer.name: (type(layer), layer.rate, getattr(layer, "noise_shape", None), getattr(layer, "data_format", None))
           for layer in new.layers if isinstance(layer, MC_LAYERS)}
    assert got == {
        "sd3": (MCSpatialDropout3D, 0.2, None, "channels_first"),
        "sd1": (MCSpatialDropout1D, 0.3, None, "channels_last"),
        "drop_path": (MCDropout, 0.1, (None, 1, 1), None),
        "per_step": (MCDropout, 0.2, (None, 1, 18), None),
        "alpha": (MCAlphaDropout, 0.05, (None, 16, 1), None),
    }
    # The twin of the drop path decides per sample: 64 samples, each kept or dropped whole.
    out = np.asarray(new.get_layer("drop_path")(np.ones((64, 16, 18), np.float32))).reshape(64, -1)
    assert np.all(out.min(axis=1) == out.max(axis=1)) and len({bool(row[0] == 0) for row in out}) == 2


def test_to_mc_refuses_what_it_cannot_rewrite():
    # Keras accepts any noise_shape until training; the MC twin checks it against its input.
    model = keras.Sequential([keras.Input((10, 4)), keras.layers.Dropout(0.2, noise_shape=(None, 3, 4), name="bad"),
                              keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match=r"Expected one entry per input axis \(rank 3\), each None, 1 or "
                       r"the input's size on that axis. Received: noise_shape=\(None, 3, 4\) .*'bad'"):
        mc.to_mc(model)
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        mc.to_mc("model.keras")


def test_predict_matches_the_seed_loop_statistically():
    """Batched MC mean vs the seed's loop of model(x, training=True), within standard errors."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(128, activation="relu"),
                              MCDropout(0.5), keras.layers.Dense(4, activation="softmax")])
    x = np.random.default_rng(2).standard_normal((3, 20)).astype(np.float32)
    t = 400
    fast = mc.predict(model, x, samples=t)
    assert fast.probs.shape == (t, 3, 4)
    np.testing.assert_allclose(fast.probs.sum(-1), 1.0, atol=1e-5)
    loop = np.stack([np.asarray(model(x, training=True)) for _ in range(t)])
    # Two independent MC means of T samples each: their difference has std sqrt(2) * std / sqrt(T).
    # 5 such standard errors (plus 1e-3 for classes whose std is ~0) bounds it without flakiness.
    se = np.sqrt(fast.std**2 / t + loop.std(0) ** 2 / t)
    assert np.all(np.abs(fast.mean - loop.mean(0)) <= 5 * se + 1e-3)
    assert np.all(fast.std > 0)  # dropout was active at inference


def test_predict_rejects_bad_arguments():
    model = keras.Sequential([keras.Input((2,)), MCDropout(0.1), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Expected `samples` to be an integer >= 1. Received: samples=0"):
        mc.predict(model, np.zeros((1, 2)), samples=0)
    with pytest.raises(ValueError, match=r"Expected a non-empty batch of inputs. Received: shape \(0, 2\)"):
        mc.predict(model, np.zeros((0, 2)), samples=3)
