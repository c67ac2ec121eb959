"""``edgekit convert`` and ``edgekit sparsify`` through click's CliRunner: exit codes and messages.

Real models saved as ``.keras`` files and small synthetic ``.npz`` data (no dataset needed).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.train]

tf = pytest.importorskip("tensorflow")
import keras

from edgekit.cli import cli
from edgekit.devices import PROFILE_DIR
from edgekit.layers import MCDropout
from edgekit.runtime.metadata import read_metadata, verify_integrity


@keras.saving.register_keras_serializable(package="edgekit_tests")
class Svd(keras.layers.Layer):
    """Singular values: no TFLite builtin op computes them (an unsupported layer)."""

    def call(self, x):
        return tf.linalg.svd(tf.reshape(x, [-1, 4, 4]), compute_uv=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_mlp, mlp_data):
    d = tmp_path_factory.mktemp("cli")
    tiny_mlp.save(d / "mlp.keras")
    x, y, xt, yt = mlp_data
    np.savez(d / "data.npz", x_train=x[:200], y_train=y[:200], x_test=xt[:60], y_test=yt[:60])
    np.savez(d / "nan.npz", x_train=np.full((10, 28, 28), np.nan, np.float32), x_test=xt[:5], y_test=yt[:5])
    np.savez(d / "shape.npz", x_train=np.zeros((10, 27, 27), np.float32), x_test=xt[:5], y_test=yt[:5])
    (d / "notes.txt").write_text("not a model")
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    plain.save(d / "plain.keras")
    inputs = keras.Input((16,))
    out = keras.layers.Dense(3, activation="softmax")(Svd()(MCDropout(0.2)(keras.layers.Dense(16)(inputs))))
    keras.Model(inputs, out).save(d / "svd.keras")
    lam = keras.Sequential([keras.Input((4,)), MCDropout(0.2), keras.layers.Lambda(lambda t: t * 2),
                            keras.layers.Dense(2, activation="softmax")])
    lam.save(d / "lambda.keras")
    relu = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             MCDropout(0.2), keras.layers.Dense(10, activation="softmax")])
    relu.save(d / "relu.keras")
    seq = keras.Sequential([keras.Input((64, 3)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                            MCDropout(0.2), keras.layers.Dense(3, activation="softmax")])
    seq.save(d / "seq.keras")
    return d


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_convert_writes_a_verified_file_and_json_report(files):
    out, rep = files / "m.tflite", files / "m.json"
    r = run("convert", files / "mlp.keras", "-o", out, "--quantize", "int8", "--data", files / "data.npz",
            "--calibration-examples", 50, "--examples", 40, "--samples", 5, "--report", rep, "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert printed == json.loads(rep.read_text())
    assert printed["quantization"] == "int8" and printed["accuracy"]["n"] == 40
    data = out.read_bytes()
    assert verify_integrity(data) and read_metadata(data)["quantization"]["mode"] == "int8"
    assert not list(files.glob(".m.tflite.*.tmp"))  # atomic write left no temporary file


def test_convert_table_for_people(files):
    r = run("convert", files / "mlp.keras", "-o", files / "t.tflite", "--data", files / "data.npz",
            "--examples", 20, "--samples", 3, "--class-names", ",".join("abcdefghij"))
    assert r.exit_code == 0, r.output
    # The file's signature defs in its own (alphabetical) order, `masked` included (unseeded in-graph).
    assert "signatures       full(x), head(features), masked(features, mask_0, mask_1), trunk(x)" in r.stdout
    assert "MC acc" in r.stdout
    assert read_metadata((files / "t.tflite").read_bytes())["outputs"][0]["class_names"] == list("abcdefghij")


def _error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    "model, extra, message",
    [
        ("notes.txt", [], "not a zip"),
        ("lambda.keras", [], "Lambda"),
        ("svd.keras", [], "convert to TFLite builtin ops"),
        ("mlp.keras", ["--quantize", "int8", "--data", "nan.npz"], "Expected finite values"),
        ("mlp.keras", ["--quantize", "int8", "--data", "shape.npz"], "Expected `representative_data` of shape"),
        ("mlp.keras", ["--device", "coral-edgetpu"], "does not fit device 'coral-edgetpu'"),
        ("mlp.keras", ["--device", "no-such-device"], "no-such-device"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(files, model, extra, message):
    extra = [str(files / e) if e.endswith(".npz") else e for e in extra]
    r = run("convert", files / model, "-o", files / "bad.tflite", "--examples", 0, *extra)
    assert r.exit_code == 1, r.output
    assert message.lower() in _error(r).lower()
    assert not (files / "bad.tflite").exists()


def test_device_defaults_are_the_library_ones(files, mlp_data):
    # The CLI and convert(device=...) apply the same rule (edgekit.devices.conversion_settings).
    from edgekit.converters import convert
    from edgekit.devices import conversion_settings, load_profile
    from edgekit.runtime.inspect import signature_batches

    out = files / "tpu.tflite"
    r = run("convert", files / "relu.keras", "-o", out, "--device", "coral-edgetpu", "--data", files / "data.npz",
            "--calibration-examples", 50, "--examples", 0)
    assert r.exit_code == 0, r.output
    assert "device           coral-edgetpu: fits" in r.stdout
    cli = read_metadata(out.read_bytes())
    model = keras.models.load_model(files / "relu.keras", compile=False)
    lib = convert(model, device="coral-edgetpu", representative_data=mlp_data[0][:50]).metadata
    settings = conversion_settings(load_profile("coral-edgetpu"))
    for meta in (cli, lib):
        assert (meta["quantization"]["mode"], meta["quantization"]["io"], meta["stochastic"]) == (
            settings.quantize, "int8" if settings.int8_io else "float32", settings.stochastic)
        assert meta["batch"] == {"full": settings.batch, "trunk": 1, "head": settings.batch, "masked": None}
    assert signature_batches(out.read_bytes()) == {"full": 16, "head": 16, "trunk": 1}


def test_convert_device_checks_the_tensor_arena(files):
    text = (PROFILE_DIR / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "tiny-board"')
    text = text.replace("ram_bytes = 4294967296", "ram_bytes = 100000").replace(
        'default_quantization = "int8"', 'default_quantization = "float32"')
    (files / "tiny.toml").write_text(text)
    r = run("convert", files / "relu.keras", "-o", files / "tiny.tflite", "--device", files / "tiny.toml",
            "--examples", 0)
    assert r.exit_code == 1, r.output
    assert "does not fit device 'tiny-board'" in _error(r) and "tiny-board has 100,000 bytes of RAM" in _error(r)
    assert not (files / "tiny.tflite").exists()


def test_output_equal_to_input_is_refused(files):
    before = (files / "mlp.keras").read_bytes()
    r = run("convert", files / "mlp.keras", "-o", files / "mlp.keras")
    assert r.exit_code == 1 and "Refusing to overwrite an input" in _error(r)
    assert (files / "mlp.keras").read_bytes() == before


def test_usage_errors_exit_2(files):
    assert run("convert", files / "mlp.keras", "-o", files / "u.tflite", "--quantize", "int4").exit_code == 2
    r = run("convert", files / "mlp.keras", "-o", files / "u.tflite", "--int8-io")
    assert r.exit_code == 2 and "--int8-io needs --quantize int8" in r.stderr
    for command in ("convert", "sparsify"):  # a missing input file is a usage error, before any work
        r = run(command, files / "missing.keras", "-o", files / "u.keras")
        assert r.exit_code == 2 and "does not exist" in r.stderr, r.output
    r = run("convert", files / "mlp.keras", "-o", files / "u.tflite", "--data", files / "missing.npz")
    assert r.exit_code == 2 and "Expected 'fashion-mnist' or an existing .npz file" in r.stderr


def test_int8_without_data_on_a_model_fashion_mnist_does_not_fit(files):
    # Input (64, 3): the default data (28x28 images) must not be used, and calibration needs inputs.
    r = run("convert", files / "seq.keras", "-o", files / "seq.tflite", "--quantize", "int8")
    assert r.exit_code == 2, r.output
    assert "calibrates on training inputs" in r.stderr and "--data FILE.npz" in r.stderr
    assert "x_train of shape (n, 64, 3)" in r.stderr
    assert not (files / "seq.tflite").exists()
    # float32 needs no calibration: it converts, and says why the report has no accuracy part.
    r = run("convert", files / "seq.keras", "-o", files / "seq.tflite")
    assert r.exit_code == 0, r.output
    assert "Warning: the report has no accuracy part" in r.stderr and "MC acc" not in r.stdout
    # With the data given explicitly, Fashion-MNIST that does not fit is a library error naming the model.
    r = run("convert", files / "seq.keras", "-o", files / "seq8.tflite", "--quantize", "int8", "--data", "fashion-mnist")
    assert r.exit_code == 1 and "Expected data that fits the model (input (64, 3), 3 classes)" in _error(r)


def test_model_without_mc_layer_converts_with_a_warning(files):
    r = run("convert", files / "plain.keras", "-o", files / "plain.tflite", "--examples", 0)
    assert r.exit_code == 0, r.output
    assert "Warning: the model has no MC layer" in r.stderr


def test_sparsify_cli_prunes_and_reports(files):
    out = files / "sparse.keras"
    r = run("sparsify", files / "mlp.keras", "-o", out, "--target", 0.5, "--epochs", 1,
            "--data", files / "data.npz", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [layer["name"] for layer in report["layers"]] == ["dense_0", "dense_1", "probs"]
    assert all(abs(layer["sparsity"] - 0.5) < 0.01 for layer in report["layers"])  # rounding of k per kernel
    assert zipfile.is_zipfile(out)
    model = keras.models.load_model(out, compile=False)
    kernel = model.get_layer("dense_0").kernel.numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.01)


def test_every_command_has_help():
    for name in ("convert", "sparsify"):
        r = run(name, "--help")
        assert r.exit_code == 0 and "Example" in r.output
