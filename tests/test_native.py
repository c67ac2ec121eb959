"""The native runtime (runtime/c): the C library and ``edgekit-run`` against the Python reference.

Everything runs the real built tool and library (``make native``, built here when missing) on the
committed fixtures, with LiteRT's real CompiledModel underneath; nothing needs TensorFlow.

- Same masks, same numbers: the C runtime's masks are documented (edgekit.h, Randomness:
  xoshiro256** seeded by splitmix64, 16 bits per unit). :class:`Xoshiro` reproduces the stream in
  Python, the Python LiteRT Interpreter is fed those masks, and every per-sample output of
  ``edgekit-run --samples-out`` must match it.
- Where the masks cannot be fed (the file draws its own), MC means agree with the Python runtime
  (``MCModel``) within 4 standard errors.
- The library through ctypes: caller-owned buffers pre-filled with NaN must come back written,
  bad arguments get a message, one handle per thread gives the same numbers as one thread.
- The v2 keys (calibration, abstention, value outputs, static batches) on copies of a fixture whose
  metadata was re-embedded with ``edgekit.runtime.metadata.embed_metadata``.
- Bad input: one clear line on stderr and a non-zero exit.

Helpers here (the tool runner, the mask stream, the Python reference) are imported by the other
``tests/test_native_*.py`` files.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime.metadata import embed_metadata, read_metadata

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
NATIVE = ROOT / "build" / "native"
TOOL = NATIVE / "edgekit-run"
ASAN_TOOL = NATIVE / "asan" / "edgekit-run"
LIB = NATIVE / "libedgekit.so"

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("NATIVE_CC", "cc")) is None,
    reason="no C compiler (cc) on PATH: the native runtime (runtime/c) cannot be built here",
)

# Fixtures whose masks the runtime draws (so C and Python can be fed the same ones): the masked
# twin (float32, int8 with float I/O, int8 I/O, no trunk) and mask-input files (float32, int8 I/O,
# two MC layers with a spatial mask).
SAME_MASKS = ["mlp_twin", "mlp_int8", "mlp_int8io", "input_mc_twin", "mlp_mask", "mlp_int8mask", "cnn_mask"]
# Every edgekit fixture, for the MC-mean comparison (in-graph files draw with their own
# RANDOM_UNIFORM: mlp_ingraph, cnn_ingraph, book_ingraph; mlp_seeded with its seed; book_twin's
# trunk ends in a dynamic RESHAPE, so the C runtime samples `full` with the file's RNG).
ALL_FIXTURES = SAME_MASKS + ["mlp_ingraph", "mlp_seeded", "cnn_ingraph", "book_ingraph", "book_twin"]
INPUT_SHAPES = {"mlp": (20,), "cnn": (12, 12, 1), "book": (28, 28), "input_mc": (64,)}


def input_shape(name: str) -> tuple[int, ...]:
    for prefix in sorted(INPUT_SHAPES, key=len, reverse=True):
        if name.startswith(prefix):
            return INPUT_SHAPES[prefix]
    raise KeyError(name)


_built = False


def ensure_built() -> None:
    """``make native`` once per session (incremental: a no-op when the build is current)."""
    global _built
    if not _built:
        subprocess.run(["make", "-s", "native"], cwd=ROOT, check=True, capture_output=True)
        _built = True


def run_tool(*args, tool: Path = TOOL, env: dict | None = None, timeout: float = 120, cache: Path | None = None):
    """Run edgekit-run; returns the CompletedProcess (text)."""
    ensure_built()
    full_env = {**os.environ, **(env or {})}
    if cache is not None:
        full_env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([str(tool), *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def run_json(*args, **kw) -> dict:
    p = run_tool(*args, "--json", **kw)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# --------------------------------------------------------------------------------------------
# The C runtime's mask stream, reproduced (edgekit.h, Randomness).

_M64 = (1 << 64) - 1


def _rotl(x: int, k: int) -> int:
    return ((x << k) | (x >> (64 - k))) & _M64


class Xoshiro:
    """The C runtime's mask generator (runtime/c/edgekit.c, seed_rng): four xoshiro256** lanes, lane l
    seeded with splitmix64 outputs 4l..4l+3, stepped together; a step gives four consecutive words,
    lane 0 first. A test oracle, not fast."""

    LANES = 4

    def __init__(self, seed: int):
        x = seed & _M64
        words = []
        for _ in range(4 * self.LANES):
            x = (x + 0x9E3779B97F4A7C15) & _M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
            words.append(z ^ (z >> 31))
        self.s = [words[4 * lane:4 * lane + 4] for lane in range(self.LANES)]

    def draws(self, groups: int) -> np.ndarray:
        """``groups`` steps of the four lanes: ``4 * groups`` words in stream order."""
        out = np.empty((groups, self.LANES), dtype=np.uint64)
        for lane in range(self.LANES):
            s0, s1, s2, s3 = self.s[lane]
            for i in range(groups):
                out[i, lane] = (_rotl((s1 * 5) & _M64, 7) * 9) & _M64
                t = (s1 << 17) & _M64
                s2 ^= s0
                s3 ^= s1
                s1 ^= s2
                s0 ^= s3
                s2 ^= t
                s3 = _rotl(s3, 45)
            self.s[lane] = [s0, s1, s2, s3]
        return out.reshape(-1)

    def keep(self, units: int, rate: float) -> np.ndarray:
        """Keep flags for ``units`` units: four 16-bit units per word, lowest first, whole steps of
        the lanes (16 units) per mask, the units left over discarded."""
        lanes = self.draws((units + 15) // 16).astype("<u8").view("<u2")[:units]
        return lanes >= round(rate * 65536)  # Python's round: half to even, as the C runtime


def _quantize(detail: dict, v: np.ndarray) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return v.astype(np.float32)
    scale, zero = detail["quantization"]
    return np.clip(np.round(v / scale) + zero, -128, 127).astype(np.int8)


def python_samples(path: Path, x: np.ndarray, samples: int, seed: int, batch: int = 0) -> np.ndarray:
    """[N, T, C] per-sample outputs of the Python LiteRT Interpreter fed the C runtime's masks for
    inputs ``x`` [N, *shape] (the plan of docs/format.md: trunk once, then the masked twin or the
    head at batch T). ``batch``: the sampler's static batch (masks drawn per invoke of it)."""
    from ai_edge_litert.interpreter import Interpreter

    data = path.read_bytes()
    meta = read_metadata(data)
    interp = Interpreter(model_content=data)
    sigs = interp.get_signature_list()
    names = meta["signatures"]
    twin = names.get("masked") if meta["stochastic"] == "in-graph" and meta["seed"] is None else None
    split = bool(names.get("trunk")) and "trunk" in sigs
    sampler = interp.get_signature_runner(twin or ("head" if split else "full"))
    if twin:
        fed = [(f"mask_{i}", layer) for i, layer in enumerate(meta["mc_layers"]) if layer["rate"] > 0]
    else:
        fed = [(layer["mask_input"], layer) for layer in meta["mc_layers"] if layer.get("mask_input")]
    assert fed, f"{path.name}: no masks to feed"
    details = sampler.get_input_details()
    out_name = (meta.get("output") or {}).get("name", "probs")
    out_detail = sampler.get_output_details()[out_name]
    rng = Xoshiro(seed)
    rows = []
    for xi in x:
        xi = xi[None].astype(np.float32)
        if split:
            trunk = interp.get_signature_runner("trunk")
            feat = trunk(x=_quantize(trunk.get_input_details()["x"], xi))["features"]
            feed = "features"
        else:
            feed = "x"
            feat = _quantize(details["x"], xi)
        step = batch or samples
        probs = []
        for _ in range(samples // step):
            feeds = {feed: np.repeat(feat, step, axis=0)}
            for name, layer in fed:
                shape = tuple(int(d) for d in details[name]["shape_signature"][1:])
                keep = rng.keep(step * math.prod(shape), layer["rate"]).reshape(step, *shape)
                if details[name]["dtype"] == np.int8:
                    scale, zero = details[name]["quantization"]
                    codes = [int(np.clip(round(v / scale + zero), -128, 127)) for v in (1.0, 0.0)]
                    feeds[name] = np.where(keep, codes[0], codes[1]).astype(np.int8)
                else:
                    feeds[name] = keep.astype(np.float32)
            p = sampler(**feeds)[out_name]
            if p.dtype == np.int8:
                scale, zero = out_detail["quantization"]
                p = (p.astype(np.float32) - zero) * scale
            probs.append(p)
        rows.append(np.concatenate(probs))
    return np.stack(rows)


def inputs_for(name: str, n: int = 3, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, *input_shape(name)), dtype=np.float32)
    if name in ("mlp_int8", "mlp_int8io", "mlp_int8mask"):
        # int8 I/O files represent the calibration range only (metadata input.range)
        lo, hi = read_metadata((FIXTURES / f"{name}.tflite").read_bytes())["input"]["range"]
        x = (lo + (hi - lo) * x).astype(np.float32)
    return x


