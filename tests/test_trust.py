"""Uncertainty on the device: anytime MC, calibration and abstention carried by a file, old files.

The runtime part runs on the committed fixtures (no TensorFlow): a fixture's metadata is rewritten
(``embed_metadata``, the format's own writer) to carry a temperature and an abstention threshold,
which is what ``convert`` stores. The conversion part converts a small real model with a held-out
split, through the library and through ``edgekit convert``.
"""

from __future__ import annotations

import json
import math
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import InvalidArgumentError
from edgekit.runtime import MCModel
from edgekit.runtime.anytime import Anytime, class_settled
from edgekit.runtime.calibration import Temperature, mutual_information
from edgekit.runtime.metadata import embed_metadata, read_metadata
from edgekit.runtime.plan import OutputSpec, TensorSpec

FIX = Path(__file__).parent / "fixtures"
# Every committed edgekit file (all edgekit/1) but the two that are not edgekit files.
EDGEKIT_FIXTURES = sorted(p.name for p in FIX.glob("*.tflite") if p.stem not in ("crash_segv", "foreign"))


def _x(model, n, seed=1):
    # Inputs inside every fixture's recorded range ([0, 1); the int8-input ones stop at 0.995).
    return 0.99 * np.random.default_rng(seed).random((n, *model.input.shape), dtype=np.float32)


def _with_fits(name: str, temperature: float = 0.7, mi_slope: float = 1.5, threshold: float | None = 0.5) -> bytes:
    """A fixture as an edgekit/2 file carrying a temperature and an abstention threshold."""
    data = (FIX / name).read_bytes()
    meta = read_metadata(data)
    probe = MCModel(data, probe=False)
    out = probe.plan.output
    meta = {**meta, "format": "edgekit/2", "outputs": [{
        "name": out.name, "task": "classification", "activation": "softmax", "shape": [out.num_classes],
        "class_names": list(out.class_names),
        "calibration": {"method": "temperature", "temperature": temperature, "mi_slope": mi_slope},
        "abstain": None if threshold is None else {"score": "confidence", "threshold": threshold,
                                                    "target_coverage": 0.9},
    }]}
    return embed_metadata(data, meta)


# ---------------------------------------------------------------------------- the settled rule


def test_class_settled_is_a_paired_k_se_test():
    # Two classes, four samples: the difference top - runner-up is 2p - 1 per sample.
    p1 = np.array([0.65, 0.75, 0.7, 0.8])
    probs = np.stack([1 - p1, p1], axis=-1)
    d = 2 * p1 - 1  # [0.3, 0.5, 0.4, 0.6]: mean 0.45, sd 0.1291 (ddof 1), SE 0.0645
    se = d.std(ddof=1) / 2
    k_edge = d.mean() / se  # 6.97
    assert class_settled(probs, k_edge - 0.01) and not class_settled(probs, k_edge + 0.01)
    # Batched over inputs, and the one-input path the runtime takes agrees with it.
    plan = types.SimpleNamespace(outputs=(OutputSpec(TensorSpec("probs", (2,), np.float32), columns=(0, 2)),))
    both = np.stack([probs, probs[:, ::-1]])  # the mirror image leads by the same margin
    assert class_settled(both, 6.0).tolist() == [True, True]
    assert Anytime(k=6.0).settled(plan, probs.astype(np.float32))
    assert not Anytime(k=7.5).settled(plan, probs.astype(np.float32))


def test_samples_in_exact_agreement_settle_and_a_tie_never_does():
    agree = np.tile([[0.1, 0.9]], (8, 1))
    tie = np.tile([[0.5, 0.5]], (8, 1))
    assert class_settled(agree, 100.0)  # no spread left to average out
    assert not class_settled(tie, 1e-9)


