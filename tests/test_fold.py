"""BatchNorm folding: folded vs unfolded Keras models must compute the same function.

BN statistics are randomized (a freshly built BN is the identity, which would hide mistakes), and
MC layers are switched off with ``dropout_off`` so both sides are deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

pytest.importorskip("tensorflow")
import keras

from edgekit.converters.fold import FoldedBatchNorm, fold_batchnorm
from edgekit.layers import MCDropout, MCSpatialDropout2D, dropout_off


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.5, n).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, n).astype(np.float32))
    return model


def _same_function(a, b, x):
    with dropout_off():
        ya = a(x, training=False).numpy()
        yb = b(x, training=False).numpy()
    # float64 folding, float32 evaluation: only float32 rounding differs (~1e-7 relative per op);
    # atol covers outputs that are ~0 where a relative bound is meaningless.
    np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-6)


def _names(layers):
    return [type(layer).__name__ for layer in layers]


def test_conv_bn_relu_twice_with_mc_layers():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((10, 10, 3))
    h = inputs
    for i in range(2):
        h = keras.layers.Conv2D(6, 3, padding="same", use_bias=(i == 1), name=f"conv_{i}")(h)
        h = keras.layers.BatchNormalization(name=f"bn_{i}")(h)
        h = keras.layers.ReLU()(h)
    h = MCSpatialDropout2D(0.2, name="mc_spatial")(h)
    h = keras.layers.Flatten()(h)
    h = MCDropout(0.3, name="mc")(h)
    outputs = keras.layers.Dense(4, activation="softmax")(h)
    model = _randomize_bn(keras.Model(inputs, outputs))
    folded, report = fold_batchnorm(model)
    assert report.folded == (("conv_0", "bn_0"), ("conv_1", "bn_1")) and report.not_folded == ()
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers) == 0
    assert folded.get_layer("mc").rate == 0.3 and isinstance(folded.get_layer("mc_spatial"), MCSpatialDropout2D)
    _same_function(model, folded, np.random.default_rng(0).random((5, 10, 10, 3), dtype=np.float32))
    # The original is untouched.
    assert isinstance(model.get_layer("bn_0"), keras.layers.BatchNormalization)


def test_dense_bn_and_bn_before_dense_in_a_sequential():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((12,)),
        keras.layers.Dense(16, name="d0"),
        keras.layers.BatchNormalization(name="bn_after"),
        keras.layers.Activation("elu"),
        keras.layers.BatchNormalization(name="bn_before"),
        keras.layers.Dense(8, name="d1"),
        MCDropout(0.2, name="mc"),
        keras.layers.Dense(3, activation="softmax"),
    ])
    _randomize_bn(model)
    folded, report = fold_batchnorm(model)
    assert set(report.folded) == {("d0", "bn_after"), ("d1", "bn_before")}
    assert isinstance(folded.get_layer("bn_before"), FoldedBatchNorm)
    _same_function(model, folded, np.random.default_rng(1).normal(size=(7, 12)).astype(np.float32))


def test_depthwise_conv_bn():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 4))
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(MCDropout(0.1)(h)))
    model = _randomize_bn(keras.Model(inputs, outputs))
    folded, report = fold_batchnorm(model)
    assert report.folded == (("dw", "bn"),)
    _same_function(model, folded, np.random.default_rng(2).random((3, 8, 8, 4), dtype=np.float32))


def test_bn_after_a_nonlinearity_is_reported_not_folded():
    keras.utils.set_random_seed(4)
    inputs = keras.Input((10, 10, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn_relu")(h)  # after conv's ReLU: not affine-composable
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.BatchNormalization(name="bn_pool")(h)  # after a pooling layer, before Flatten
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(h))
    model = _randomize_bn(keras.Model(inputs, outputs))
    folded, report = fold_batchnorm(model)
    assert report.folded == ()
    reasons = dict(report.not_folded)
    assert "follows a non-linearity" in reasons["bn_relu"] and "'relu'" in reasons["bn_relu"]
    assert "MaxPooling2D" in reasons["bn_pool"]
    assert folded is model  # nothing to fold: the model comes back as is


def test_folded_model_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(5)
    model = _randomize_bn(keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
        MCDropout(0.2), keras.layers.Dense(2, activation="softmax"),
    ]))
    folded, _ = fold_batchnorm(model)
    folded.save(tmp_path / "f.keras")
    again = keras.models.load_model(tmp_path / "f.keras")
    _same_function(folded, again, np.ones((2, 6), np.float32))


def test_conv1d_time_series_classifier_folds():
    """Issue 13's time-series classifier: Conv1D + BN + ReLU + GlobalAveragePooling1D + Dropout."""
    from edgekit import mc

    keras.utils.set_random_seed(6)
    model = keras.Sequential([
        keras.Input((50, 3)),
        keras.layers.Conv1D(16, 5, padding="causal", dilation_rate=2, name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(4, activation="softmax"),
    ])
    model = mc.to_mc(_randomize_bn(model))
    folded, report = fold_batchnorm(model)
    assert report.folded == (("conv", "bn"),) and report.not_folded == ()
    _same_function(model, folded, np.random.default_rng(3).normal(size=(6, 50, 3)).astype(np.float32))


@pytest.mark.parametrize("make, shape", [
    (lambda: keras.layers.Conv3D(5, 3, padding="same", use_bias=False, name="lin"), (6, 6, 6, 2)),
    (lambda: keras.layers.Conv2D(6, 3, groups=2, name="lin"), (8, 8, 4)),
    (lambda: keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, name="lin"), (8, 8, 3)),
    (lambda: keras.layers.SeparableConv1D(6, 3, use_bias=False, name="lin"), (12, 3)),
    (lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=3, name="lin"), (12, 4)),
], ids=["conv3d", "grouped-conv2d", "separable2d", "separable1d", "depthwise1d"])
def test_more_linear_layers_absorb_the_batchnorm_after_them(make, shape):
    keras.utils.set_random_seed(7)
    inputs = keras.Input(shape)
    h = keras.layers.BatchNormalization(name="bn")(make()(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(MCDropout(0.2)(h)))
    model = _randomize_bn(keras.Model(inputs, outputs))
    # Random kernels and biases too: a kernel of ones would hide a scale applied to the wrong axis.
    rng = np.random.default_rng(8)
    lin = model.get_layer("lin")
    lin.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in lin.get_weights()])
    folded, report = fold_batchnorm(model)
    assert report.folded == (("lin", "bn"),) and isinstance(folded.get_layer("bn"), FoldedBatchNorm)
    assert folded.get_layer("lin").use_bias  # the BN's shift became the bias
    _same_function(model, folded, rng.random((4, *shape), dtype=np.float32))


def test_bn_after_a_transposed_conv_is_reported():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2DTranspose(4, 3, name="up")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(h)))
    folded, report = fold_batchnorm(model)
    assert folded is model and report.folded == ()
    assert dict(report.not_folded)["bn"] == (
        "follows a Conv2DTranspose layer ('up'), not a Dense, Conv1D/2D/3D, DepthwiseConv1D/2D or "
        "SeparableConv1D/2D layer, and no Dense follows it")


def test_efficientnet_b0_folds_every_batchnorm():
    """keras.applications.EfficientNetB0: its 49 BNs follow linear Conv2D / DepthwiseConv2D layers."""
    from edgekit import mc

    keras.utils.set_random_seed(9)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)
    model = mc.to_mc(_randomize_bn(model))
    folded, report = fold_batchnorm(model)
    assert len(report.folded) == 49 and report.not_folded == ()
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = np.random.default_rng(4).random((2, 32, 32, 3), dtype=np.float32) * 255
    with dropout_off():
        ya, yb = model(x, training=False).numpy(), folded(x, training=False).numpy()
    # 16 blocks of float32 convolutions: rounding grows with depth, so 1e-4 instead of 1e-5.
    np.testing.assert_allclose(yb, ya, rtol=1e-4, atol=1e-5)