# --------------------------------------------------------------------------------------------
# Same masks, same numbers.


@pytest.mark.parametrize("name", SAME_MASKS)
def test_same_masks_give_the_python_interpreters_numbers(name, tmp_path):
    x = inputs_for(name)
    np.save(tmp_path / "x.npy", x)
    # T=41: cnn_mask's 8-unit spatial mask then ends in half a step of the generator's lanes.
    out = run_json(FIXTURES / f"{name}.tflite", tmp_path / "x.npy", "--samples", 41, "--seed", 11,
                   "--samples-out", tmp_path / "s.npy", cache=tmp_path)
    c = np.load(tmp_path / "s.npy")
    py = python_samples(FIXTURES / f"{name}.tflite", x, 41, seed=11)
    assert c.shape == py.shape == (3, 41, py.shape[-1])
    # Both run the same XNNPACK kernels on the same bytes: identical here (max |d| = 0); 1e-6 is
    # the float32 rounding slack the issue allows for a different call path into LiteRT.
    np.testing.assert_allclose(c, py, rtol=0, atol=1e-6)
    # The summaries are numpy's on those samples (runtime/mc.py's summarize), to the float32
    # printing of the JSON (9 significant digits) and double precision for entropy and MI.
    from edgekit.runtime.mc import summarize

    for i, pred in enumerate(out["predictions"]):
        mean, std, ent, mi = summarize(c[i])
        np.testing.assert_allclose(pred["mean"], mean, rtol=0, atol=1e-6)
        np.testing.assert_allclose(pred["std"], std, rtol=0, atol=1e-6)
        assert pred["entropy"] == pytest.approx(ent, abs=1e-9)
        assert pred["mutual_information"] == pytest.approx(mi, abs=1e-9)
        assert pred["predicted"] == int(np.argmax(mean)) and pred["samples"] == 41


def test_masks_differ_between_calls_and_seeds(tmp_path):
    # 64 units per sample (mlp's MC layer): a repeat by chance is impossible at this size.
    np.save(tmp_path / "x.npy", np.repeat(inputs_for("mlp_twin", 1), 2, axis=0))
    run_tool(FIXTURES / "mlp_twin.tflite", tmp_path / "x.npy", "-T", 30, "--seed", 1, "--samples-out", tmp_path / "a.npy",
             cache=tmp_path)
    run_tool(FIXTURES / "mlp_twin.tflite", tmp_path / "x.npy", "-T", 30, "--seed", 2, "--samples-out", tmp_path / "b.npy",
             cache=tmp_path)
    run_tool(FIXTURES / "mlp_twin.tflite", tmp_path / "x.npy", "-T", 30, "--seed", 1, "--samples-out", tmp_path / "c.npy",
             cache=tmp_path)
    a, b, c = (np.load(tmp_path / f"{k}.npy") for k in "abc")
    assert np.array_equal(a, c)  # a seed reproduces
    assert not np.array_equal(a[0], a[1])  # the same input twice: the stream goes on
    assert not np.array_equal(a, b)
    assert len({s.tobytes() for s in a.reshape(-1, a.shape[-1])}) == 60  # no sample repeats


