"""Training recipes: the seed's configurations, built as specified; 1cycle against its definition."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train

keras = pytest.importorskip("keras", reason="recipes need the [train] extra (TensorFlow)")

from edgekit import recipes
from edgekit.layers import MCAlphaDropout, MCDropout


def _kinds(model):
    return [type(layer).__name__ for layer in model.layers[1:]]  # skip the InputLayer


def test_book_is_the_seed_model_with_mc_layers():
    model = recipes.book(mean=0.25, std=0.5)
    assert _kinds(model) == ["Rescaling", "Flatten", "MCDropout", "Dense", "MCDropout", "Dense", "MCDropout", "Dense"]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [300, 100, 10]
    assert [d.get_config()["activation"] for d in dense] == ["elu", "elu", "softmax"]
    assert all(d.get_config()["kernel_initializer"]["class_name"] == "HeNormal" for d in dense[:2])
    assert all(layer.rate == 0.2 for layer in model.layers if isinstance(layer, MCDropout))
    # The Rescaling layer standardizes: 0.25 -> 0, 0.75 -> 1.
    out = np.asarray(model.get_layer("standardize")(np.array([[0.25, 0.75]], np.float32)))
    np.testing.assert_allclose(out, [[0.0, 1.0]], atol=1e-6)


def test_default_dnn_table_11_3():
    shallow = recipes.default_dnn(hidden=(32, 16, 8), mc_layers=1, l2=1e-4, max_norm=1.0)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in shallow.layers)
    assert [layer.name for layer in shallow.layers if isinstance(layer, MCDropout)] == ["mc_dropout_2"]
    dense = shallow.get_layer("dense_0")
    assert dense.kernel_constraint.max_value == 1.0
    assert dense.kernel_regularizer.l2 == pytest.approx(1e-4)
    deep = recipes.default_dnn(hidden=(16,) * 5, mc_layers=3, l1=1e-5)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in deep.layers) == 5
    assert sum(isinstance(layer, MCDropout) for layer in deep.layers) == 3
    assert deep.get_layer("dense_0").kernel_regularizer.l1 == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="Expected `mc_layers` between 0 and the number of hidden layers"):
        recipes.default_dnn(hidden=(8,), mc_layers=2)


def test_self_normalizing_table_11_4():
    model = recipes.self_normalizing(hidden=(32, 32, 32), mc_layers=2)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]
    assert all(d.get_config()["activation"] == "selu" for d in dense)
    assert all(d.get_config()["kernel_initializer"]["class_name"] == "LecunNormal" for d in dense)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert sum(isinstance(layer, MCAlphaDropout) for layer in model.layers) == 2


def test_unknown_recipe():
    with pytest.raises(ValueError, match="Expected one of book, default, selu. Received: 'resnet'"):
        recipes.build("resnet")


def _one_cycle_reference(step, steps, max_rate):
    # The chapter's OneCycleScheduler, step by step, in plain Python.
    start, last = max_rate / 10, max_rate / 10 / 1000
    last_steps = steps // 10 + 1
    half = (steps - last_steps) // 2

    def interp(i1, i2, r1, r2):
        return (r2 - r1) * (step - i1) / (i2 - i1) + r1

    if step < half:
        return interp(0, half, start, max_rate)
    if step < 2 * half:
        return interp(half, 2 * half, max_rate, start)
    return max(interp(2 * half, steps, start, last), last)


@pytest.mark.parametrize("steps", [100, 1001])
def test_one_cycle_follows_its_definition(steps):
    schedule = recipes.OneCycle(steps, max_rate=0.05)
    for step in list(range(0, steps + 20, 7)) + [0, (steps - steps // 10 - 1) // 2, steps - 1, steps]:
        assert float(schedule(step)) == pytest.approx(_one_cycle_reference(step, steps, 0.05), rel=1e-5)
    rates = [float(schedule(s)) for s in range(steps)]
    assert max(rates) == pytest.approx(0.05, rel=1e-3)  # peaks at max_rate mid-cycle
    # The annihilation phase ends at max_rate / 10,000, 1,000 times below the start.
    assert float(schedule(steps)) == pytest.approx(0.05 / 10_000, rel=1e-4)


def test_one_cycle_round_trips_and_validates():
    schedule = recipes.OneCycle(500, 0.01)
    again = recipes.OneCycle.from_config(schedule.get_config())
    assert float(again(123)) == float(schedule(123))
    with pytest.raises(ValueError, match="Expected `steps` to be an integer >= 2. Received: steps=1"):
        recipes.OneCycle(1, 0.01)


def test_train_learns_a_tiny_task():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    protos = rng.random((3, 6, 6), dtype=np.float32)
    y = rng.integers(0, 3, 900)
    x = np.clip(protos[y] + 0.1 * rng.standard_normal((900, 6, 6)), 0, 1).astype(np.float32)
    model = recipes.default_dnn(input_shape=(6, 6), n_classes=3, hidden=(32, 16), mean=0.5, std=0.3)
    result = recipes.train(model, x, y, epochs=3, validation=200, verbose=0)
    assert result.epochs_run == 3
    # Three well-separated prototypes: chance is 0.33; anything learning reaches > 0.9.
    assert result.val_accuracy > 0.9


def test_small_cnn_has_mc_dropout_in_its_top_two_layers_only():
    model = recipes.small_cnn((16, 16, 1), 4, filters=(8, 8), units=32, rate=0.25)
    kinds = _kinds(model)
    assert kinds.count("Conv2D") == 2 and kinds.count("BatchNormalization") == 2
    assert not any(layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    # Everything up to Flatten is deterministic; the two MC layers sit before the last two Dense layers.
    assert kinds[-5:] == ["Flatten", "MCDropout", "Dense", "MCDropout", "Dense"]
    assert [layer.rate for layer in model.layers if isinstance(layer, MCDropout)] == [0.25, 0.25]
    assert model.output_shape == (None, 4)