def test_value_outputs_stop_on_the_standard_error_of_the_mean():
    spec = OutputSpec(TensorSpec("v", (1,), np.float32), task="regression", activation=None, shape=(1,),
                      columns=(0, 1), noise_variance=(4.0,))
    plan = types.SimpleNamespace(outputs=(spec,))
    rows = np.random.default_rng(0).normal(0, 0.5, (16, 1)).astype(np.float32)
    se = float(rows.std(ddof=1)) / 4
    # Absolute: the tolerance in the value's units.
    assert Anytime().settled(plan, rows, tolerance=se * 1.01) and not Anytime().settled(plan, rows, tolerance=se * 0.99)
    # Relative: a tenth of the predictive sd sqrt(0.25 + 4) ~ 2.06 is far above SE ~ 0.13 ...
    assert Anytime().settled(plan, rows)
    # ... but without the noise variance the samples' own sd (0.5) needs t >= 100.
    bare = types.SimpleNamespace(outputs=(OutputSpec(TensorSpec("v", (1,), np.float32), task="regression",
                                                     activation=None, shape=(1,), columns=(0, 1)),))
    assert not Anytime().settled(bare, rows)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"k": 0}, "Expected `k` to be a finite number > 0"),
    ({"k": math.inf}, "Expected `k` to be a finite number > 0"),
    ({"min_samples": 1}, "Expected `min_samples` to be an integer >= 2"),
    ({"every": 0}, "Expected `every` to be an integer >= 1"),
    ({"value_share": 1.0}, r"Expected `value_share` in \(0, 1\)"),
])
def test_bad_rules_are_refused(kwargs, pattern):
    with pytest.raises(InvalidArgumentError, match=pattern):
        Anytime(**kwargs)


# ---------------------------------------------------------------------------- anytime in the runtime


@pytest.mark.parametrize("name", ["mlp_twin.tflite", "mlp_ingraph.tflite", "mlp_seeded.tflite", "cnn_mask.tflite"])
def test_anytime_draws_min_samples_then_every_and_stops_at_the_cap(name):
    model = MCModel(FIX / name, seed=0)
    x = _x(model, 64)
    pred = model.predict(x, anytime=True)
    # The schedule: 8, then 4 at a time, up to the cap of 100.
    assert set(pred.samples.tolist()) <= set(range(8, 101, 4))
    # Some of 64 random inputs settle early and some are close calls (measured: 8 to 100 on each fixture).
    assert pred.samples.min() < 100 and pred.samples.max() > 8
    assert not pred.budget_cut.any()
    # An impossible lead draws every sample; a lead of any size stops at the first check.
    assert (model.predict(x[:8], anytime=Anytime(k=1e9), samples=40).samples == 40).all()
    assert (model.predict(x[:8], anytime=Anytime(k=1e-9, min_samples=6)).samples == 6).all()
    # Without anytime nothing changed: fixed T.
    assert (model.predict(x[:4], samples=30).samples == 30).all()


def test_anytime_answer_is_the_mean_of_the_samples_it_drew():
    # Seeded numpy masks: the anytime call and a fixed-T call of the same length draw the same
    # masks, so an input stopped at t has exactly the t-sample mean.
    x = _x(MCModel(FIX / "mlp_twin.tflite"), 1)
    early = MCModel(FIX / "mlp_twin.tflite", seed=7).predict(x, anytime=True)
    t = int(early.samples[0])
    fixed = MCModel(FIX / "mlp_twin.tflite", seed=7).predict(x, samples=t)
    np.testing.assert_allclose(early.mean, fixed.mean, atol=1e-6)  # float32 sums in another order


def test_anytime_under_a_budget_stops_when_settled_and_samples_whole_batches():
    model = MCModel(FIX / "mlp_fixed_int8.tflite", seed=0)  # head at batch 4: chunks of 4
    x = _x(model, 16)
    # A generous budget would draw all 100 samples; settled inputs stop at the first check.
    assert (model.predict(x, budget_ms=5000, samples=100).samples == 100).all()
    pred = model.predict(x, budget_ms=5000, samples=100, anytime=Anytime(k=1e-9))
    assert (pred.samples == 8).all() and not pred.budget_cut.any()
    odd = model.predict(x[:4], anytime=Anytime(k=1e-9, min_samples=5, every=3))
    assert (odd.samples % 4 == 0).all()  # 5 and 3 round up to the sampler's batch


def test_anytime_argument_is_checked():
    model = MCModel(FIX / "mlp_twin.tflite")
    with pytest.raises(InvalidArgumentError, match="Expected `anytime` to be True, False or"):
        model.predict(_x(model, 1), anytime="yes")


# ---------------------------------------------------------------------------- calibration on the device