@pytest.mark.parametrize("name", ["mlp_twin", "cnn_mask"])
def test_the_scalar_generator_draws_the_avx2_stream(tmp_path, name):
    # Where the CPU has AVX2 the four generator lanes step as one vector; EDGEKIT_NO_AVX2 forces the
    # scalar code, which must give the same masks, hence bitwise the same samples (runtime masks of
    # 64, and 8 + 16 units per sample: one wrong word changes them). At T=37 the CNN's 8-unit mask
    # ends in half a step of the lanes. On a CPU without AVX2 both runs are scalar.
    np.save(tmp_path / "x.npy", inputs_for(name, 2))
    for k, env in (("v", {}), ("s", {"EDGEKIT_NO_AVX2": "1"})):
        p = run_tool(FIXTURES / f"{name}.tflite", tmp_path / "x.npy", "-T", 37, "--seed", 21, "--samples-out",
                     tmp_path / f"{k}.npy", env=env, cache=tmp_path)
        assert p.returncode == 0, p.stderr
    assert np.array_equal(np.load(tmp_path / "v.npy"), np.load(tmp_path / "s.npy"))


# --------------------------------------------------------------------------------------------
# MC means against the Python runtime, on every fixture.


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_mc_means_agree_with_the_python_runtime(name, tmp_path):
    from edgekit.runtime import MCModel

    x = inputs_for(name, n=2, seed=5)
    np.save(tmp_path / "x.npy", x)
    T = 1000
    out = run_json(FIXTURES / f"{name}.tflite", tmp_path / "x.npy", "-T", T, "--seed", 3, cache=tmp_path)
    model = MCModel(FIXTURES / f"{name}.tflite", seed=4, probe=False)
    ref = model.predict(x, samples=T)
    for i, pred in enumerate(out["predictions"]):
        c_mean, c_std = np.array(pred["mean"]), np.array(pred["std"])
        se = np.sqrt(c_std**2 / pred["samples"] + ref.std[i].astype(np.float64) ** 2 / ref.samples[i])
        # 4 standard errors of the difference per class (files that draw their own masks cannot be
        # seeded from here: a false alarm needs a 4-sigma event, ~6e-5 per class).
        assert np.all(np.abs(c_mean - ref.mean[i]) <= 4 * se + 1e-7), (name, c_mean, ref.mean[i], se)
        # probabilities: float32 softmax rounding, or half an int8 step (1/512) per class
        assert abs(sum(pred["mean"]) - 1) < (0.01 if "int8" in name else 1e-4)


def test_json_has_the_keys_of_edgekit_predict(tmp_path):
    from edgekit.runtime import MCModel

    x = inputs_for("cnn_mask", n=2)
    np.save(tmp_path / "x.npy", x)
    out = run_json(FIXTURES / "cnn_mask.tflite", tmp_path / "x.npy", "-T", 20, cache=tmp_path)
    model = MCModel(FIXTURES / "cnn_mask.tflite", probe=False)
    ref = {"model": "m", "stochastic": model.stochastic, "verified": model.verified, **model.predict(x, samples=20).to_dict()}
    # every key of the Python runtime's document; beyond them only the keys of the planned format
    # edgekit/2 (its per-output rows and notes), which the Python side writes too once it reads v2
    planned = {"outputs", "notes", "calibrated"}
    assert set(ref) <= set(out) and set(out) - set(ref) <= planned
    for c_row, py_row in zip(out["predictions"], ref["predictions"], strict=True):
        assert set(py_row) <= set(c_row) and set(c_row) - set(py_row) <= planned
        assert set(c_row["outputs"]["probs"]) == {k for k in c_row if k not in ("samples", "elapsed_ms", "budget_cut", "outputs")}
    assert out["class_names"] == list(ref["class_names"]) == ["up", "down", "left", "right"]
    assert out["outputs"] == [{"name": "probs", "task": "classification", "class_names": ["up", "down", "left", "right"]}]
    assert out["notes"] == ["probs: uncalibrated (the file predates calibration (edgekit/1))"]
    assert out["stochastic"] == "mask-input" and out["verified"] is True


# --------------------------------------------------------------------------------------------
# The plan: the CompiledModel dynamic-output pitfall, static batches, seeded files.


def test_a_trunk_ending_in_a_dynamic_reshape_is_detected_and_avoided(tmp_path):
    # book_twin's trunk is Flatten with a dynamic batch: under the CompiledModel its output would
    # never be written (Run returns OK). The library sees it in the graph and samples `full`.
    lib = Lib()
    m = lib.open(FIXTURES / "book_twin.tflite", seed=1)
    info = lib.info(m)
    assert info.plan == b"full" and info.masks_from == b"file"
    assert b"dynamic RESHAPE" in info.note
    _, _, bufs = lib.predict(m, inputs_for("book_twin", 1)[0], samples=50)
    assert np.isfinite(bufs[0]["mean"]).all() and abs(bufs[0]["mean"].sum() - 1) < 1e-4
    lib.close(m)
    # the same file's well-formed signatures keep their plan elsewhere: mlp_twin's trunk is static
    m = lib.open(FIXTURES / "mlp_twin.tflite")
    assert lib.info(m).plan == b"trunk+masked" and lib.info(m).note is None
    lib.close(m)


def test_a_seeded_file_runs_at_one_batch_so_its_sequence_never_restarts(tmp_path):
    x = inputs_for("mlp_seeded", 1)
    np.save(tmp_path / "x.npy", x)
    out = run_json(FIXTURES / "mlp_seeded.tflite", tmp_path / "x.npy", "-T", 100, "--samples-out", tmp_path / "s.npy",
                   cache=tmp_path)
    s = np.load(tmp_path / "s.npy")[0]
    assert out["predictions"][0]["samples"] == 104  # T rounded up to a multiple of 8
    assert len({row.tobytes() for row in s}) == 104  # no mask sequence repeated
    # the file's promise: the same sequence in every process
    run_tool(FIXTURES / "mlp_seeded.tflite", tmp_path / "x.npy", "-T", 100, "--samples-out", tmp_path / "t.npy",
             cache=tmp_path)
    assert np.array_equal(np.load(tmp_path / "t.npy")[0], s)


