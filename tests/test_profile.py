"""Profiling: statistics with known answers, the arena estimate, the recommendation rule, and the
``edgekit profile`` command on the committed fixtures (real LiteRT, no TensorFlow).

Timings themselves are not asserted here (the machine is shared and noisy); the acceptance numbers
come from ``bench/profile_check.py``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.cli import cli
from edgekit.runtime.metrics import ece, nll
from edgekit.runtime.profiling import (
    AccuracyPoint,
    LatencyPoint,
    accuracy_curve,
    estimate_arena_bytes,
    mc_probabilities,
    model_dtypes,
    model_ops,
    percentile_stats,
    profile_model,
    recommend,
)

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
MLP, MLP_MASK, BOOK = FIX / "mlp_ingraph.tflite", FIX / "mlp_mask.tflite", FIX / "book_ingraph.tflite"
MLP_TWIN, INPUT_TWIN = FIX / "mlp_twin.tflite", FIX / "input_mc_twin.tflite"


# ------------------------------------------------------------------ JSON schema from the doc


def _schema() -> dict:
    text = (ROOT / "docs" / "profile-schema.md").read_text()
    block = re.search(r"## Schema\n```json\n(.*?)\n```", text, re.DOTALL)
    assert block, "docs/profile-schema.md must end with the schema in a ```json block"
    return json.loads(block.group(1))


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _validate(value, schema, where="$") -> list[str]:
    """The subset of JSON Schema the profile schema uses: type, enum, properties, required,
    additionalProperties, items, minimum, pattern. Returns the errors found."""
    errors = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types

        def ok(t):
            if t == "integer":
                return isinstance(value, int) and not isinstance(value, bool)
            if t == "number":
                return isinstance(value, (int, float)) and not isinstance(value, bool)
            return isinstance(value, _TYPES[t])

        if not any(ok(t) for t in types):
            return [f"{where}: expected {types}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing {key}")
        for key, v in value.items():
            if key in props:
                errors += _validate(v, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {key}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _validate(v, schema["items"], f"{where}[{i}]")
    return errors


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "book.npz"
    np.savez(path, x=rng.random((60, 28, 28), dtype=np.float32), y=rng.integers(0, 10, 60))
    return path


def test_json_output_follows_the_documented_schema(labelled):
    result = _run("profile", BOOK, "--runs", 5, "--warmup", 1, "--sweep", "1,4", "--threads", "1,2",
                  "--data", labelled, "--examples", 40, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert _validate(report, _schema()) == []
    m = report["models"][0]
    assert [(p["threads"], p["samples"]) for p in m["latency"]] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    assert [a["samples"] for a in m["accuracy"]] == [1, 4] and m["accuracy"][0]["examples"] == 40
    assert report["data"] == {"source": str(labelled), "examples": 40}


def test_compare_mode_reports_ratios_and_validates():
    result = _run("profile", MLP, MLP_MASK, "--runs", 5, "--warmup", 1, "--sweep", "1,8", "--json", "--no-runtime")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert _validate(report, _schema()) == []
    comp = report["comparison"]
    a, b = report["models"]
    assert comp["model_bytes_ratio"] == pytest.approx(b["model_bytes"] / a["model_bytes"])
    row = comp["latency"][1]
    assert row["p50_ratio"] == pytest.approx(b["latency"][1]["p50_ms"] / a["latency"][1]["p50_ms"])
    assert (a["stochastic"], b["stochastic"]) == ("in-graph", "mask-input")
    assert {p["runtime_p50_ms"] for m in report["models"] for p in m["latency"]} == {None}  # --no-runtime


def test_the_validator_rejects_what_the_schema_forbids():
    report = json.loads(_run("profile", MLP, "--runs", 3, "--warmup", 0, "--sweep", "2", "--json").stdout)
    assert _validate(report, _schema()) == []
    broken = json.loads(json.dumps(report))
    broken["models"][0]["latency"][0]["p50_ms"] = "fast"
    del broken["models"][0]["recommended"]
    broken["extra"] = 1
    errors = _validate(broken, _schema())
    assert "$.models[0].latency[0].p50_ms: expected ['number'], got str" in errors
    assert "$.models[0]: missing recommended" in errors
    assert "$: unexpected key extra" in errors


def test_human_table_and_device_fit_check():
    result = _run("profile", MLP, "--runs", 3, "--warmup", 0, "--sweep", "1,2", "--device", "coral-edgetpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    header = "threads T strategy p50 ms p90 ms p99 ms p99 bound max ms trunk ms head ms runtime p50".split()  # noqa: SIM905
    assert header in [line.split() for line in out.splitlines()], out  # columns right-aligned to their values
    # An in-graph float model does not fit the Edge TPU: the random op and the float tensors.
    assert "does not fit coral-edgetpu: op RANDOM_UNIFORM is not supported on coral-edgetpu" in out
    assert "does not fit coral-edgetpu: float32 tensors are not supported" in out
    assert "not on coral-edgetpu" in result.stderr  # timings are of this machine, and it says so


def test_plot_is_a_png_and_never_overwrites_an_input(tmp_path, labelled):
    from PIL import Image

    png = tmp_path / "p.png"
    result = _run("profile", BOOK, "--runs", 5, "--warmup", 1, "--sweep", "1,3", "--data", labelled,
                  "--examples", 20, "-o", png)
    assert result.exit_code == 0, result.output
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 1000 and im.height > 400  # three panels side by side
    copy = tmp_path / "m.tflite"
    copy.write_bytes(MLP.read_bytes())
    result = _run("profile", copy, "--runs", 2, "--plot", copy)  # the older name of -o
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Refusing to overwrite an input.")
    assert copy.read_bytes() == MLP.read_bytes()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--sweep", "0,3"], 2, "Expected a comma-separated list of integers >= 1. Received: '0,3'"),
        (["--threads", "two"], 2, "Expected a comma-separated list of integers >= 1. Received: 'two'"),
        (["--runs", "0"], 2, "--runs"),
        (["--device", "rpi9"], 1, "Error: Unknown device profile."),
        (["--data", "nowhere.npz"], 2, "Expected 'fashion-mnist' or an existing .npz file."),
    ],
)
def test_bad_options(args, code, message):
    result = _run("profile", MLP, *args)
    assert result.exit_code == code
    assert message in result.output


def test_data_of_the_wrong_shape_is_a_one_line_error(labelled):
    result = _run("profile", MLP, "--runs", 2, "--data", labelled)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: Expected data inputs shaped [N, 20]. Received: [60, 28, 28]"


def test_three_models_is_a_usage_error():
    result = _run("profile", MLP, MLP, MLP)
    assert result.exit_code == 2 and "Expected one model, or two to compare. Received: 3 models" in result.output


# ------------------------------------------------------------------ library, known answers


def test_percentiles_match_numpy_and_order():
    lat = list(np.linspace(1.0, 100.0, 100))
    s = percentile_stats(lat)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01) and s["max_ms"] == 100.0
    assert s["p99_upper_ms"] == 100.0  # 100 runs cannot bound a p99 below the max at 95%
    # 1000 runs 1..1000: P(Binomial(1000, 0.99) <= 994) = 0.934 < 0.95 <= P(<= 995) = 0.971
    # (exact sums of math.comb terms), so the bound is the 996th smallest.
    assert percentile_stats(list(range(1, 1001)))["p99_upper_ms"] == 996.0
    with pytest.raises(ValueError, match="Expected at least one latency"):
        percentile_stats([])


def test_accuracy_nll_ece_known_answers():
    # 4 inputs, 2 samples, 2 classes. Sample 0 is one-hot on the label for inputs 0-1 and on the
    # wrong class for inputs 2-3; sample 1 is uniform (0.5, 0.5) everywhere.
    y = np.array([0, 1, 0, 1])
    probs = np.zeros((4, 2, 2))
    probs[:, 1] = 0.5
    probs[0, 0] = [1, 0]
    probs[1, 0] = [0, 1]
    probs[2, 0] = [0, 1]
    probs[3, 0] = [1, 0]
    t1, t2 = accuracy_curve(probs, y, [1, 2])
    assert t1.accuracy == 0.5
    assert t1.nll == pytest.approx(-np.log(1e-12) / 2)  # two certain mistakes hit the 1e-12 clip
    assert t1.ece == pytest.approx(0.5)  # confidence 1 everywhere, accuracy 1/2
    # T=2: mean (0.75, 0.25) on the label for inputs 0-1 and against it for 2-3.
    assert t2.accuracy == 0.5
    assert t2.nll == pytest.approx(-(2 * np.log(0.75) + 2 * np.log(0.25)) / 4)
    assert t2.ece == pytest.approx(0.25)  # one bin, confidence 0.75, accuracy 0.5
    with pytest.raises(ValueError, match=r"Expected 1 <= T <= 2. Received: T=3"):
        accuracy_curve(probs, y, [3])


def _pt(threads, samples, p99):
    # p99_upper_ms is what recommend() compares with the budget; the point p99 is set lower on
    # purpose so a test would notice if recommend() used it instead.
    return LatencyPoint(threads, samples, 10, p99 / 4, p99 / 3, p99 / 2, p99, p99 / 4, p99, None, p99 / 4)


def test_recommend_without_data_takes_the_largest_t_that_fits():
    pts = [_pt(1, 1, 0.5), _pt(1, 10, 2.0), _pt(1, 100, 9.0), _pt(2, 100, 4.5)]
    r = recommend(pts, 5.0)
    assert (r.samples, r.threads, r.p99_upper_ms) == (100, 2, 4.5)
    r = recommend(pts, 0.1)
    assert r.samples is None and r.reason.startswith("no T fits")


def test_recommend_with_data_stops_at_the_plateau():
    pts = [_pt(1, t, 0.1 * t) for t in (1, 10, 30, 100)]
    # 10000 examples: one standard error at 0.88 is 0.0032; T=30 is within it of the best (T=100).
    acc = [AccuracyPoint(1, 10000, 0.85, 0.5, 0.05), AccuracyPoint(10, 10000, 0.87, 0.4, 0.03),
           AccuracyPoint(30, 10000, 0.878, 0.36, 0.02), AccuracyPoint(100, 10000, 0.88, 0.35, 0.02)]
    assert recommend(pts, 100.0, acc).samples == 30
    # The plateau does not fit: the most accurate T that fits.
    r = recommend(pts, 1.5, acc)
    assert r.samples == 10 and "does not fit" in r.reason


def test_recommend_waits_for_the_ece_plateau():
    pts = [_pt(1, t, 0.1 * t) for t in (1, 10, 30, 100)]
    # Accuracy is on its plateau from T=10 (within 1 SE 0.0032 of 0.88), but T=10's ECE 0.03 is
    # more than one ECE standard error (0.004) above the lowest, 0.02: T=30 is the answer.
    acc = [AccuracyPoint(1, 10000, 0.85, 0.5, 0.08, 0.004, True),
           AccuracyPoint(10, 10000, 0.878, 0.4, 0.03, 0.004, True),
           AccuracyPoint(30, 10000, 0.879, 0.36, 0.023, 0.004, True),
           AccuracyPoint(100, 10000, 0.88, 0.35, 0.02, 0.004, True)]
    r = recommend(pts, 100.0, acc)
    assert r.samples == 30 and "ECE 0.0230 <= lowest 0.0200 + 1 SE 0.0040, calibrated" in r.reason
    # With a wide ECE error, T=10 is on both plateaus.
    wide = [dataclasses.replace(a, ece_se=0.02) for a in acc]
    assert recommend(pts, 100.0, wide).samples == 10


def test_accuracy_curve_applies_the_temperature_at_each_t():
    from edgekit.runtime.calibration import Temperature

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), (500, 6))
    y = rng.integers(0, 4, 500)
    cal = Temperature(np.log(0.7), 1.0)
    (p3,) = accuracy_curve(probs, y, [3], calibration=cal)
    mean = cal.apply(probs[:, :3]).mean(axis=1)  # MI of the first 3 samples, as the runtime at T=3
    assert p3.calibrated and p3.ece == pytest.approx(ece(mean, y)) and p3.nll == pytest.approx(nll(mean, y))
    # The bootstrap SE of the ECE: positive, seeded, and of the size of a binomial SE at N=500.
    assert 0.005 < p3.ece_se < 0.05 and accuracy_curve(probs, y, [3], calibration=cal)[0].ece_se == p3.ece_se


def test_arena_estimate_golden():
    # mlp_mask head: features [b,64], mask_0 [b,64] and MUL's output [b,64] are live together
    # at the first op (float32): 3 * 64 * 4 * b bytes; the later FC/softmax tensors are smaller.
    data = MLP_MASK.read_bytes()
    assert [estimate_arena_bytes(data, "head", b) for b in (1, 7)] == [768, 768 * 7]
    with pytest.raises(ValueError, match="Expected a signature of the model. Received: signature='nope'"):
        estimate_arena_bytes(data, "nope")


def test_model_ops_and_dtypes():
    assert model_ops(MLP_MASK.read_bytes()) == ["FULLY_CONNECTED", "MUL", "SOFTMAX"]
    assert "RANDOM_UNIFORM" in model_ops(MLP.read_bytes())
    assert model_dtypes(MLP_MASK.read_bytes()) == ["float32"]
    assert model_dtypes((FIX / "cnn_mask.tflite").read_bytes()) == ["float32", "int32"]  # reshape shapes


def test_mc_probabilities_mask_mode_is_seeded_and_stochastic():
    x = np.random.default_rng(1).random((3, 20), dtype=np.float32)
    a = mc_probabilities(MLP_MASK, x, 16, seed=5)
    b = mc_probabilities(MLP_MASK, x, 16, seed=5)
    assert a.shape == (3, 16, 5)
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)  # softmax rows, float32 rounding
    np.testing.assert_array_equal(a, b)  # masks come from the seeded numpy generator
    # 64 dropout units at rate 0.3: two masks agree by chance with probability ~0.58**64.
    assert np.ptp(a[0], axis=0).max() > 1e-4


@pytest.mark.parametrize("twin, plain_sig, feed", [
    (MLP_TWIN, "head", "features"),  # trunk + `masked` (the head's twin)
    (INPUT_TWIN, "full", "x"),  # no trunk: `masked` is the full graph's twin
])
def test_masked_twin_is_run_with_seeded_numpy_masks(twin, plain_sig, feed):
    from ai_edge_litert.interpreter import Interpreter

    data = twin.read_bytes()
    x = np.random.default_rng(1).random((2, 20 if feed == "features" else 64), dtype=np.float32)
    n = 3000
    a = mc_probabilities(twin, x, n, seed=5)
    # Masks from the seeded numpy generator, as MCModel(rng="auto") draws them: the file's own
    # unseeded RANDOM_UNIFORM would never repeat.
    np.testing.assert_array_equal(a, mc_probabilities(twin, x, n, seed=5))
    assert not np.array_equal(a, mc_probabilities(twin, x, n, seed=6))
    # Same distribution as the file's own RANDOM_UNIFORM path (head or full, stock interpreter).
    it = Interpreter(model_content=data)
    first = it.get_signature_runner("trunk")(x=x)["features"] if feed == "features" else x
    b = it.get_signature_runner(plain_sig)(**{feed: np.repeat(first, n, axis=0)})["probs"].reshape(2, n, -1)
    se = np.sqrt(a.var(axis=1) / n + b.var(axis=1) / n)
    # 5 standard errors of the difference of two independent 3000-sample means: ~6e-7 two-sided
    # per class (normal), so a false failure over these 10 classes is ~6e-6; the 1e-6 floor is for
    # classes whose probability barely moves. A wrong rate or scale shifts the mean by far more.
    assert np.all(np.abs(a.mean(axis=1) - b.mean(axis=1)) <= 5 * se + 1e-6)
    # The arena is the one of what runs at batch T: `masked` (mask inputs included) after the trunk,
    # or `full` where the runtime runs that.
    rep = profile_model(twin, threads=(1,), samples=(1, 3), runs=2, warmup=0, runtime=False)
    point = rep.point(1, 3)
    if point.strategy == "trunk+head":
        expected = max(estimate_arena_bytes(data, "masked", 3), estimate_arena_bytes(data, "trunk", 1))
    else:
        expected = estimate_arena_bytes(data, "full" if feed == "features" else "masked", 3)
    assert rep.arena_bytes[3] == expected
    if feed == "x":  # no trunk: one way to run it
        assert [p.strategy for p in rep.latency] == ["full", "full"]


def test_profile_model_points_and_ordering():
    rep = profile_model(MLP, threads=(1,), samples=(1, 5, 500), runs=8, warmup=1, budget_ms=1e6)
    assert [p.samples for p in rep.latency] == [1, 5, 500]
    for p in rep.latency:
        assert p.p50_ms <= p.p90_ms <= p.p99_ms <= p.max_ms and len(p.latencies_ms) == 8
        # The trunk is timed apart where it runs apart; `full` at batch T has no trunk part.
        assert (p.trunk_p50_ms is not None and p.trunk_p50_ms > 0) == (p.strategy == "trunk+head")
        assert p.head_p50_ms > 0
    assert rep.strategy == rep.latency[-1].strategy and rep.recommended.samples == 500  # everything fits 1e6 ms
    assert all(p.runtime_p50_ms > 0 and p.runtime_p99_ms >= p.runtime_p50_ms for p in rep.latency)
    lean = profile_model(MLP, threads=(1,), samples=(1,), runs=3, warmup=0, runtime=False)
    assert lean.latency[0].runtime_p50_ms is None and lean.latency[0].runtime_p99_ms is None
    assert rep.arena_bytes[5] >= rep.arena_bytes[1]


# ------------------------------------------------------------------ base install only


def test_profile_runs_with_tensorflow_and_keras_blocked(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "matplotlib"):
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        from edgekit.cli import cli
        try:
            cli(["profile", {str(MLP_MASK)!r}, "--runs", "3", "--warmup", "0", "--sweep", "1,4", "--json"],
                prog_name="edgekit", standalone_mode=False)
        finally:
            assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["models"][0]["stochastic"] == "mask-input" and len(report["models"][0]["latency"]) == 2


def test_progress_counts_every_prediction():
    done = []
    x = np.random.default_rng(2).random((7, 20), dtype=np.float32)
    profile_model(MLP, threads=(1, 2), samples=(1, 3), runs=4, warmup=2, x=x, y=np.zeros(7, int),
                  runtime=False, progress=done.append)
    # 2 thread counts x 2 T x (2 warm-up + 4 measured), then one call for the 7 labelled inputs.
    assert done == [6, 6, 6, 6, 7]


def test_device_problems_in_json_for_an_mcu():
    result = _run("profile", MLP_MASK, "--runs", 2, "--warmup", 0, "--sweep", "1,300", "--device", "cortex-m-tflm",
                  "--no-runtime", "--json")
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)["models"][0]
    # Float I/O is the only problem: the ops fit TFLM, and the batch-1 arena (768 bytes, see the
    # golden above) fits its 192 KiB of RAM. At batch 300 it would not (230,400 bytes), but TFLM
    # runs the 300 passes one by one.
    assert m["device_problems"] == ["cortex-m-tflm needs int8 input/output tensors; the model has float32"]


@settings(max_examples=150, deadline=None)
@given(
    bounds=st.dictionaries(st.tuples(st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 5, 10, 30, 100])),
                           st.floats(0.01, 50.0), min_size=1),
    budget=st.floats(0.01, 50.0),
)
def test_recommend_without_data_properties(bounds, budget):
    pts = [_pt(t, s, b) for (t, s), b in bounds.items()]
    r = recommend(pts, budget)
    fitting = [p for p in pts if p.p99_upper_ms <= budget]
    if not fitting:
        assert r.samples is None and r.threads is None
        return
    # The largest T that fits, with the thread count whose bound is lowest at that T.
    assert r.samples == max(p.samples for p in fitting)
    chosen = next(p for p in pts if (p.threads, p.samples) == (r.threads, r.samples))
    assert chosen.p99_upper_ms <= budget and r.p99_upper_ms == chosen.p99_upper_ms
    assert chosen.p99_upper_ms == min(p.p99_upper_ms for p in pts if p.samples == r.samples)


def test_int8_io_model_is_quantized_in_and_dequantized_out():
    int8io = FIX / "mlp_int8io.tflite"
    x = np.random.default_rng(1).random((3, 20), dtype=np.float32)
    q = mc_probabilities(int8io, x, 400, seed=0)
    f = mc_probabilities(MLP, x, 400, seed=0)
    assert q.dtype == np.float32
    # Dequantized int8 softmax rows sum to 1 within a few output steps (scale 1/256 each).
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=5 / 256)
    # Same weights as mlp_ingraph (make_fixtures.py), quantized. The per-sample sd of a class
    # probability is <= 0.043 here (measured), so the difference of two 400-sample means has sd
    # <= 0.043 * sqrt(2/400) = 0.003; int8 steps are 1/256 = 0.004. 0.02 is > 4 sd of both together
    # (measured difference 0.004), but a sign or scale error in (de)quantization would exceed it.
    np.testing.assert_allclose(q.mean(1), f.mean(1), atol=0.02)
    rep = profile_model(int8io, threads=(1,), samples=(1, 4), runs=3, warmup=1, runtime=False)
    assert rep.quantization == "int8" and rep.stochastic == "in-graph"


# ------------------------------------------------------------------ one plan for predict, profile and report

ALL_FIXTURES = sorted(p.stem for p in FIX.glob("*.tflite") if p.stem != "crash_segv")


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_predict_profile_and_report_run_the_same_strategy(name):
    # Every committed fixture (crash_segv kills LiteRT: its probe test is in test_runtime.py)
    # through `edgekit predict`'s MCModel, `edgekit profile`'s profile_model and the conversion
    # report's runner: at each T all three name the same strategy, and each one's figures come
    # from running it (the profile's parts: a trunk time exactly where the trunk runs apart).
    import warnings

    from edgekit.converters.report import tflite_probs
    from edgekit.runtime import MCModel

    path = FIX / f"{name}.tflite"
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # foreign.tflite has no metadata
        model = MCModel(path)
    rep = profile_model(path, threads=(1,), samples=(1, 8, 256), runs=3, warmup=1, runtime=False)
    x = np.random.default_rng(0).uniform(0.0, 0.99, (1, *model.input.shape)).astype(np.float32)
    for p in rep.latency:
        strategy = model.strategy_at(p.samples)
        assert p.strategy == strategy, (p.samples, p.strategy, strategy)
        assert strategy in model.plan.strategies
        assert (p.trunk_p50_ms is not None) == (strategy == "trunk+head")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean, _, report_strategy = tflite_probs(data, x, p.samples, seed=None, threads=1)
        assert report_strategy == strategy, (p.samples, report_strategy, strategy)
        assert mean.shape == (1, model.num_classes)
    assert rep.strategy == rep.latency[-1].strategy


# ------------------------------------------------------------------ fixed-batch files (the `batch` metadata key)

# mlp_fixed_int8: full and trunk at batch 1, head at 4; mlp_fixed3_int8: trunk at 3, full at 2, head at 4.
FIXED = [FIX / "mlp_fixed_int8.tflite", FIX / "mlp_fixed3_int8.tflite"]


def _fixed_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Inside the int8 input's range [0, 0.995] (scale 1/256, zero point -128).
    return rng.uniform(0.0, 0.99, (n, 20)).astype(np.float32), rng.integers(0, 5, n)


@pytest.mark.parametrize("path", FIXED, ids=lambda p: p.stem)
def test_profile_runs_a_fixed_batch_file_at_its_batches(path):
    x, y = _fixed_data(7)  # 7 inputs: no whole number of trunk (3) or full (2) batches
    rep = profile_model(path, threads=(1,), samples=(1, 10, 30), runs=5, warmup=1, x=x, y=y, runtime=False)
    # The sampler's static batch is 4: T is drawn in whole batches, and the profile reports the T that ran.
    assert [p.samples for p in rep.latency] == [4, 12, 32]
    assert [a.samples for a in rep.accuracy] == [4, 12, 32] and rep.accuracy[0].examples == 7
    assert {p.strategy for p in rep.latency} == {"trunk+head"} and rep.recommended.samples % 4 == 0
    result = _run("profile", path, "--runs", 3, "--warmup", 0, "--json")  # the default sweep 1,10,30,100
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert _validate(report, _schema()) == []
    assert [p["samples"] for p in report["models"][0]["latency"]] == [4, 12, 32, 100]


@pytest.mark.parametrize("path", FIXED, ids=lambda p: p.stem)
def test_the_report_reads_a_fixed_batch_file_at_its_batches(path):
    from edgekit.converters.report import tflite_probs
    from edgekit.runtime import MCModel

    x, _ = _fixed_data(7, seed=1)
    data = path.read_bytes()
    mean, det, strategy = tflite_probs(data, x, 10, seed=3, threads=1)
    assert strategy == "trunk+head" and mean.shape == (7, 5) and det.shape == (7, 5)
    # The mean is over exactly T=10 samples (the first 10 of the 12 the batch-4 sampler drew), the
    # same draws as the runtime's own sample() with that seed: int8 outputs, so equal to float rounding.
    model = MCModel(data, seed=3, threads=1)
    np.testing.assert_allclose(mean, model.sample(x, 10)[:, :10].mean(axis=1), atol=1e-6)
    # Padding the last trunk or full batch never leaks into the rows that are kept: every row is
    # what that input gives alone.
    alone = np.concatenate([model.deterministic(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(det, alone)
    features = np.concatenate([model.features(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(model.features(x), features)
