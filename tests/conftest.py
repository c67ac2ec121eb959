"""Shared, session-scoped tiny models and data for the converter tests.

Everything is small and synthetic (no dataset files, no downloads) and seeded. The models are
trained for a few seconds on a separable synthetic task so that accuracy checks mean something;
they are built *after* ``keras.utils.set_random_seed(0)`` on purpose: the export must stay
unseeded anyway.

Fixtures that need TensorFlow import it inside the fixture, so the runtime and device tests (which
must pass without TensorFlow) can share this file.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__all__: list[str] = []

N_CLASSES = 10
IMG = (16, 16, 1)


def _synthetic(n: int, shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # Ten fixed random prototypes in [0, 1] plus noise: learnable in one or two epochs.
    protos = np.random.default_rng(1234).random((N_CLASSES, *shape), dtype=np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = np.clip(protos[y] + 0.35 * rng.standard_normal((n, *shape)).astype(np.float32), 0.0, 1.0)
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def mlp_data():
    """(x_train, y_train, x_test, y_test) with 28x28 inputs in [0, 1]."""
    x, y = _synthetic(1200, (28, 28), seed=0)
    xt, yt = _synthetic(300, (28, 28), seed=1)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def cnn_data():
    x, y = _synthetic(800, IMG, seed=2)
    xt, yt = _synthetic(200, IMG, seed=3)
    return x, y, xt, yt


def _fit(model, x, y, epochs):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def tiny_mlp(mlp_data):
    """28x28 -> Flatten -> Dense(64) -> MC -> Dense(64) -> MC -> Dense(10, softmax), trained."""
    import keras

    from edgekit.layers import MCDropout

    keras.utils.set_random_seed(0)  # as a user would; the export must ignore it
    model = keras.Sequential(
        [
            keras.Input((28, 28), name="x"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="dense_0"),
            MCDropout(0.2, name="mc_0"),
            keras.layers.Dense(64, activation="elu", name="dense_1"),
            MCDropout(0.2, name="mc_1"),
            keras.layers.Dense(N_CLASSES, activation="softmax", name="probs"),
        ],
        name="tiny_mlp",
    )
    x, y, _, _ = mlp_data
    return _fit(model, x, y, epochs=3)


@pytest.fixture(scope="session")
def tiny_cnn(cnn_data):
    """(Conv+BN+ReLU) x2 -> Flatten -> MC -> Dense(64) -> MC -> Dense(10): MC in the top two layers."""
    import keras

    from edgekit.recipes import small_cnn

    keras.utils.set_random_seed(0)
    model = small_cnn(IMG, N_CLASSES, filters=(8, 8), units=64, rate=0.2)
    x, y, _, _ = cnn_data
    return _fit(model, x, y, epochs=3)


@pytest.fixture(scope="session")
def converted(tiny_mlp, tiny_cnn, mlp_data, cnn_data):
    """A cache: converted("mlp"|"cnn", quantize, **options) -> ConvertedModel, each converted once."""
    from edgekit.converters import convert

    cache = {}
    models = {"mlp": (tiny_mlp, mlp_data[0]), "cnn": (tiny_cnn, cnn_data[0])}

    def get(which: str, quantize: str = "float32", **options):
        key = (which, quantize, tuple(sorted(options.items())))
        if key not in cache:
            model, x = models[which]
            cache[key] = convert(model, quantize=quantize, representative_data=x[:200], **options)
        return cache[key]

    return get