def _v2(tmp_path: Path, source: str, **keys) -> Path:
    data = (FIXTURES / f"{source}.tflite").read_bytes()
    meta = read_metadata(data)
    meta = {**{k: v for k, v in meta.items() if k != "sha256"}, "format": "edgekit/2", **keys}
    path = tmp_path / f"{source}_v2.tflite"
    path.write_bytes(embed_metadata(data, meta))
    return path


def test_a_static_batch_runs_at_exactly_that_batch_and_draws_t_in_multiples(tmp_path):
    path = _v2(tmp_path, "mlp_twin", batch={"trunk": 1, "masked": 16, "head": None, "full": None})
    x = inputs_for("mlp_twin", 2)
    np.save(tmp_path / "x.npy", x)
    out = run_json(path, tmp_path / "x.npy", "-T", 100, "--seed", 9, "--samples-out", tmp_path / "s.npy", cache=tmp_path)
    assert [p["samples"] for p in out["predictions"]] == [112, 112]  # 7 invokes of 16
    py = python_samples(path, x, 112, seed=9, batch=16)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), py, rtol=0, atol=1e-6)  # same reason as above


# --------------------------------------------------------------------------------------------
# The planned format edgekit/2: calibration, abstention, value outputs.


def _calibrate(p: np.ndarray, temperature: float, mi_slope: float = 0.0) -> np.ndarray:
    """runtime/calibration.py's Temperature.apply for one input's samples [T, C], in numpy."""
    p = p.astype(np.float64)
    from edgekit.runtime.mc import summarize

    tau = temperature * np.exp(mi_slope * summarize(p)[3])  # MI of the raw samples
    z = np.log(p + 1e-12) / tau
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("mi_slope", [0.0, 4.0])
def test_v2_calibration_and_abstention_match_numpy_on_the_same_samples(mi_slope, tmp_path):
    outputs = [{"name": "probs", "task": "classification", "activation": "softmax", "shape": [5],
                "class_names": list("abcde"),
                "calibration": {"method": "temperature", "temperature": 0.7, "mi_slope": mi_slope},
                "abstain": {"score": "confidence", "threshold": 0.7, "target_coverage": 0.9}}]
    path = _v2(tmp_path, "mlp_twin", outputs=outputs)
    x = inputs_for("mlp_twin", 4, seed=2)
    np.save(tmp_path / "x.npy", x)
    out = run_json(path, tmp_path / "x.npy", "-T", 60, "--seed", 5, "--samples-out", tmp_path / "s.npy", cache=tmp_path)
    raw = python_samples(path, x, 60, seed=5)
    cal = np.stack([_calibrate(r, 0.7, mi_slope) for r in raw])
    c = np.load(tmp_path / "s.npy")
    # float32 per-sample probabilities from a float64 formula: 1e-6 is float32 rounding.
    np.testing.assert_allclose(c, cal, rtol=0, atol=1e-6)
    assert out["class_names"] == list("abcde") and out["notes"] == []
    from edgekit.runtime.mc import summarize

    for i, pred in enumerate(out["predictions"]):
        mean, _, ent, mi = summarize(cal[i])
        np.testing.assert_allclose(pred["mean"], mean, atol=1e-6)
        assert pred["entropy"] == pytest.approx(ent, abs=1e-6) and pred["mutual_information"] == pytest.approx(mi, abs=1e-6)
        assert pred["calibrated"] is True and pred["outputs"]["probs"]["calibrated"] is True
        assert pred["abstain"] is bool(1 - mean.max() > 0.7)
    # a temperature below 1 sharpens: lower entropy than the raw probabilities on the same masks
    plain = run_json(path, tmp_path / "x.npy", "-T", 60, "--seed", 5, "--uncalibrated", cache=tmp_path)
    assert all(p["calibrated"] is False for p in plain["predictions"])
    assert all(p["entropy"] > q["entropy"] for p, q in zip(plain["predictions"], out["predictions"], strict=True))
    for i, pred in enumerate(plain["predictions"]):
        np.testing.assert_allclose(pred["mean"], raw[i].astype(np.float64).mean(axis=0), atol=1e-6)


def _mixture_cdf(x: float, mu: np.ndarray, var: np.ndarray) -> float:
    from math import erfc, sqrt

    return float(np.mean([0.5 * erfc(-(x - m) / sqrt(2 * v)) for m, v in zip(mu, var)]))


