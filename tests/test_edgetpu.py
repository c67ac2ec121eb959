"""The Edge TPU profile accepts real ReLU models, and says why it refuses an ELU one.

Real conversions for ``coral-edgetpu`` (int8, int8 I/O, masks as inputs, static batches: trunk 1,
head/full 16), run in the stock LiteRT interpreter at those batches, against the float Keras model.
There is no Edge TPU here: the checks are the compiler's documented requirements that edgekit can
see in the file (ops, dtypes, no shape computed at run time, static shapes).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]

tf = pytest.importorskip("tensorflow")
import keras
from ai_edge_litert.interpreter import Interpreter

from edgekit.converters import convert
from edgekit.converters.export import call_model
from edgekit.devices import DeviceFitError, load_profile
from edgekit.layers import MCDropout, mask_inputs
from edgekit.mc import predict as keras_mc_predict
from edgekit.runtime.inspect import dynamic_shape_ops, model_dtypes, model_ops, signature_batches

CORAL = load_profile("coral-edgetpu")
B = CORAL.default_samples  # the static batch of full/head


def _fit(model, x, y, epochs):
    # Trained until confident (max probability ~0.75-0.9 on held-out inputs), so the MC means
    # compared below are far from uniform.
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def relu_mlp(mlp_data):
    """The issue's ReLU MLP: Flatten, Dense 128, MCDropout 0.2, Dense 64, MCDropout 0.2, Dense 10 softmax."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((28, 28), name="x"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(128, activation="relu", name="dense_0"),
        MCDropout(0.2, name="mc_0"),
        keras.layers.Dense(64, activation="relu", name="dense_1"),
        MCDropout(0.2, name="mc_1"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    x, y, _, _ = mlp_data
    return _fit(model, x, y, epochs=2)


@pytest.fixture(scope="module")
def relu_cnn(cnn_data):
    """A small ReLU CNN: Conv2D + BN + ReLU + MaxPool, Flatten, Dense, MCDropout, Dense."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((16, 16, 1), name="x")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(32, activation="relu", name="dense_0")(h)
    h = MCDropout(0.2, name="mc_0")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    x, y, _, _ = cnn_data
    return _fit(keras.Model(inputs, outputs), x, y, epochs=15)


@pytest.fixture(scope="module")
def tpu_files(relu_mlp, relu_cnn, mlp_data, cnn_data):
    # No quantize/stochastic/int8_io/batch given: all four come from the profile.
    return {
        "mlp": (relu_mlp, mlp_data, convert(relu_mlp, device="coral-edgetpu", representative_data=mlp_data[0][:200])),
        "cnn": (relu_cnn, cnn_data, convert(relu_cnn, device="coral-edgetpu", representative_data=cnn_data[0][:200])),
    }


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    return (q.astype(np.float32) - zero) * scale


class _Stock:
    """The file in the stock interpreter, fed int8 at its static batches: trunk at 1, head at B."""

    def __init__(self, tflite: bytes, masks: list[dict]):
        it = Interpreter(model_content=tflite)
        self.trunk, self.head = it.get_signature_runner("trunk"), it.get_signature_runner("head")
        self.trunk_in = self.trunk.get_input_details()["x"]
        self.trunk_out = self.trunk.get_output_details()["features"]
        self.head_in = self.head.get_input_details()
        self.head_out = self.head.get_output_details()["probs"]
        self.masks = masks  # the metadata's mc_layers entries that take a mask input

    def features(self, x1: np.ndarray) -> np.ndarray:
        """Float features of one input (trunk at batch 1)."""
        q = self.trunk(x=_quantize(x1, self.trunk_in))["features"]
        return _dequantize(q, self.trunk_out)

    def head_probs(self, features: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
        """Float probabilities of one head invoke at batch B (0/1 keep-masks fed as their int8 codes)."""
        feed = {"features": _quantize(np.repeat(features, B, axis=0), self.head_in["features"])}
        feed |= {k: _quantize(v, self.head_in[k]) for k, v in masks.items()}
        return _dequantize(self.head(**feed)["probs"], self.head_out)

    def mc(self, x: np.ndarray, samples: int, rng) -> np.ndarray:
        """[samples, N, C] probabilities: T = samples drawn B at a time, numpy keep-masks."""
        out = []
        for i in range(len(x)):
            f = self.features(x[i : i + 1])
            rows = [self.head_probs(f, _draw(self.masks, rng)) for _ in range(samples // B)]
            out.append(np.concatenate(rows))
        return np.stack(out, axis=1)


def _mask_layers(result) -> list[dict]:
    return [m for m in result.metadata["mc_layers"] if m["mask_input"]]


def _draw(layers: list[dict], rng) -> dict[str, np.ndarray]:
    """B rows of 0/1 keep-masks for each mask input."""
    return {m["mask_input"]: (rng.random((B, *m["mask_shape"])) >= m["rate"]).astype(np.float32) for m in layers}


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_relu_models_fit_the_edge_tpu(tpu_files, which):
    _, _, result = tpu_files[which]
    meta = result.metadata
    assert (meta["quantization"]["mode"], meta["quantization"]["io"], meta["stochastic"]) == ("int8", "int8", "mask-input")
    assert meta["batch"] == {"full": B, "trunk": 1, "head": B, "masked": None}
    assert result.report.device == {"name": "coral-edgetpu", "problems": []}
    tflite = result.tflite
    assert signature_batches(tflite) == {"full": B, "trunk": 1, "head": B}
    for sig in ("full", "trunk", "head"):
        ops = model_ops(tflite, sig)
        assert not {"SHAPE", "DEQUANTIZE", "RANDOM_UNIFORM"} & set(ops), (sig, ops)
        assert set(ops) <= set(CORAL.supported_ops), (sig, ops)
        # int32 holds the int8 layers' biases and the reshape's constant shape; no float tensor at all.
        assert set(model_dtypes(tflite, sig)) <= {"int8", "int32"}, (sig, model_dtypes(tflite, sig))
        assert dynamic_shape_ops(tflite, sig) == [], sig  # every shape is known when the file loads
    it = Interpreter(model_content=tflite)
    head = it.get_signature_runner("head").get_input_details()
    layers = _mask_layers(result)
    assert layers and {m["mask_input"] for m in layers} < set(head)  # the masks are inputs ...
    for m in layers:  # ... int8, at the static batch
        name = m["mask_input"]
        assert head[name]["dtype"] == np.int8 and tuple(head[name]["shape"]) == (B, *m["mask_shape"])
    assert it.get_signature_runner("trunk").get_input_details()["x"]["shape"][0] == 1
    assert it.get_signature_runner("full").get_input_details()["x"]["dtype"] == np.int8


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_edge_tpu_file_matches_keras_with_the_same_masks(tpu_files, which):
    model, data, result = tpu_files[which]
    layers = _mask_layers(result)
    stock = _Stock(result.tflite, layers)
    rng = np.random.default_rng(0)
    worst = moved = 0.0
    for x1 in data[2][:4]:
        masks = _draw(layers, rng)
        features = stock.features(x1[None])
        got = stock.head_probs(features, masks)
        with mask_inputs({m["name"]: masks[m["mask_input"]] for m in layers}):
            want = call_model(model, np.repeat(x1[None], B, axis=0))
        worst = max(worst, float(np.abs(got - want).max()))
        kept = stock.head_probs(features, {k: np.ones_like(v) for k, v in masks.items()})
        moved = max(moved, float(np.abs(got - kept).max()))
    # Same masks, so only int8 rounding separates the two. The output is quantized in steps of
    # 1/256 (int8 softmax: 0.002 of rounding at most), and the input, the weights and each int8
    # activation round by half a step of their own scale, which moves a confident softmax by a few
    # output steps (measured: 0.008 for the MLP, 0.012 for the CNN). 0.04 is ~10 output steps.
    assert worst <= 0.04, worst
    assert moved > 0.1, moved  # the bound tells masks apart: dropping units moves outputs far more


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_edge_tpu_mc_means_match_keras_mc_predict(tpu_files, which):
    model, data, result = tpu_files[which]
    x = data[2][:6]
    T = 20 * B  # 320 samples per input, drawn B at a time
    tpu = _Stock(result.tflite, _mask_layers(result)).mc(x, T, np.random.default_rng(1))  # [T, N, C]
    ker = keras_mc_predict(model, x, samples=T).probs
    diff = np.abs(tpu.mean(axis=0) - ker.mean(axis=0))
    # Two independent MC estimates of the same mean (numpy masks here, Keras' own there): their
    # sampling error is measured from the samples themselves (standard error of the difference,
    # T=320 each; at most 0.018 here). 5 SE over 60 class means is ~6e-7 two-sided each (normal),
    # so a false failure is ~4e-5 in all. On top, the int8 bias: the same 0.04 as with identical
    # masks (output step 1/256 plus the rounding of the int8 activations). Measured: at most 2.9 SE.
    se = np.sqrt(tpu.var(axis=0) / T + ker.var(axis=0) / T)
    assert np.all(diff <= 5 * se + 0.04), (diff.max(), (diff / np.maximum(se, 1e-9)).max())
    # Not a vacuous bound: the models are confident (a mean far from uniform) and the samples vary.
    assert ker.mean(axis=0).max() > 0.5 and float(tpu.std(axis=0).max()) > 0.02
    assert (tpu.mean(axis=0).argmax(-1) == ker.mean(axis=0).argmax(-1)).mean() >= 5 / 6


def test_the_elu_book_model_is_refused_with_the_reason(mlp_data):
    from edgekit.recipes import book

    with pytest.raises(DeviceFitError) as e:
        convert(book(), device="coral-edgetpu", representative_data=mlp_data[0][:50])
    text = str(e.value)
    assert "does not fit device 'coral-edgetpu'" in text
    assert "op ELU is not supported on coral-edgetpu: it has no ELU kernel; its activations are RELU," in text
    assert "SHAPE" not in text  # the Flatten exported as a static reshape: ELU is the only real obstacle


def test_explicit_arguments_override_the_profile(relu_mlp, mlp_data):
    # int8 I/O and the static batch are the profile's; a float model is asked for explicitly, so
    # the fit check (float tensors) refuses it, and says so, instead of silently going int8.
    with pytest.raises(DeviceFitError, match="float32 tensors are not supported on coral-edgetpu"):
        convert(relu_mlp, device=CORAL, quantize="float32")
    small = convert(relu_mlp, device="coral-edgetpu", representative_data=mlp_data[0][:64], batch=4)
    assert small.metadata["batch"] == {"full": 4, "trunk": 1, "head": 4, "masked": None}
    assert signature_batches(small.tflite) == {"full": 4, "trunk": 1, "head": 4}


def test_convert_for_the_edge_tpu_with_the_default_evaluation(relu_mlp, mlp_data, tmp_path):
    # `edgekit convert relu.keras -o t.tflite --device coral-edgetpu`, with the report's default
    # evaluation: the fixed-batch file runs its trunk at batch 1, full and head at 16 (the
    # deterministic path pads its last batch), and draws T=100 as 112 samples, of which it keeps 100.
    import json

    from click.testing import CliRunner

    from edgekit.cli import cli
    from edgekit.converters.report import COLLAPSE_POINTS

    relu_mlp.save(tmp_path / "relu.keras")
    x, y, xt, yt = mlp_data
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "t.tflite"
    r = CliRunner().invoke(cli, ["convert", str(tmp_path / "relu.keras"), "-o", str(out), "--device", "coral-edgetpu",
                                 "--data", str(tmp_path / "data.npz"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    acc = report["accuracy"]
    assert (acc["n"], acc["samples"], acc["tflite"]["strategy"]) == (len(xt), 100, "trunk+head")  # 300 test inputs
    assert report["device"] == {"name": "coral-edgetpu", "problems": []}
    # The int8 file against the float model, both MC means of 100 samples: within the collapse
    # threshold (2 points, 6 of the 300 inputs), and the same for dropout off (mask-input files feed
    # the expected keep-masks; here through `full` at its static batch of 16, 300 = 18 x 16 + 12).
    assert acc["mc_accuracy_delta_points"] > -COLLAPSE_POINTS, acc
    det = acc["tflite"]["deterministic_accuracy"]
    assert det is not None and abs(det - acc["keras"]["deterministic_accuracy"]) <= COLLAPSE_POINTS / 100, acc
    assert acc["keras"]["mc_accuracy"] > 0.5  # a trained model: the comparison is not between two coin flips


def test_the_report_evaluates_the_edge_tpu_cnn(tpu_files):
    from edgekit.converters import evaluate
    from edgekit.converters.report import COLLAPSE_POINTS

    model, (_, _, xt, yt), result = tpu_files["cnn"]
    report = evaluate(result, model, xt[:50], yt[:50], samples=20)  # 20 = 16 + 4 of a second batch of 16
    acc = report.accuracy
    assert acc["samples"] == 20 and acc["tflite"]["strategy"] == "trunk+head"
    # 50 inputs: one flip is 2 points, so the collapse threshold allows one (the int8 rounding of a
    # confident CNN moves its outputs by ~0.012, enough to flip an input near a tie, not several).
    assert acc["mc_accuracy_delta_points"] >= -COLLAPSE_POINTS, acc
    assert acc["tflite"]["deterministic_accuracy"] is not None
