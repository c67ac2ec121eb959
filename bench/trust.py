"""Uncertainty you can trust on the device: calibration after compression, anytime MC, abstention, shift.

Trains the demo's model (the book MLP on Fashion-MNIST, 15 epochs, seed 42, as ``make demo``
does) or loads ``--model``, converts it to float32, float16 and int8 with the fits ``edgekit
convert`` makes (an MI-aware temperature and a 90%-coverage abstention threshold, fitted on the
last 5,000 training images; int8 calibration inputs from the first 55,000), plus an int8 file
with the plain temperature, and measures, each file's own MC samples at T=100 (``--samples``):

- on the full test set: accuracy, ECE, NLL and Brier, uncalibrated and calibrated; the
  risk-coverage curve's area (AURC) and the abstention threshold's test coverage and selective
  accuracy;
- anytime MC (``MCModel.predict(x, anytime=True)``, cap 100) on the calibrated int8 file: mean
  samples per input, accuracy, ECE, NLL against a fixed T=100 run of the same file; the same
  rule replayed on the T=100 samples, in ``--orders`` random orders of them (how often its
  answer differs from theirs, and the spread of its accuracy and ECE cost); the latency of one
  input, anytime against fixed T=100, alternated in this process (a ratio: the machine is
  shared), and both under a budget;
- shift: rotated test images (0 to 180 degrees in steps of 15, Ovadia et al. 2019; bilinear,
  Pillow), accuracy, ECE and mean mutual information for float Keras MC and each file,
  calibrated and not.

It writes ``--out`` (JSON; ``acceptance`` holds every figure of issue 14 with its limit and
whether it passes) and, with ``--plots DIR``, the reliability diagrams and the shift plot.

    .venv/bin/python bench/trust.py --out bench/trust.json --plots bench/trust-plots
    .venv/bin/python bench/trust.py --model demo-out/book.keras --shift-examples 2000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

__all__ = ["main"]

MODES = ("float32", "float16", "int8")
IMAGE = {"height": 28, "width": 28, "channels": 1, "scale": 1 / 255, "offset": 0.0}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _model(args, ds):
    import keras

    from edgekit import recipes

    if args.model:
        return keras.models.load_model(args.model, compile=False), {"model": args.model}
    keras.utils.set_random_seed(args.seed)
    model = recipes.book(mean=float(ds.x_train.mean()), std=float(ds.x_train.std()))
    t = time.perf_counter()
    fit = recipes.train(model, ds.x_train, ds.y_train, epochs=args.epochs, batch_size=128, verbose=0)
    return model, {"model": "trained: book recipe", "epochs_run": fit.epochs_run, "seed": args.seed,
                   "val_accuracy": fit.val_accuracy, "seconds": round(time.perf_counter() - t, 1)}


def _keras_samples(model, x, samples: int) -> np.ndarray:
    from edgekit import mc

    return mc.predict(model, x, samples=samples).probs.transpose(1, 0, 2)  # [N, T, C]


def _replay_anytime(probs: np.ndarray, rule, cal) -> dict:
    """The anytime rule replayed on T samples already drawn: when it stops each input, and how the
    early answer compares with the answer of all T (the same samples: only the rule differs)."""
    from edgekit.runtime.anytime import class_settled

    n, t_max = probs.shape[:2]
    stop = np.full(n, t_max)
    live = np.ones(n, dtype=bool)
    for t in range(rule.min_samples, t_max, rule.every):
        idx = np.flatnonzero(live)
        if idx.size == 0:
            break
        done = class_settled(probs[idx, :t], rule.k)
        stop[idx[done]] = t
        live[idx[done]] = False
    early = np.empty(probs.shape[::2])
    for t in np.unique(stop):
        sel = stop == t
        p = probs[sel, :t]
        early[sel] = (p if cal is None else cal.apply(p)).mean(axis=1)
    full = (probs if cal is None else cal.apply(probs)).mean(axis=1)
    return {"stop": stop, "early": early, "full": full}


def _replay_orders(probs: np.ndarray, rule, cal, y: np.ndarray, orders: int) -> dict:
    """The replay in ``orders`` random orders of the T samples: the spread of what the rule costs
    (each order is another equally likely run; only the early answers change, the T-sample answer
    is the same). Accuracy and ECE changes are early minus all T."""
    from edgekit.converters.calibrate import class_metrics

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(orders):
        r = _replay_anytime(probs[:, rng.permutation(probs.shape[1])], rule, cal)
        early, full = class_metrics(r["early"], y), class_metrics(r["full"], y)
        rows.append((r["stop"].mean(), early["ece"] - full["ece"], 100 * (early["accuracy"] - full["accuracy"]),
                     early["nll"] - full["nll"], (r["early"].argmax(1) != r["full"].argmax(1)).mean()))
    a = np.array(rows)
    keys = ("mean_samples", "ece_change", "accuracy_change_points", "nll_change", "disagreement_with_T")
    return {"orders": orders, **{k: {"mean": float(a[:, i].mean()), "sd": float(a[:, i].std(ddof=1)),
                                     "min": float(a[:, i].min()), "max": float(a[:, i].max())}
                                 for i, k in enumerate(keys)}}


def _latency(model, x, samples: int, n: int) -> dict:
    """Median ms of one input, anytime against fixed T, alternated (same inputs, same process)."""
    fixed, any_ = [], []
    for i in range(n):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            if which == 0:
                model.predict(x[i], samples=samples)
                fixed.append(time.perf_counter() - t)
            else:
                model.predict(x[i], anytime=True, samples=samples)
                any_.append(time.perf_counter() - t)
    f, a = 1e3 * float(np.median(fixed)), 1e3 * float(np.median(any_))
    # Under a budget twice the fixed-T call's p50: both may draw up to T; the anytime call returns
    # what it saves as a lower elapsed_ms.
    budget = 2 * f
    model.warmup(budget_ms=budget, samples=samples)
    b_fixed = model.predict(x[:n], budget_ms=budget, samples=samples)
    b_any = model.predict(x[:n], budget_ms=budget, samples=samples, anytime=True)
    return {"inputs": n, "fixed_p50_ms": f, "anytime_p50_ms": a, "anytime_over_fixed": a / f,
            "fixed_mean_ms": 1e3 * float(np.mean(fixed)), "anytime_mean_ms": 1e3 * float(np.mean(any_)),
            "budget": {"budget_ms": budget,
                       "fixed": {"mean_samples": float(b_fixed.samples.mean()),
                                 "elapsed_ms_p50": float(np.median(b_fixed.elapsed_ms)),
                                 "elapsed_ms_p99": float(np.percentile(b_fixed.elapsed_ms, 99)),
                                 "cut": float(b_fixed.budget_cut.mean())},
                       "anytime": {"mean_samples": float(b_any.samples.mean()),
                                   "elapsed_ms_p50": float(np.median(b_any.elapsed_ms)),
                                   "elapsed_ms_p99": float(np.percentile(b_any.elapsed_ms, 99)),
                                   "cut": float(b_any.budget_cut.mean())}}}


def _curves(points: dict) -> dict:
    return {k: [{"angle": a, **m} for a, m in sorted(v.items())] for k, v in points.items()}


def run(args) -> dict:
    from edgekit.converters import convert
    from edgekit.converters.calibrate import class_metrics, risk_coverage
    from edgekit.data import load_fashion_mnist
    from edgekit.runtime import MCModel
    from edgekit.runtime.anytime import Anytime
    from edgekit.runtime.calibration import Abstention
    from edgekit.trust import ANGLES, class_quality, fashion_mnist_split, plot_reliability, plot_shift, rotate

    started = time.perf_counter()
    ds = load_fashion_mnist()
    model, trained = _model(args, ds)
    _say(f"model: {trained}")
    pool, heldout = fashion_mnist_split(ds.x_train, ds.y_train)
    # The CLI's calibration inputs: a fixed spread-out subset of the pool (edgekit convert's rule).
    rep = pool[np.sort(np.random.default_rng(0).permutation(len(pool))[:args.calibration_examples])]
    T = args.samples
    files: dict[str, MCModel] = {}
    fits = {}
    variants = [(m, "mi-temperature") for m in MODES] + [("int8", "temperature")]
    for mode, method in variants:
        key = mode if method == "mi-temperature" else f"{mode}-plain"
        t = time.perf_counter()
        converted = convert(model, quantize=mode, representative_data=rep if mode == "int8" else None,
                            class_names=list(ds.class_names), input_image=IMAGE, heldout_data=heldout,
                            heldout_samples=T, calibration=method, abstain_coverage=args.coverage)
        files[key] = MCModel(converted.tflite, probe=False, seed=args.seed)  # bytes convert() just wrote
        out = converted.report.heldout["outputs"]["probs"]
        fits[key] = {"seconds": round(time.perf_counter() - t, 1), "size_bytes": len(converted.tflite),
                     "calibration": out.get("calibration"), "abstain": out.get("abstain")}
        _say(f"converted {key}: {out['calibration']['reason']} ({fits[key]['seconds']} s)")

    # ---------------------------------------------------------------- test set, T samples
    x_test, y_test = ds.x_test, ds.y_test.astype(np.int64)
    test, samples_of = {}, {}
    t = time.perf_counter()
    k_probs = _keras_samples(model, x_test, T)
    test["keras"] = {"uncalibrated": class_quality(k_probs, y_test)}
    _say(f"keras test T={T}: {time.perf_counter() - t:.1f} s")
    for key, m in files.items():
        p = m.sample(x_test, T)
        samples_of[key] = p
        cal = m.plan.output.calibration
        entry = {"uncalibrated": class_quality(p, y_test),
                 "calibrated": class_quality(p, y_test, cal) if cal is not None else None,
                 "temperature": None if cal is None else cal.to_dict()}
        mean = (p if cal is None else cal.apply(p)).mean(axis=1)
        correct = mean.argmax(axis=1) == y_test
        rc = {}
        for score in ("confidence", "entropy"):
            _, _, rc[score] = risk_coverage(Abstention.score_of(score, mean), correct)
        entry["aurc"] = rc
        ab = m.plan.output.abstain
        if ab is not None:
            kept = ~ab.abstain(mean)
            entry["abstain"] = {**ab.to_dict(), "test_coverage": float(kept.mean()),
                                "test_selective_accuracy": float(correct[kept].mean()),
                                "test_accuracy_all": float(correct.mean())}
        test[key] = entry
        _say(f"{key} test: {entry['uncalibrated']['ece']:.4f} -> "
             f"{(entry['calibrated'] or entry['uncalibrated'])['ece']:.4f} ECE")

    # ---------------------------------------------------------------- anytime (calibrated int8)
    rule = Anytime()
    int8, p8 = files["int8"], samples_of["int8"]
    cal8 = int8.plan.output.calibration
    t = time.perf_counter()
    fixed = int8.predict(x_test, samples=T)
    t_fixed = time.perf_counter() - t
    t = time.perf_counter()
    early = int8.predict(x_test, anytime=rule, samples=T)
    t_any = time.perf_counter() - t
    replay = _replay_anytime(p8, rule, cal8)
    anytime = {
        "rule": {"k": rule.k, "min_samples": rule.min_samples, "every": rule.every, "cap": T},
        "runtime": {"mean_samples": float(early.samples.mean()),
                    "samples_p50_p90_p99": np.percentile(early.samples, [50, 90, 99]).tolist(),
                    "share_at_cap": float((early.samples >= T).mean()),
                    **class_metrics(early.mean.astype(np.float64), y_test), "seconds": t_any},
        "fixed": {**class_metrics(fixed.mean.astype(np.float64), y_test), "samples": T, "seconds": t_fixed},
        "disagreement_with_fixed_run": float((early.predicted != fixed.predicted).mean()),
        "replay": {"mean_samples": float(replay["stop"].mean()),
                   **{f"early_{k}": v for k, v in class_metrics(replay["early"], y_test).items()},
                   **{f"full_{k}": v for k, v in class_metrics(replay["full"], y_test).items()},
                   "disagreement_with_T": float((replay["early"].argmax(1) != replay["full"].argmax(1)).mean())},
        "replay_orders": _replay_orders(p8, rule, cal8, y_test, args.orders),
        "latency_one_input": _latency(int8, x_test, T, args.latency_inputs),
    }
    _say(f"anytime: {anytime['runtime']['mean_samples']:.2f} samples, replay disagreement "
         f"{anytime['replay']['disagreement_with_T']:.4f}")

    # ---------------------------------------------------------------- shift
    n_shift = min(args.shift_examples, len(x_test))
    xs, ys = x_test[:n_shift], y_test[:n_shift]
    points: dict[str, dict] = {"float Keras MC": {}}
    for key in files:
        points[f"{key} uncalibrated"] = {}
        points[f"{key} calibrated" if key != "int8-plain" else "int8 plain temperature"] = {}
    for angle in ANGLES:
        t = time.perf_counter()
        if angle == 0 and n_shift == len(x_test):
            xr, kp = xs, k_probs
        else:
            xr = rotate(xs, angle)
            kp = _keras_samples(model, xr, T)
        points["float Keras MC"][angle] = class_quality(kp, ys)
        for key, m in files.items():
            p = samples_of[key] if (angle == 0 and n_shift == len(x_test)) else m.sample(xr, T)
            cal = m.plan.output.calibration
            points[f"{key} uncalibrated"][angle] = class_quality(p, ys)
            name = f"{key} calibrated" if key != "int8-plain" else "int8 plain temperature"
            points[name][angle] = class_quality(p, ys, cal)
        _say(f"rotation {angle:3d}: {time.perf_counter() - t:.1f} s")
    shifted = [a for a in ANGLES if a > 0]
    kece = {a: points["float Keras MC"][a]["ece"] for a in ANGLES}
    gap = {name: float(np.mean([points[name][a]["ece"] - kece[a] for a in shifted]))
           for name in points if name != "float Keras MC"}
    mi_ratio = {a: points["int8 uncalibrated"][a]["mean_mi"] / points["float Keras MC"][a]["mean_mi"] for a in ANGLES}
    mi_ratio_cal = {a: points["int8 calibrated"][a]["mean_mi"] / points["float Keras MC"][a]["mean_mi"] for a in ANGLES}

    # ---------------------------------------------------------------- acceptance
    i8 = test["int8"]
    before, after = i8["uncalibrated"], i8["calibrated"] or i8["uncalibrated"]
    ab = i8.get("abstain") or {}
    rt, fx, ro = anytime["runtime"], anytime["fixed"], anytime["replay_orders"]

    def item(value, limit, ok):
        return {"value": value, "limit": limit, "pass": bool(ok)}

    # Accuracy changes are whole inputs out of 10,000: 10 of them is 0.1 points exactly, which
    # float64 may round a hair above 0.001.
    within_point = 0.001 + 1e-9

    acceptance = {
        "int8_calibrated_ece": item(after["ece"], "<= 0.011", after["ece"] <= 0.011),
        "int8_calibrated_accuracy_change_points": item(100 * (after["accuracy"] - before["accuracy"]), "within 0.1",
                                                       abs(after["accuracy"] - before["accuracy"]) <= within_point),
        "int8_calibrated_nll_change": item(after["nll"] - before["nll"], "<= 0", after["nll"] <= before["nll"]),
        "anytime_mean_samples": item(rt["mean_samples"], "<= 12", rt["mean_samples"] <= 12),
        "anytime_accuracy_change_points": item(100 * (rt["accuracy"] - fx["accuracy"]), "within 0.1",
                                               abs(rt["accuracy"] - fx["accuracy"]) <= within_point),
        "anytime_ece_change": item(rt["ece"] - fx["ece"], "<= 0.002", rt["ece"] <= fx["ece"] + 0.002),
        # The same two figures on the same samples, replayed in many orders: the rule's own cost,
        # without the noise of two independent runs.
        "anytime_replay_accuracy_change_points_mean": item(ro["accuracy_change_points"]["mean"], "within 0.1",
                                                           abs(ro["accuracy_change_points"]["mean"]) <= 0.1 + 1e-6),
        "anytime_replay_ece_change_mean": item(ro["ece_change"]["mean"], "<= 0.002",
                                               ro["ece_change"]["mean"] <= 0.002),
        "abstain_test_coverage": item(ab.get("test_coverage"), f"within 0.02 of {args.coverage}",
                                      ab and abs(ab["test_coverage"] - args.coverage) <= 0.02),
        "abstain_selective_accuracy": item(ab.get("test_selective_accuracy"), "reported", bool(ab)),
        "int8_mi_ratio_to_keras_worst": item(max(mi_ratio.values(), key=lambda r: abs(r - 1)),
                                             "within 10% at every angle",
                                             all(abs(r - 1) <= 0.10 for r in mi_ratio.values())),
        "int8_calibrated_mi_ratio_to_keras_worst": item(max(mi_ratio_cal.values(), key=lambda r: abs(r - 1)),
                                                        "reported (the MI the runtime reports)", True),
        "shift_mean_ece_gap_calibrated_int8": item(gap["int8 calibrated"], "<= 0.01 (mean over 15-180 deg)",
                                                   gap["int8 calibrated"] <= 0.01),
        "shift_mean_ece_gap_plain_temperature_int8": item(gap["int8 plain temperature"], "reported beside it", True),
    }
    if args.plots:
        os.makedirs(args.plots, exist_ok=True)
        kmean = k_probs.mean(axis=1)
        for key in MODES:
            m, p = files[key], samples_of[key]
            cal = m.plan.output.calibration
            plot_reliability(os.path.join(args.plots, f"reliability_{key}.png"), f"{key} file, test set, T={T}",
                             (kmean, y_test), (p.mean(axis=1), y_test),
                             None if cal is None else (cal.apply(p).mean(axis=1), y_test), name=f"{key} file")
        shown = ("float Keras MC", "float32 calibrated", "float16 calibrated", "int8 uncalibrated", "int8 calibrated",
                 "int8 plain temperature")
        plot_shift(os.path.join(args.plots, "shift.png"), {k: v for k, v in _curves(points).items() if k in shown},
                   title=f"Rotated Fashion-MNIST test images ({n_shift}), T={T}")
    return {
        "bench": "trust",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "note": "latency figures are ratios within this run"},
        "settings": {"samples": T, "seed": args.seed, "heldout": len(heldout[0]), "heldout_from": "last 5,000 train",
                     "calibration_examples": len(rep), "calibration_from": "first 55,000 train",
                     "abstain_coverage": args.coverage, "shift_examples": n_shift, "angles": list(ANGLES),
                     "rotation": "Pillow bilinear, zero fill"},
        "training": trained,
        "fits": fits,
        "test": test,
        "anytime": anytime,
        "shift": {"curves": _curves(points), "mean_ece_gap_to_keras_15_180": gap,
                  "int8_mi_ratio_to_keras": {str(a): r for a, r in mi_ratio.items()},
                  "int8_calibrated_mi_ratio_to_keras": {str(a): r for a, r in mi_ratio_cal.items()}},
        "acceptance": acceptance,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/trust.json")
    ap.add_argument("--plots", default=None, help="write the PNGs into this folder")
    ap.add_argument("--model", default=None, help="a trained .keras (default: train the demo's model)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--coverage", type=float, default=0.9)
    ap.add_argument("--calibration-examples", type=int, default=500)
    ap.add_argument("--shift-examples", type=int, default=10_000)
    ap.add_argument("--latency-inputs", type=int, default=500)
    ap.add_argument("--orders", type=int, default=20, help="sample orders the anytime rule is replayed in")
    args = ap.parse_args(argv)
    result = run(args)
    from edgekit.runtime.fileio import atomic_write_bytes

    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    for name, a in result["acceptance"].items():
        _say(f"{'PASS' if a['pass'] else 'FAIL'}  {name}: {a['value']} ({a['limit']})")
    return 0 if all(a["pass"] for a in result["acceptance"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