@pytest.mark.parametrize("aleatoric", ["none", "homoscedastic", "heteroscedastic"])
def test_v2_value_outputs_match_numpy_on_the_same_samples(aleatoric, tmp_path):
    # mlp_twin's five outputs read as five values: a real signature output, a regression entry.
    # The heteroscedastic case declares the same output as its own log-variance (a path test:
    # there is no two-output fixture yet), with a fitted variance scale of 2.
    entry = {"name": "probs", "task": "regression", "interval": 0.8}
    if aleatoric == "homoscedastic":
        entry["noise_variance"] = [0.01, 0.02, 0.0004, 0.05, 0.001]
    if aleatoric == "heteroscedastic":
        entry["variance"] = {"output": "probs", "kind": "log_variance"}
        entry["variance_scale"] = 2.0
    path = _v2(tmp_path, "mlp_twin", outputs=[entry])
    x = inputs_for("mlp_twin", 2, seed=3)
    np.save(tmp_path / "x.npy", x)
    out = run_json(path, tmp_path / "x.npy", "-T", 50, "--seed", 8, "--samples-out", tmp_path / "s.npy", cache=tmp_path)
    values = python_samples(path, x, 50, seed=8).astype(np.float64)
    np.testing.assert_allclose(np.load(tmp_path / "s.npy"), values, rtol=0, atol=1e-6)
    assert out["class_names"] is None
    assert out["outputs"] == [{"name": "probs", "task": "regression", "shape": [5]}]
    if aleatoric == "none":
        note = "probs: no noise variance in the file: the std and interval cover the model's uncertainty only"
        assert out["notes"] == [note]
    for i, pred in enumerate(out["predictions"]):
        o = pred["outputs"]["probs"]
        assert {k: pred[k] for k in o} == o  # the first output's fields at the top level
        assert o["interval"]["level"] == 0.8
        np.testing.assert_allclose(o["mean"], values[i].mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(o["std"], values[i].std(axis=0), atol=1e-6)  # epistemic, ddof=0
        lo, hi = np.array(o["interval"]["low"]), np.array(o["interval"]["high"])
        if aleatoric == "none":
            assert o["aleatoric_std"] is None
            np.testing.assert_allclose(o["total_std"], o["std"], atol=1e-7)
            np.testing.assert_allclose(lo, np.quantile(values[i], 0.1, axis=0), atol=1e-6)
            np.testing.assert_allclose(hi, np.quantile(values[i], 0.9, axis=0), atol=1e-6)
            continue
        var = (np.tile(entry["noise_variance"], (50, 1)) if aleatoric == "homoscedastic" else 2.0 * np.exp(values[i]))
        np.testing.assert_allclose(o["aleatoric_std"], np.sqrt(var.mean(axis=0)), rtol=1e-6)
        np.testing.assert_allclose(o["total_std"], np.sqrt(values[i].var(axis=0) + var.mean(axis=0)), rtol=1e-6)
        for k in range(5):
            # the interval of the predictive mixture (1/T) sum N(mu_t, s_t^2): its CDF at the ends
            # is 0.1 and 0.9 (1e-5: the bounds are printed as float32)
            assert _mixture_cdf(lo[k], values[i][:, k], var[:, k]) == pytest.approx(0.1, abs=1e-5)
            assert _mixture_cdf(hi[k], values[i][:, k], var[:, k]) == pytest.approx(0.9, abs=1e-5)
            assert hi[k] - lo[k] > np.quantile(values[i][:, k], 0.9) - np.quantile(values[i][:, k], 0.1)


def test_v2_keys_the_runtime_cannot_honour_are_refused_clearly(tmp_path):
    cases = [
        ({"outputs": [{"name": "probs", "task": "ranking", "shape": [5]}]}, "unsupported task"),
        ({"outputs": [{"name": "probs", "task": "classification", "shape": [5],
                       "calibration": {"method": "isotonic"}}]}, "unsupported calibration"),
        ({"outputs": [{"name": "probs", "abstain": {"score": "margin", "threshold": 1}}]}, "unsupported abstention"),
        ({"outputs": [{"name": "probs", "task": "regression", "noise_variance": [0.1]}]}, "Expected one per value"),
        ({"outputs": [{"name": "logits", "task": "classification", "shape": [5]}]}, "does not have"),
        ({"outputs": [{"name": "probs", "task": "classification", "shape": [6]}]}, "metadata says 6"),
        ({"format": "edgekit/3"}, "Expected 'edgekit/1' or 'edgekit/2'"),
        ({"batch": {"masked": 0}}, "batch.masked"),
    ]
    np.save(tmp_path / "x.npy", inputs_for("mlp_twin", 1))
    for keys, words in cases:
        data = (FIXTURES / "mlp_twin.tflite").read_bytes()
        meta = {**{k: v for k, v in read_metadata(data).items() if k != "sha256"}, "format": "edgekit/2", **keys}
        path = tmp_path / "bad.tflite"
        path.write_bytes(embed_metadata(data, meta))
        p = run_tool(path, tmp_path / "x.npy", cache=tmp_path)
        assert p.returncode == 1 and words in p.stderr and p.stderr.count("\n") == 1, (keys, p.stderr)


# --------------------------------------------------------------------------------------------
# Budgets and stop rules (behaviour only: their speed is measured in bench/native.py).


def test_a_budget_draws_what_fits_and_reports_it(tmp_path):
    np.save(tmp_path / "x.npy", inputs_for("mlp_twin", 30))
    out = run_json(FIXTURES / "mlp_twin.tflite", tmp_path / "x.npy", "--budget-ms", 5, cache=tmp_path)
    used = [p["samples"] for p in out["predictions"]]
    assert all(1 <= t <= 1000 for t in used) and max(used) > 8
    assert all(p["elapsed_ms"] > 0 for p in out["predictions"])


def test_stop_rules_end_sampling_once_the_answer_is_settled():
    lib = Lib()
    m = lib.open(FIXTURES / "input_mc_twin.tflite", seed=1)
    for xi in inputs_for("input_mc_twin", 5):
        res, outs, bufs = lib.predict(m, xi, tolerance=0.02)
        assert res.stopped_early == 1 and 8 <= res.samples < 1000 and res.budget_cut == 0
        # the rule held: the standard error of the top class's mean is below the tolerance
        top = outs[0].predicted
        assert bufs[0]["std"][top] / math.sqrt(res.samples - 1) < 0.02
        res, outs, bufs = lib.predict(m, xi, lead_k=3.0)
        assert res.stopped_early == 1 and 8 <= res.samples < 1000
        res, _, _ = lib.predict(m, xi, samples=300)
        assert res.stopped_early == 0 and res.samples == 300
    lib.close(m)


# --------------------------------------------------------------------------------------------
# Bad input: one clear message, a non-zero exit.


def _one_error_line(p, code=1):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == code, p.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    return lines[0]


def test_bad_input_gets_one_clear_message_and_a_non_zero_exit(tmp_path):
    model = FIXTURES / "mlp_twin.tflite"
    np.save(tmp_path / "shape.npy", np.zeros((3, 21), np.float32))
    bad = np.zeros(20, np.float32)
    bad[7] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    np.save(tmp_path / "ints.npy", np.zeros(20, np.int32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 20), np.float32))
    np.save(tmp_path / "x.npy", np.zeros(20, np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    line = _one_error_line(run_tool(model, tmp_path / "shape.npy", cache=tmp_path))
    assert "Expected (20,) for one input or (batch, 20) for a batch. Received: shape=(3, 21)" in line
    line = _one_error_line(run_tool(model, tmp_path / "nan.npy", cache=tmp_path))
    assert "NaN or Inf" in line and "index 7" in line
    line = _one_error_line(run_tool(tmp_path / "missing.tflite", tmp_path / "x.npy", cache=tmp_path))
    assert "Model file not found" in line and "missing.tflite" in line
    line = _one_error_line(run_tool(model, tmp_path / "missing.npy", cache=tmp_path))
    assert "Input file not found" in line
    line = _one_error_line(run_tool(model, tmp_path / "x.npy", "--budget-ms", 1e-5, cache=tmp_path))
    assert "smaller than one MC sample" in line and "Received: budget_ms=1e-05" in line
    line = _one_error_line(run_tool(model, tmp_path / "ints.npy", cache=tmp_path))
    assert "Expected float32" in line and "<i4" in line
    line = _one_error_line(run_tool(model, tmp_path / "empty.npy", cache=tmp_path))
    assert "empty" in line
    line = _one_error_line(run_tool(model, tmp_path / "junk.npy", cache=tmp_path))
    assert "Expected the magic bytes" in line
    line = _one_error_line(run_tool(tmp_path, tmp_path / "x.npy", cache=tmp_path))
    assert "a directory" in line
    # usage errors exit 2
    _one_error_line(run_tool(model, tmp_path / "x.npy", "-T", 5, "--budget-ms", 5, cache=tmp_path), code=2)
    _one_error_line(run_tool(model, tmp_path / "x.npy", "--threads", 0, cache=tmp_path), code=2)
    _one_error_line(run_tool(model, cache=tmp_path), code=2)
    _one_error_line(run_tool(model, tmp_path / "x.npy", "--samples-out", tmp_path / "x.npy", cache=tmp_path), code=2)
    assert np.load(tmp_path / "x.npy").shape == (20,)  # never written over an input


def test_a_file_without_metadata_is_refused_unless_allowed(tmp_path):
    np.save(tmp_path / "x.npy", inputs_for("mlp_ingraph", 1))
    line = _one_error_line(run_tool(FIXTURES / "foreign.tflite", tmp_path / "x.npy", cache=tmp_path))
    assert "no edgekit metadata" in line and "integrity" in line
    p = run_tool(FIXTURES / "foreign.tflite", tmp_path / "x.npy", "--allow-unverified", "--json", cache=tmp_path)
    assert p.returncode == 0 and p.stderr.startswith("Warning: ") and p.stderr.count("\n") == 1
    out = json.loads(p.stdout)
    assert out["verified"] is False and out["class_names"] == ["0", "1", "2", "3", "4"]


def test_a_crash_in_litert_is_caught_by_the_probe(tmp_path):
    # A corpus file LiteRT segfaults on in invoke (a bad index, re-signed so the digest passes):
    # the probe child dies, edgekit-run reports it and lives.
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from fuzz.corrupt import make_corpus

    case = next(c for c in make_corpus(0) if c.kind == "resigned-bad-index" and c.source == "cnn_ingraph.tflite"
                and c.offset == 2744)
    (tmp_path / "bad.tflite").write_bytes(case.data)
    np.save(tmp_path / "x.npy", np.zeros((12, 12, 1), np.float32))
    line = _one_error_line(run_tool(tmp_path / "bad.tflite", tmp_path / "x.npy", cache=tmp_path))
    assert "LiteRT crashed (SIGSEGV)" in line and "probe" in line


# --------------------------------------------------------------------------------------------
# The library through ctypes.


class OpenOptions(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int), ("has_seed", ctypes.c_int), ("seed", ctypes.c_uint64),
                ("allow_unverified", ctypes.c_int), ("max_samples", ctypes.c_int), ("max_file_bytes", ctypes.c_size_t),
                ("memory_bytes", ctypes.c_size_t), ("calibrated", ctypes.c_int), ("litert_log", ctypes.c_int),
                ("clock", ctypes.c_void_p), ("clock_ctx", ctypes.c_void_p)]


class ModelInfo(ctypes.Structure):
    _fields_ = [("format", ctypes.c_char_p), ("stochastic", ctypes.c_char_p), ("plan", ctypes.c_char_p),
                ("masks_from", ctypes.c_char_p), ("sha256", ctypes.c_char_p), ("verified", ctypes.c_int),
                ("input_rank", ctypes.c_int), ("input_shape", ctypes.c_int * 8), ("input_size", ctypes.c_size_t),
                ("input_int8", ctypes.c_int), ("num_outputs", ctypes.c_int), ("sampler_batch", ctypes.c_int),
                ("max_samples", ctypes.c_int), ("note", ctypes.c_char_p), ("notes", ctypes.POINTER(ctypes.c_char_p)),
                ("num_notes", ctypes.c_int)]


class OutputInfo(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("task", ctypes.c_int), ("size", ctypes.c_size_t), ("rank", ctypes.c_int),
                ("shape", ctypes.c_int * 8), ("class_names", ctypes.POINTER(ctypes.c_char_p)), ("sigmoid", ctypes.c_int),
                ("calibrated", ctypes.c_int), ("temperature", ctypes.c_double), ("mi_slope", ctypes.c_double),
                ("has_abstain", ctypes.c_int), ("abstain_score", ctypes.c_char_p),
                ("abstain_threshold", ctypes.c_double), ("aleatoric", ctypes.c_int), ("interval", ctypes.c_double)]


class PredictOptions(ctypes.Structure):
    _fields_ = [("samples", ctypes.c_int), ("budget_ms", ctypes.c_double), ("tolerance", ctypes.c_double),
                ("lead_k", ctypes.c_double), ("min_samples", ctypes.c_int)]


_F = ctypes.POINTER(ctypes.c_float)


class OutputResult(ctypes.Structure):
    _fields_ = [("mean", _F), ("std", _F), ("low", _F), ("high", _F), ("aleatoric_std", _F), ("total_std", _F),
                ("samples", _F),
                ("samples_capacity", ctypes.c_int), ("predicted", ctypes.c_int), ("confidence", ctypes.c_float),
                ("entropy", ctypes.c_double), ("mutual_information", ctypes.c_double), ("abstain", ctypes.c_int)]


class Result(ctypes.Structure):
    _fields_ = [("outputs", ctypes.POINTER(OutputResult)), ("num_outputs", ctypes.c_int), ("samples", ctypes.c_int),
                ("elapsed_ms", ctypes.c_double), ("budget_cut", ctypes.c_int), ("stopped_early", ctypes.c_int)]


class Lib:
    """libedgekit.so through ctypes (each call releases the GIL)."""

    def __init__(self):
        ensure_built()
        self.c = c = ctypes.CDLL(str(LIB))
        c.ek_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(OpenOptions), ctypes.POINTER(ctypes.c_void_p)]
        c.ek_open.restype = ctypes.c_int
        c.ek_close.argtypes = [ctypes.c_void_p]
        c.ek_close.restype = None
        c.ek_errmsg.argtypes = [ctypes.c_void_p]
        c.ek_errmsg.restype = ctypes.c_char_p
        c.ek_open_options_init.argtypes = [ctypes.POINTER(OpenOptions)]
        c.ek_predict_options_init.argtypes = [ctypes.POINTER(PredictOptions)]
        c.ek_get_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(ModelInfo)]
        c.ek_get_output_info.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(OutputInfo)]
        c.ek_predict.argtypes = [ctypes.c_void_p, _F, ctypes.c_size_t, ctypes.POINTER(PredictOptions), ctypes.POINTER(Result)]
        c.ek_predict.restype = ctypes.c_int
        c.ek_verify_file.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                     ctypes.c_char_p, ctypes.c_size_t]
        c.ek_status_name.restype = ctypes.c_char_p

    def open(self, path, *, seed=None, threads=1, expect_ok=True, **fields):
        opts = OpenOptions()
        self.c.ek_open_options_init(ctypes.byref(opts))
        opts.threads = threads
        opts.litert_log = 2  # EK_LITERT_LOG_SILENT: LiteRT logs every resize at INFO
        if seed is not None:
            opts.has_seed, opts.seed = 1, seed
        for k, v in fields.items():
            setattr(opts, k, v)
        handle = ctypes.c_void_p()
        status = self.c.ek_open(str(path).encode(), ctypes.byref(opts), ctypes.byref(handle))
        if expect_ok:
            assert status == 0, self.c.ek_errmsg(handle)
            return handle
        return status, handle

    def close(self, handle):
        self.c.ek_close(handle)

    def info(self, handle) -> ModelInfo:
        info = ModelInfo()
        assert self.c.ek_get_info(handle, ctypes.byref(info)) == 0
        return info

    def predict(self, handle, x, *, samples=0, capacity=0, **opts):
        info = self.info(handle)
        bufs, outs = [], (OutputResult * info.num_outputs)()
        for o in range(info.num_outputs):
            oi = OutputInfo()
            self.c.ek_get_output_info(handle, o, ctypes.byref(oi))
            b = {k: np.full(oi.size, np.nan, np.float32)
                 for k in ("mean", "std", "low", "high", "aleatoric_std", "total_std")}
            b["samples"] = np.full((max(capacity, 1), oi.size), np.nan, np.float32)
            for k, arr in b.items():
                setattr(outs[o], k, arr.ctypes.data_as(_F))
            outs[o].samples_capacity = capacity
            bufs.append(b)
        res = Result(outs, info.num_outputs, 0, 0.0, 0, 0)
        po = PredictOptions()
        self.c.ek_predict_options_init(ctypes.byref(po))
        po.samples = samples
        for k, v in opts.items():
            setattr(po, k, v)
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        status = self.c.ek_predict(handle, x.ctypes.data_as(_F), x.size, ctypes.byref(po), ctypes.byref(res))
        assert status == 0, self.c.ek_errmsg(handle)
        return res, outs, bufs


