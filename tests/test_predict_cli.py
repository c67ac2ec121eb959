"""`edgekit predict` end to end with CliRunner on the committed fixtures, .npy and image inputs."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.runtime.images import ImageError, decode_image, load_image, resize_bilinear

FIX = Path(__file__).parent / "fixtures"


def _run(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def _png(img: np.ndarray, filters: list[int], color: int) -> bytes:
    """A minimal PNG encoder that applies the given filter type to each row (spec section 9)."""
    h, w, bpp = img.shape
    rows, prev = [], np.zeros(w * bpp, np.int32)
    for y in range(h):
        line = img[y].reshape(-1).astype(np.int32)
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        f = filters[y % len(filters)]
        if f == 0:
            pred = np.zeros_like(line)
        elif f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        rows.append(bytes([f]) + ((line - pred) & 0xFF).astype(np.uint8).tobytes())
        prev = line

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("color, channels", [(0, 1), (2, 3), (4, 2), (6, 4)])
def test_png_of_every_filter_decodes_to_its_pixels(color, channels):
    img = np.random.default_rng(color).integers(0, 256, (9, 7, channels), dtype=np.uint8)
    data = _png(img, filters=[0, 1, 2, 3, 4], color=color)
    want = img[..., : 1 if channels <= 2 else 3]  # alpha dropped
    np.testing.assert_array_equal(decode_image(data, channels=want.shape[-1]), want)


def test_resize_and_normalize(tmp_path):
    img = np.full((24, 24, 1), 200, np.uint8)
    path = tmp_path / "flat.png"
    path.write_bytes(_png(img, [0], color=0))
    x = load_image(path, {"height": 12, "width": 12, "channels": 1, "scale": 1 / 255, "offset": 0.0})
    assert x.shape == (12, 12, 1)
    np.testing.assert_allclose(x, 200 / 255, rtol=1e-6)  # a flat image stays flat after bilinear resize
    ramp = np.arange(4, dtype=np.float32).reshape(1, 4, 1).repeat(2, axis=0)
    np.testing.assert_allclose(resize_bilinear(ramp, 2, 2)[0, :, 0], [0.5, 2.5])  # half-pixel centres


def test_corrupted_png_is_a_clean_error():
    with pytest.raises(ImageError):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, channels=1)


def test_predict_npy_table(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random(20).astype(np.float32))
    res = _run(FIX / "mlp_ingraph.tflite", x, "--samples", "50")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["class", "mean", "std"]
    assert lines[6] == ""  # header, one row per class (5), blank line, summary
    assert lines[1].endswith(" <")  # the first row (highest mean) is the predicted class
    assert "samples: 50" in res.output and "mutual information" in res.output


def test_predict_batch_json(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((3, 20)).astype(np.float32))
    res = _run(FIX / "mlp_mask.tflite", x, "--samples", "20", "--seed", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["stochastic"] == "mask-input" and out["verified"] is True
    assert len(out["predictions"]) == 3 and {p["samples"] for p in out["predictions"]} == {20}
    assert abs(sum(out["predictions"][0]["mean"]) - 1) < 1e-5  # float32 softmax rounding


@pytest.mark.parametrize("name, warned", [
    ("mlp_twin", False),  # in-graph with a `masked` signature: the runtime draws the masks
    ("mlp_mask", False),  # mask-input: the runtime draws the masks
    ("mlp_ingraph", True),  # in-graph without `masked`: the file's RANDOM_UNIFORM draws them
    ("mlp_seeded", True),  # seeded in-graph: the file's seed decides
])
def test_seed_warns_only_when_the_file_draws_its_own_masks(tmp_path, name, warned):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((2, 20)).astype(np.float32))
    res = _run(FIX / f"{name}.tflite", x, "--samples", "20", "--seed", "3", "--json")
    assert res.exit_code == 0, res.output
    assert ("--seed only affects models whose masks the runtime draws" in res.stderr) == warned, res.stderr
    if not warned:  # the seed reaches the numpy generator: the same masks again
        again = _run(FIX / f"{name}.tflite", x, "--samples", "20", "--seed", "3", "--json")
        means = [[p["mean"] for p in json.loads(r.stdout)["predictions"]] for r in (res, again)]
        assert means[0] == means[1]


def test_predict_png_on_image_model(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(_png(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8), [1, 4], color=2))
    res = _run(FIX / "cnn_ingraph.tflite", path, "--samples", "10", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["class_names"] == ["up", "down", "left", "right"]


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("JPEG", ".jpeg"), ("WEBP", ".webp"), ("BMP", ".bmp")])
def test_predict_reads_jpeg_webp_and_bmp(tmp_path, fmt, suffix):
    import io

    from PIL import Image

    img = np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt)
    path = tmp_path / f"img{suffix}"
    path.write_bytes(buf.getvalue())
    res = _run(FIX / "cnn_ingraph.tflite", path, "--samples", "10", "--json")
    assert res.exit_code == 0, res.output
    assert abs(sum(json.loads(res.output)["predictions"][0]["mean"]) - 1) < 1e-5  # float32 softmax rounding


def test_predict_refuses_other_suffixes(tmp_path):
    path = tmp_path / "img.gif"
    path.write_bytes(b"GIF89a")
    res = _run(FIX / "cnn_ingraph.tflite", path)
    assert res.exit_code == 1
    assert res.stderr.strip() == ("Error: Unsupported input file. Expected .npy or an image (.png, .jpg, .jpeg, .webp, "
                                  ".bmp). Received: 'img.gif'")


def test_usage_and_library_errors(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 7), np.float32))
    res = _run(FIX / "mlp_ingraph.tflite", x, "--samples", "5", "--budget-ms", "2")
    assert res.exit_code == 2 and "exclusive" in res.output
    res = _run(FIX / "mlp_ingraph.tflite", x)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith("Error: Input has the wrong shape. Expected (20,)")
    res = _run(FIX / "mlp_ingraph.tflite", x, "--budget-ms", "-1")
    assert res.exit_code == 2 and "-1.0 is not in the range x>0" in res.output
    png = tmp_path / "a.png"
    png.write_bytes(_png(np.zeros((4, 4, 1), np.uint8), [0], color=0))
    res = _run(FIX / "mlp_ingraph.tflite", png)
    assert res.exit_code == 1 and "does not take images" in res.output
    res = _run(FIX / "mlp_ingraph.tflite", tmp_path / "missing.npy")
    assert res.exit_code == 2


def test_predict_refuses_a_crashing_model_and_survives(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(20, np.float32))
    res = _run(FIX / "crash_segv.tflite", x)
    assert res.exit_code == 1 and "killed by SIGSEGV" in res.output


def test_predict_has_help():
    res = CliRunner().invoke(cli, ["predict", "--help"])
    assert res.exit_code == 0 and "--budget-ms" in res.output and "Examples" in res.output


def test_predict_runs_with_tensorflow_and_keras_unimportable(tmp_path):
    # What a base install (no [train] extra) sees: importing tensorflow or keras fails.
    import subprocess
    import sys

    x = tmp_path / "x.npy"
    np.save(x, np.zeros(20, np.float32))
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'):\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgekit.cli import cli\n"
        f"cli(['predict', {str(FIX / 'mlp_ingraph.tflite')!r}, {str(x)!r}, '--samples', '10', '--json'],"
        " prog_name='edgekit')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predictions"][0]["samples"] == 10


def _calibrated_fixture(tmp_path) -> Path:
    """mlp_twin as an edgekit/2 file with a temperature and an abstention threshold (what convert stores)."""
    from edgekit.runtime.metadata import embed_metadata, read_metadata

    data = (FIX / "mlp_twin.tflite").read_bytes()
    meta = read_metadata(data)
    meta = {**meta, "format": "edgekit/2", "outputs": [{
        "name": "probs", "task": "classification", "activation": "softmax", "shape": [5], "class_names": None,
        "calibration": {"method": "temperature", "temperature": 0.5, "mi_slope": 1.0},
        # 1 - confidence of this fixture's calibrated means on uniform inputs lies in about [0.59, 0.75]
        # (measured): 0.65 abstains on some of them and answers others.
        "abstain": {"score": "confidence", "threshold": 0.65, "target_coverage": 0.9}}]}
    path = tmp_path / "cal.tflite"
    path.write_bytes(embed_metadata(data, meta))
    return path


def test_predict_shows_abstain_calibration_and_notes(tmp_path):
    model = _calibrated_fixture(tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((16, 20)).astype(np.float32))
    res = _run(model, x, "--samples", "30", "--seed", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    flags = [p["abstain"] for p in out["predictions"]]
    assert any(flags) and not all(flags)
    assert {p["calibrated"] for p in out["predictions"]} == {True} and out["notes"] == []
    table = _run(model, x, "--samples", "30", "--seed", "1")
    assert f"abstain: {sum(flags)} of 16 inputs" in table.stdout and "calibrated: yes" in table.stdout
    assert sum(line.endswith("  abstain") for line in table.stdout.splitlines()) == sum(flags)
    raw = _run(model, x, "--samples", "30", "--seed", "1", "--uncalibrated", "--json")
    rows = json.loads(raw.stdout)["predictions"]
    assert {p["calibrated"] for p in rows} == {False}
    assert rows[0]["mean"] != out["predictions"][0]["mean"]  # same masks (seed 1), no temperature
    one = tmp_path / "one.npy"
    np.save(one, np.random.default_rng(0).random(20).astype(np.float32))
    res = _run(model, one, "--samples", "30", "--uncalibrated")
    assert "calibrated: no (--uncalibrated" in res.stdout and "abstain: " in res.stdout
    # An edgekit/1 file says it runs uncalibrated.
    res = _run(FIX / "mlp_twin.tflite", one, "--samples", "10")
    assert "note: probs: uncalibrated (the file predates calibration (edgekit/1))" in res.stdout


def test_predict_anytime(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((24, 20)).astype(np.float32))
    res = _run(FIX / "mlp_twin.tflite", x, "--anytime", "--json")
    assert res.exit_code == 0, res.output
    used = [p["samples"] for p in json.loads(res.stdout)["predictions"]]
    assert set(used) <= set(range(8, 101, 4)) and min(used) < 100  # some inputs settle early (measured: most)
    res = _run(FIX / "mlp_twin.tflite", x, "--anytime", "--anytime-k", "1e9", "--samples", "20", "--json")
    assert {p["samples"] for p in json.loads(res.stdout)["predictions"]} == {20}  # never settled: the cap
    res = _run(FIX / "mlp_twin.tflite", x, "--anytime-k", "3")
    assert res.exit_code == 2 and "--anytime-k needs --anytime" in res.stderr