def test_a_files_temperature_is_applied_per_sample_and_can_be_turned_off():
    data = _with_fits("mlp_twin.tflite", temperature=0.6, mi_slope=2.0, threshold=0.7)
    x = _x(MCModel(data, probe=False), 32)
    raw = MCModel(data, seed=3, calibrated=False).sample(x, 50)
    cal = MCModel(data, seed=3).predict(x, samples=50)  # the same seed: the same 50 masks per input
    want = Temperature(math.log(0.6), 2.0).apply(raw).mean(axis=1)
    np.testing.assert_allclose(cal.mean, want, atol=1e-5)  # float32 summaries of float64 values
    assert cal.outputs[0].calibrated and cal.notes == ()
    # Abstention on the calibrated mean: 1 - confidence above the threshold.
    np.testing.assert_array_equal(cal.abstain, 1.0 - want.max(axis=1) > 0.7)
    assert 0 < cal.abstain.sum() < 32  # 0.7 splits these inputs (measured: 1 - confidence from 0.62 to 0.77)
    off = MCModel(data, seed=3, calibrated=False).predict(x, samples=50)
    np.testing.assert_allclose(off.mean, raw.mean(axis=1), atol=1e-6)
    assert not off.outputs[0].calibrated
    # The mutual information reported is that of the calibrated samples.
    np.testing.assert_allclose(cal.mutual_information, mutual_information(
        Temperature(math.log(0.6), 2.0).apply(raw)), atol=1e-5)
    # One sample (no spread, MI 0): the base temperature; anytime: the calibrated mean too.
    one = MCModel(data, seed=3).predict(x[:1], samples=1)
    first = MCModel(data, seed=3, calibrated=False).sample(x[:1], 1)
    np.testing.assert_allclose(one.mean, Temperature(math.log(0.6)).apply(first)[:, 0], atol=1e-5)
    assert MCModel(data).predict(x[:4], anytime=True).outputs[0].calibrated


@pytest.mark.parametrize("name", EDGEKIT_FIXTURES)
def test_files_before_calibration_load_and_run_uncalibrated_with_a_note(name):
    data = (FIX / name).read_bytes()
    assert read_metadata(data)["format"] == "edgekit/1"
    model = MCModel(data, seed=5)
    x = _x(model, 3)
    pred = model.predict(x, samples=12)
    assert pred.notes == (f"{model.plan.output.name}: uncalibrated (the file predates calibration (edgekit/1))",)
    assert not pred.outputs[0].calibrated and pred.outputs[0].abstain is None
    assert pred.to_dict()["notes"] == list(pred.notes)
    # calibrated=True (the default) changes nothing for such a file.
    again = MCModel(data, seed=5, calibrated=False).predict(x, samples=12)
    if model.masks_from == "numpy":  # seeded masks: the same draws, so the same numbers
        np.testing.assert_array_equal(pred.mean, again.mean)


# ---------------------------------------------------------------------------- the CLI's held-out split


def test_fashion_mnist_split_is_the_last_5000_and_the_pool_the_rest():
    from edgekit.trust import fashion_mnist_split

    x = np.arange(60_000)[:, None]
    y = np.arange(60_000) % 10
    pool, (xh, yh) = fashion_mnist_split(x, y)
    assert len(pool) == 55_000 and pool[-1, 0] == 54_999
    assert xh[0, 0] == 55_000 and len(xh) == len(yh) == 5000 and (yh == y[-5000:]).all()
    with pytest.raises(InvalidArgumentError, match="Expected a held-out split between 1 and"):
        fashion_mnist_split(x[:10], y[:10])


def test_rotation_keeps_shape_and_mass_and_a_half_turn_twice_is_identity():
    from edgekit.trust import rotate

    img = np.zeros((2, 28, 28), np.float32)
    img[:, 4:10, 12:16] = 1.0
    half = rotate(img, 180)
    assert half.shape == img.shape and half.dtype == np.float32
    np.testing.assert_allclose(rotate(half, 180), img, atol=1e-5)  # pixel centres map onto pixel centres
    quarter = rotate(img, 90)
    assert quarter.sum() == pytest.approx(img.sum(), rel=0.02)  # bilinear at 90 deg: an exact pixel permutation
    assert not np.allclose(quarter, img)
    np.testing.assert_array_equal(rotate(img, 0), img)


# ---------------------------------------------------------------------------- conversion with a held-out split