def test_every_caller_buffer_is_written_and_no_more(tmp_path):
    lib = Lib()
    m = lib.open(FIXTURES / "cnn_mask.tflite", seed=2)
    res, outs, bufs = lib.predict(m, inputs_for("cnn_mask", 1)[0], samples=30, capacity=20)
    b = bufs[0]
    # pre-filled with NaN: a classification output writes mean and std, and the first 20 of 30
    # per-sample rows (the capacity given); the regression-only buffers stay untouched
    assert np.isfinite(b["mean"]).all() and np.isfinite(b["std"]).all()
    assert np.isfinite(b["samples"][:20]).all() and res.samples == 30
    assert all(np.isnan(b[k]).all() for k in ("low", "high", "aleatoric_std", "total_std"))
    assert outs[0].predicted == int(np.argmax(b["mean"])) and outs[0].abstain == -1
    np.testing.assert_allclose(b["samples"][:20].sum(axis=1), 1, atol=1e-5)
    lib.close(m)


def test_the_library_says_what_went_wrong():
    lib = Lib()
    status, handle = lib.open(FIXTURES / "nope.tflite", expect_ok=False)
    assert lib.c.ek_status_name(status) == b"EK_ERROR_IO"
    assert b"Model file not found" in lib.c.ek_errmsg(handle)
    lib.close(handle)
    assert lib.c.ek_errmsg(None) == b"out of memory"
    status, handle = lib.open(FIXTURES / "foreign.tflite", expect_ok=False)
    assert lib.c.ek_status_name(status) == b"EK_ERROR_INTEGRITY"
    lib.close(handle)
    # the memory budget: a tensor above it is refused before LiteRT allocates; a budget that
    # fits one invoke of a few hundred samples caps max_samples there (the twin's activations
    # per sample: 64 features + 64 mask + 64 hidden + 5 outputs, float32)
    status, handle = lib.open(FIXTURES / "mlp_twin.tflite", memory_bytes=4000, expect_ok=False)
    assert lib.c.ek_status_name(status) == b"EK_ERROR_UNSUPPORTED" and b"memory budget of 4000" in lib.c.ek_errmsg(handle)
    lib.close(handle)
    small = lib.open(FIXTURES / "mlp_twin.tflite", memory_bytes=200_000)
    assert 50 < lib.info(small).max_samples < 1000
    lib.close(small)
    m = lib.open(FIXTURES / "mlp_twin.tflite")
    outs = (OutputResult * 1)()
    res = Result(outs, 1, 0, 0.0, 0, 0)
    x = np.zeros(21, np.float32)
    assert lib.c.ek_predict(m, x.ctypes.data_as(_F), 21, None, ctypes.byref(res)) == 1
    assert b"Expected 20 float values (one input). Received: 21" in lib.c.ek_errmsg(m)
    lib.close(m)


