"""Bad and hostile ``.keras`` files: each gives one typed, one-line error, and nothing runs or escapes.

Real Keras archives are saved and then damaged by hand (no mocks): truncations, broken JSON, missing
and mismatched weights, a Lambda layer whose payload would create a marker file, zip-slip member
names, and layer classes nobody registered.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import zipfile

import numpy as np
import pytest

pytestmark = pytest.mark.train

keras = pytest.importorskip("keras")

from edgekit.converters.loading import KerasFileError, load_keras_model
from edgekit.layers import MCDropout


def _mlp(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            MCDropout(0.2, name="mc"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("keras_files")
    ok = root / "ok.keras"
    model = _mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # so compile=False is observable
    model.save(ok)
    small = root / "small.keras"
    keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="hidden"), MCDropout(0.2, name="mc")]).save(small)
    return {"root": root, "ok": ok, "small": small}


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _write_zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _fails(path, *fragments: str) -> KerasFileError:
    with pytest.raises(KerasFileError) as info:
        load_keras_model(path)
    message = str(info.value)
    assert "\n" not in message, message  # the CLI prints exactly one line
    assert "Expected" in message and "Received" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_good_file_loads_uncompiled_with_its_weights(saved):
    original = keras.saving.load_model(saved["ok"], compile=False)
    model = load_keras_model(saved["ok"])
    assert isinstance(model, keras.Model)
    assert getattr(model, "optimizer", None) is None  # compile=False, although the file was compiled
    for a, b in zip(original.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(model.layers[1], MCDropout)


def test_error_is_a_value_error():
    assert issubclass(KerasFileError, ValueError)  # library_errors turns ValueError into "Error: ..." exit 1


def test_missing_file_directory_and_device(tmp_path):
    _fails(tmp_path / "nope.keras", "not found")
    _fails(tmp_path, "directory")
    _fails("/dev/null", "regular")


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "empty"), (b"hello, I am a text file\n", "not a zip"), (np.random.default_rng(0).bytes(4096), "not a zip")],
    ids=["empty", "text", "random"],
)
def test_not_a_zip(tmp_path, content, fragment):
    path = tmp_path / "bad.keras"
    path.write_bytes(content)
    _fails(path, fragment)


def test_truncated_archive_at_many_offsets(saved, tmp_path):
    data = saved["ok"].read_bytes()
    path = tmp_path / "cut.keras"
    for cut in (1, 4, 30, 200, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1):
        path.write_bytes(data[:cut])
        _fails(path, "zip")


def test_flipped_byte_in_weights_fails_its_crc(saved, tmp_path):
    data = bytearray(saved["ok"].read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("model.weights.h5")
    # Local header is 30 bytes + name + extra; flip a byte well inside the stored weights.
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    path = tmp_path / "flip.keras"
    path.write_bytes(bytes(data))
    _fails(path, "model.weights.h5", "CRC")


def test_zip_that_is_not_a_keras_archive(tmp_path):
    path = tmp_path / "other.keras"
    _write_zip(path, {"assets/readme.txt": b"hi"})
    _fails(path, "config.json")


@pytest.mark.parametrize(
    "config, fragment",
    [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[1, 2]", "class_name"), (b'{"a": 1}', "class_name")],
    ids=["syntax", "not-utf8", "list", "no-class"],
)
def test_invalid_config_json(saved, tmp_path, config, fragment):
    members = _members(saved["ok"])
    members["config.json"] = config
    path = tmp_path / "json.keras"
    _write_zip(path, members)
    _fails(path, fragment)


def test_missing_weights(saved, tmp_path):
    members = _members(saved["ok"])
    del members["model.weights.h5"]
    path = tmp_path / "noweights.keras"
    _write_zip(path, members)
    _fails(path, "weights")


def test_weights_of_another_model(saved, tmp_path):
    members = _members(saved["ok"])
    members["model.weights.h5"] = _members(saved["small"])["model.weights.h5"]
    path = tmp_path / "mismatch.keras"
    _write_zip(path, members)
    # Keras would otherwise keep the random initial weights of the last Dense layer.
    _fails(path, "weights do not match", "'out'", "Received: 0 variables")


def _rename_class(saved, tmp_path, layer_index: int, **fields) -> os.PathLike:
    members = _members(saved["ok"])
    config = json.loads(members["config.json"])
    config["config"]["layers"][layer_index].update(fields)
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / "unsupported.keras"
    _write_zip(path, members)
    return path


def test_unsupported_layer_unregistered_custom_class(saved, tmp_path):
    path = _rename_class(saved, tmp_path, 1, module="somepkg.layers", class_name="FancyLayer", registered_name="somepkg>FancyLayer")
    _fails(path, "Unsupported layer", "FancyLayer")


def test_unsupported_layer_unknown_keras_class(saved, tmp_path):
    path = _rename_class(saved, tmp_path, 1, class_name="NoSuchLayer")
    _fails(path, "Unsupported layer", "NoSuchLayer")


# --- Lambda payloads -------------------------------------------------------------------------------


@pytest.fixture
def lambda_file(tmp_path):
    """A model whose Lambda layer creates ``marker`` when its Python code runs, and that file."""
    import importlib.util

    marker = tmp_path / "PAYLOAD_RAN"
    # The payload lives in a real source file (Keras reads the lambda's source when saving) and
    # holds the marker path as a constant (Keras cannot reload a lambda with default arguments).
    source = tmp_path / "payload.py"
    source.write_text(f"PAYLOAD = lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]\n")
    spec = importlib.util.spec_from_file_location("edgekit_test_payload", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(module.PAYLOAD)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink()  # building the model above ran the payload once
    return path, marker


def test_lambda_payload_is_live_when_loaded_unsafely(lambda_file):
    # Positive control: without safe mode Keras runs the payload, so the next test can fail.
    path, marker = lambda_file
    keras.saving.load_model(path, compile=False, safe_mode=False)
    assert marker.exists()


def test_lambda_payload_never_runs(lambda_file):
    path, marker = lambda_file
    _fails(path, "Lambda")
    assert not marker.exists()


def test_lambda_refused_even_after_enable_unsafe_deserialization(lambda_file):
    # A process-wide opt-out elsewhere must not turn edgekit's loader unsafe.
    path, marker = lambda_file
    from keras.src.saving import serialization_lib  # only to restore the global afterwards

    keras.config.enable_unsafe_deserialization()
    try:
        _fails(path, "Lambda")
    finally:
        serialization_lib.global_state.set_global_attribute("safe_mode_saving", None)
    assert not marker.exists()


# --- Zip slip ---------------------------------------------------------------------------------------


def _slip_zip(saved, path, name: str, *, symlink: bool = False) -> None:
    members = _members(saved["ok"])
    with zipfile.ZipFile(path, "w") as z:
        for member, data in members.items():
            z.writestr(member, data)
        info = zipfile.ZipInfo(name)
        if symlink:
            info.create_system = 3  # Unix, so the mode bits below are honoured by extractors
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, b"/etc/passwd" if symlink else b"escaped")


@pytest.mark.parametrize(
    "name, symlink, why",
    [
        ("../../escaped.txt", False, "'..'"),
        ("assets/../../escaped.txt", False, "'..'"),
        ("/tmp/edgekit_escaped.txt", False, "absolute"),
        ("C:/escaped.txt", False, "absolute"),
        ("assets\\..\\..\\escaped.txt", False, "backslash"),
        ("assets/link", True, "symbolic link"),
    ],
)
def test_zip_slip_members_are_refused_and_nothing_is_written(saved, tmp_path, monkeypatch, name, symlink, why):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    path = work / "slip.keras"
    _slip_zip(saved, path, name, symlink=symlink)
    before = sorted(p for p in tmp_path.rglob("*"))
    _fails(path, "Unsafe member", why)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not os.path.exists("/tmp/edgekit_escaped.txt")


def test_private_copy_is_cleaned_up(saved, tmp_path, monkeypatch):
    # Keras extracts next to the file it opens; the loader's temporary folder must vanish afterwards.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    load_keras_model(saved["ok"])
    assert list(tmp_path.iterdir()) == []


# --- Through the CLI -------------------------------------------------------------------------------


def _convert(args):
    from click.testing import CliRunner

    from edgekit.cli import cli

    return CliRunner().invoke(cli, ["convert", *map(str, args), "--examples", "0"])


def test_convert_cli_refuses_a_lambda_file_in_one_line(lambda_file, tmp_path):
    path, marker = lambda_file
    out = tmp_path / "out.tflite"
    result = _convert([path, "-o", out])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Lambda" in errors[0], result.output
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "slip", "not-zip"])
def test_convert_cli_bad_archives_exit_1_in_one_line(saved, tmp_path, damage):
    path = tmp_path / f"{damage}.keras"
    data = saved["ok"].read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "slip":
        _slip_zip(saved, path, "../../escaped.txt")
    else:
        path.write_bytes(b"hello")
    out = tmp_path / "out.tflite"
    result = _convert([path, "-o", out])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert not out.exists()