def _task(n, seed, sep=0.5):
    """A 10-class task on 28x28 inputs, hard enough that a small MLP is not certain of everything."""
    protos = np.random.default_rng(99).random((10, 28, 28), dtype=np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.clip(0.5 + sep * (protos[y] - 0.5) + 0.25 * rng.standard_normal((n, 28, 28)), 0, 1).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pytest.importorskip("tensorflow")
    import keras

    from edgekit.layers import MCDropout

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28), name="x"), keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
        MCDropout(0.3), keras.layers.Dense(64, activation="elu"), MCDropout(0.3),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    x, y = _task(2000, 0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    d = tmp_path_factory.mktemp("trust")
    model.save(d / "m.keras")
    xh, yh = _task(600, 1)
    xt, yt = _task(300, 2)
    np.savez(d / "data.npz", x_train=x[:300], y_train=y[:300], x_test=xt, y_test=yt, x_heldout=xh, y_heldout=yh)
    np.savez(d / "small.npz", x_train=x[:300], x_test=xt, y_test=yt, x_heldout=xh[:300], y_heldout=yh[:300])
    np.savez(d / "labels.npz", x_train=x[:300], x_test=xt, y_test=yt, x_heldout=xh, y_heldout=yh + 3)
    bad = xh.copy()
    bad[5, 3, 3] = np.nan
    np.savez(d / "nan.npz", x_train=x[:300], x_test=xt, y_test=yt, x_heldout=bad, y_heldout=yh)
    np.savez(d / "half.npz", x_train=x[:300], x_test=xt, y_test=yt, x_heldout=xh)
    np.savez(d / "plain.npz", x_train=x[:300], x_test=xt, y_test=yt)
    return types.SimpleNamespace(model=model, dir=d, heldout=(xh, yh), test=(xt, yt))


@pytest.mark.slow
@pytest.mark.train
def test_convert_fits_an_mi_aware_temperature_the_runtime_applies(trained):
    from edgekit.converters import convert, evaluate

    xh, yh = trained.heldout
    c = convert(trained.model, heldout_data=(xh, yh), heldout_samples=40, abstain_coverage=0.9)
    fit = c.report.heldout["outputs"]["probs"]
    # The default is the MI-aware fit (its reason names the slope; the plain fit's does not).
    assert c.report.heldout["method"] == "mi-temperature" and "MI slope" in fit["calibration"]["reason"]
    assert fit["calibration"]["applied"]
    assert fit["calibration"]["after"]["nll"] < fit["calibration"]["before"]["nll"]
    stored = c.metadata["outputs"][0]["calibration"]
    assert {k: stored[k] for k in ("method", "temperature", "mi_slope")} == fit["calibration"]["calibration"]
    assert stored["mi_slope"] >= 0 and stored["examples"] == 600 and stored["samples"] == 40
    assert stored["heldout_after"]["ece"] == fit["calibration"]["after"]["ece"]
    assert c.metadata["outputs"][0]["abstain"]["heldout_coverage"] == pytest.approx(0.9, abs=1 / 600 + 1e-9)
    assert MCModel(c.tflite, probe=False).plan.output.calibration == Temperature.from_dict(stored)
    plain = convert(trained.model, heldout_data=(xh, yh), heldout_samples=40, calibration="temperature")
    reason = plain.report.heldout["outputs"]["probs"]["calibration"]["reason"]
    assert "MI slope" not in reason and plain.metadata["outputs"][0]["calibration"]["mi_slope"] == 0.0
    none = convert(trained.model, heldout_data=(xh, yh), heldout_samples=40, calibration="none")
    assert none.metadata["outputs"][0]["calibration"] is None
    # The report: before/after on held-out and test data, the abstention and the risk-coverage curve.
    rep = evaluate(c, trained.model, *trained.test, samples=20)
    assert rep.calibration["before"]["ece"] > rep.calibration["after"]["ece"]  # under-confident model (measured)
    assert rep.calibration["abstain"]["coverage"] == pytest.approx(0.9, abs=0.07)  # 300 test inputs: 4 binomial SE
    curve = rep.calibration["risk_coverage"]["curve"]
    assert len(curve) == 20 and curve[-1][0] == 1.0
    assert curve[-1][1] == pytest.approx(1 - rep.calibration["after"]["accuracy"])  # all answered: the error rate
    table = rep.to_table()
    for line in ("calibration      mi-temperature on 600 held-out inputs, T=40: applied", "  held-out  before",
                 "  test      after", "abstention       abstain when 1 - confidence >", "risk-coverage    AURC"):
        assert line in table, table
    json.dumps(rep.to_dict())


@pytest.mark.slow
@pytest.mark.train
def test_small_heldout_split_is_an_error_or_a_warning_when_forced(trained):
    from edgekit.converters import convert
    from edgekit.converters.calibrate import SmallHeldOutWarning

    xh, yh = trained.heldout
    with pytest.raises(InvalidArgumentError, match="Expected at least 500"):
        convert(trained.model, heldout_data=(xh[:499], yh[:499]), heldout_samples=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = convert(trained.model, heldout_data=(xh[:200], yh[:200]), heldout_samples=5, force_small_heldout=True)
    small = [w for w in caught if issubclass(w.category, SmallHeldOutWarning)]
    assert len(small) == 1 and "200 examples" in str(small[0].message)  # once, not once per fit
    assert c.report.heldout["examples"] == 200
    with pytest.raises(InvalidArgumentError, match=r"Expected held-out labels in \[0, 9\].*Received: labels in"):
        convert(trained.model, heldout_data=(xh, yh + 1), heldout_samples=5)
    bad = xh.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match="Expected finite values"):
        convert(trained.model, heldout_data=(bad, yh), heldout_samples=5)


def _cli(*args):
    from click.testing import CliRunner

    from edgekit.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def _error(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, r.output
    return lines[0]


@pytest.mark.slow
@pytest.mark.train
def test_cli_convert_fits_on_the_npz_heldout_split_and_reports_it(trained):
    d = trained.dir
    out, rep = d / "cal.tflite", d / "cal.json"
    r = _cli("convert", d / "m.keras", "-o", out, "--data", d / "data.npz", "--examples", 100, "--samples", 10,
             "--heldout-samples", 30, "--abstain-coverage", 0.8, "--report", rep)
    assert r.exit_code == 0, r.output
    assert "calibration      mi-temperature on 600 held-out inputs, T=30" in r.stdout
    report = json.loads(rep.read_text())
    assert report["heldout"]["outputs"]["probs"]["abstain"]["target_coverage"] == 0.8
    assert report["calibration"]["after"] is not None
    meta = read_metadata(out.read_bytes())["outputs"][0]
    assert meta["calibration"]["method"] == "temperature" and meta["abstain"]["score"] == "confidence"
    # No held-out arrays: no calibration, and the table says so.
    r = _cli("convert", d / "m.keras", "-o", d / "raw.tflite", "--data", d / "plain.npz", "--examples", 50,
             "--samples", 5)
    assert r.exit_code == 0, r.output
    assert "calibration      none: no held-out data" in r.stdout
    assert read_metadata((d / "raw.tflite").read_bytes())["outputs"][0]["calibration"] is None
    # --calibration none, --abstain-coverage 0: a file with neither.
    r = _cli("convert", d / "m.keras", "-o", d / "none.tflite", "--data", d / "data.npz", "--examples", 0,
             "--calibration", "none", "--abstain-coverage", 0)
    assert r.exit_code == 0, r.output
    entry = read_metadata((d / "none.tflite").read_bytes())["outputs"][0]
    assert entry["calibration"] is None and entry["abstain"] is None


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("data, extra, code, message", [
    ("small.npz", [], 1, ("Error: A held-out split of 300 examples is too small for a stable calibration fit. "
                          "Expected at least 500")),
    ("labels.npz", [], 1, ("Error: Expected held-out labels in [0, 9] (the model's classes). "
                           "Received: labels in [3, 12]")),
    ("nan.npz", [], 1, "Expected finite values"),
    ("half.npz", [], 1, "Expected held-out targets with x_heldout"),
    ("plain.npz", ["--calibration", "temperature"], 2, "--calibration temperature fits a class output"),
])
def test_cli_bad_heldout_data(trained, data, extra, code, message):
    d = trained.dir
    r = _cli("convert", d / "m.keras", "-o", d / "bad.tflite", "--data", d / data, "--examples", 0,
             "--heldout-samples", 5, *extra)
    assert r.exit_code == code, r.output
    assert message in (_error(r) if code == 1 else r.stderr)
    assert not (d / "bad.tflite").exists()


@pytest.mark.slow
@pytest.mark.train
def test_cli_forced_small_heldout_converts_with_a_warning(trained):
    d = trained.dir
    r = _cli("convert", d / "m.keras", "-o", d / "small.tflite", "--data", d / "small.npz", "--examples", 0,
             "--heldout-samples", 5, "--force-small-heldout")
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("Warning: ")]
    assert warned == [("Warning: a held-out split of 300 examples is too small for a stable calibration fit (expected at least "
                       "500); fitting on it anyway, as forced")]
    assert read_metadata((d / "small.tflite").read_bytes())["outputs"][0]["calibration"] is not None