def test_one_handle_per_thread_gives_the_numbers_of_one_thread():
    lib = Lib()
    x = inputs_for("mlp_twin", 4)

    def work(seed, out):
        m = lib.open(FIXTURES / "mlp_twin.tflite", seed=seed)
        rows = []
        for _ in range(25):
            for xi in x:
                _, _, bufs = lib.predict(m, xi, samples=50)
                rows.append(bufs[0]["mean"].copy())
        lib.close(m)
        out[seed] = np.array(rows)

    alone: dict = {}
    for seed in range(4):
        work(seed, alone)
    together: dict = {}
    threads = [threading.Thread(target=work, args=(seed, together)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed in range(4):
        assert np.array_equal(alone[seed], together[seed])


def test_sha256_and_the_digest_rule_match_python(tmp_path):
    lib = Lib()
    hexbuf, verified, err = ctypes.create_string_buffer(65), ctypes.c_int(), ctypes.create_string_buffer(512)
    for name in ("mlp_twin", "cnn_mask", "book_ingraph"):
        path = FIXTURES / f"{name}.tflite"
        assert lib.c.ek_verify_file(str(path).encode(), 0, hexbuf, ctypes.byref(verified), err, 512) == 0, err.value
        assert hexbuf.value.decode() == read_metadata(path.read_bytes())["sha256"] and verified.value == 1
    # the claimed digest is read, not hashed: a changed weight byte keeps it (and ek_verify_file,
    # like ek_open, refuses the file)
    lib.c.ek_claimed_digest.argtypes = lib.c.ek_verify_file.argtypes
    data = bytearray((FIXTURES / "mlp_twin.tflite").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "changed.tflite").write_bytes(bytes(data))
    changed = str(tmp_path / "changed.tflite").encode()
    assert lib.c.ek_claimed_digest(changed, 0, hexbuf, ctypes.byref(verified), err, 512) == 0
    assert hexbuf.value.decode() == read_metadata((FIXTURES / "mlp_twin.tflite").read_bytes())["sha256"]
    assert lib.c.ek_verify_file(changed, 0, hexbuf, ctypes.byref(verified), err, 512) == 3
    assert b"integrity digest mismatch" in err.value
    # plain SHA-256 of a file without metadata (foreign.tflite plus k trailing bytes, which a
    # flatbuffer ignores), for every length modulo the 64-byte block and across the padding limit
    foreign = (FIXTURES / "foreign.tflite").read_bytes()
    rng = np.random.default_rng(0)
    for k in list(range(130)) + [1000, 4097]:
        data = foreign + rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        (tmp_path / "f.tflite").write_bytes(data)
        assert lib.c.ek_verify_file(str(tmp_path / "f.tflite").encode(), 1, hexbuf, ctypes.byref(verified), err, 512) == 0
        assert verified.value == 0 and hexbuf.value.decode() == hashlib.sha256(data).hexdigest(), k


def test_every_changed_byte_is_refused_before_litert(tmp_path):
    # Exhaustive, as tests/test_robust_fuzz.py does for the Python check: every byte of an edgekit
    # export XORed with 0xFF, and every 7th truncation, is refused by ek_verify_file (no LiteRT).
    lib = Lib()
    data = (FIXTURES / "mlp_mask.tflite").read_bytes()
    err, hexbuf, verified = ctypes.create_string_buffer(512), ctypes.create_string_buffer(65), ctypes.c_int()
    path = str(tmp_path / "f.tflite").encode()
    missed = []
    for pos in list(range(len(data))) + [-cut for cut in range(1, len(data), 7)]:
        bad = bytearray(data)
        if pos >= 0:
            bad[pos] ^= 0xFF
        else:
            bad = bad[: len(data) + pos]
        (tmp_path / "f.tflite").write_bytes(bytes(bad))
        if lib.c.ek_verify_file(path, 1, hexbuf, ctypes.byref(verified), err, 512) != 3:
            missed.append(pos)
    assert not missed, f"{len(missed)} changed files passed the digest, e.g. {missed[:10]}"


# --------------------------------------------------------------------------------------------
# The build.


def test_every_declared_litert_function_is_exported_by_the_pinned_wheel():
    import importlib.metadata
    import re

    import ai_edge_litert

    ensure_built()
    lib = Path(ai_edge_litert.__file__).parent / "libLiteRt.so"
    exported = set(re.findall(r" T (LiteRt\w+)@", subprocess.run(["nm", "-D", "--defined-only", str(lib)],
                                                                   capture_output=True, text=True, check=True).stdout))
    declared = set(re.findall(r"\b(LiteRt\w+)\(", (ROOT / "runtime/c/litert_c.h").read_text()))
    assert len(declared) > 30 and declared <= exported, declared - exported
    used = set(re.findall(r"U (LiteRt\w+)", subprocess.run(["nm", "-D", "--undefined-only", str(LIB)],
                                                          capture_output=True, text=True, check=True).stdout))
    assert used and used <= declared
    # the pin in pyproject.toml is the version these declarations were checked against
    assert importlib.metadata.version("ai-edge-litert") == "2.3.0"
    assert '"ai-edge-litert==2.3.0"' in (ROOT / "pyproject.toml").read_text()
