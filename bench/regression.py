"""A real regression data set, offline: MC-dropout regression on scikit-learn's diabetes data, as JSON.

The diabetes data (442 patients, 10 features, disease progression a year later) ships inside
scikit-learn: nothing is downloaded. For each seed the script

1. splits the patients once (permutation seed 0): 110 test, 88 held out, 244 for training;
   standardizes inputs and targets with the training split's mean and std;
2. trains the issue's MLP regressor (Dense 64, Dropout 0.2, Dense 64, Dropout 0.2, Dense 1; Keras'
   own Dropout, then ``edgekit.mc.to_mc``) for ``--epochs`` epochs;
3. converts it to int8 (calibrated on the training inputs) with the held-out split for the noise
   variance fit (``heldout_data``; that split is neither the test set nor the calibration inputs),
   and once without it;
4. measures on the test split, with T MC samples, Keras MC against the int8 file
   (:func:`edgekit.converters.evaluate`, which summarizes both as ``edgekit predict`` does, with the
   file's noise variance): RMSE, Gaussian NLL and the coverage of the 90% interval; and what
   :meth:`edgekit.runtime.MCModel.predict` itself returns (the interval a user gets).

Acceptance (issue 13): the int8 file's 90% interval covers between 80% and 97% of the test
targets, and its RMSE is within 5% of Keras MC.

    .venv/bin/python bench/regression.py --out bench/regression.json [--seeds 0,1,2,3,4]

RMSE and NLL are in standardized units (RMSE times ``target_std`` gives disease-progression units).
No timings here: the figures are quality, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

__all__ = ["main", "run_seed", "split"]

TEST, HELDOUT = 110, 88
COVERAGE = (0.80, 0.97)
RMSE_RATIO = 1.05


def split():
    """``(x_train, y_train, x_heldout, y_heldout, x_test, y_test, target_std)``, standardized with the
    training split (targets as ``[n, 1]``)."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    idx = np.random.default_rng(0).permutation(len(x))
    test, held, train = idx[:TEST], idx[TEST:TEST + HELDOUT], idx[TEST + HELDOUT:]
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    y_mu, y_sd = y[train].mean(), y[train].std()

    def fx(a):
        return ((a - mu) / sd).astype(np.float32)

    def fy(a):
        return ((a - y_mu) / y_sd).astype(np.float32)[:, None]

    return fx(x[train]), fy(y[train]), fx(x[held]), fy(y[held]), fx(x[test]), fy(y[test]), float(y_sd)


def train(x, y, *, seed: int, epochs: int):
    """The issue's MLP regressor trained on (x, y), through to_mc."""
    import keras

    from edgekit import mc

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return mc.to_mc(model)


def run_seed(seed: int, *, epochs: int, samples: int) -> dict:
    from edgekit.converters import convert, evaluate, keras_reference
    from edgekit.runtime import MCModel
    from edgekit.runtime.metrics import gaussian_nll, interval_coverage, rmse

    x, y, xh, yh, xt, yt, y_sd = split()
    model = train(x, y, seed=seed, epochs=epochs)
    reference = keras_reference(model, xt, samples=samples)
    fitted = convert(model, quantize="int8", representative_data=x, heldout_data=(xh, yh))
    plain = convert(model, quantize="int8", representative_data=x)
    report = evaluate(fitted, model, xt, yt, samples=samples, reference=reference).accuracy["outputs"]["value"]
    without = evaluate(plain, model, xt, yt, samples=samples, reference=reference).accuracy["outputs"]["value"]
    pred = MCModel(fitted.tflite, seed=seed).predict(xt, samples=samples)["value"]
    direct = {"rmse": rmse(pred.mean, yt), "nll": gaussian_nll(pred.mean, pred.total_std**2, yt),
              "coverage": interval_coverage(pred.low, pred.high, yt),
              "mean_std": float(pred.std.mean()), "mean_aleatoric_std": float(pred.aleatoric_std.mean())}
    k, t = report["keras"], report["tflite"]
    return {
        "seed": seed,
        "noise_variance": fitted.metadata["outputs"][0]["noise_variance"],
        "heldout_fit": fitted.report.heldout["outputs"]["value"],
        "keras_mc": k, "int8": t, "rmse_ratio": report["rmse_ratio"], "curve": report["curve"],
        "int8_predict": direct,
        "int8_without_noise_variance": without["tflite"],
        "int8_bytes": len(fitted.tflite),
        "accepted": {"coverage_in_range": COVERAGE[0] <= t["coverage"] <= COVERAGE[1],
                     "rmse_within_5_percent": t["rmse"] <= RMSE_RATIO * k["rmse"]},
        "target_std": y_sd,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/regression.json")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds, comma-separated")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--samples", type=int, default=100, help="MC samples T per test input")
    args = parser.parse_args(argv)
    import sklearn
    import tensorflow as tf

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = []
    for seed in seeds:
        r = run_seed(seed, epochs=args.epochs, samples=args.samples)
        runs.append(r)
        print(f"seed {seed}: int8 coverage {100 * r['int8']['coverage']:.1f}% "
              f"(Keras {100 * r['keras_mc']['coverage']:.1f}%, without noise variance "
              f"{100 * r['int8_without_noise_variance']['coverage']:.1f}%), RMSE "
              f"{r['int8']['rmse']:.4f} vs Keras {r['keras_mc']['rmse']:.4f} ({100 * (r['rmse_ratio'] - 1):+.2f}%)",
              file=sys.stderr)
    cover = [r["int8"]["coverage"] for r in runs]
    ratio = [r["rmse_ratio"] for r in runs]
    out = {
        "bench": "regression",
        "data": {"name": "sklearn diabetes", "patients": 442, "features": 10, "train": 442 - TEST - HELDOUT,
                 "heldout": HELDOUT, "test": TEST, "split_seed": 0},
        "model": "Dense 64 relu, Dropout 0.2, Dense 64 relu, Dropout 0.2, Dense 1 (to_mc), Adam 1e-3, MSE, "
                 f"batch 32, {args.epochs} epochs",
        "samples": args.samples,
        "interval": 0.9,
        "acceptance": {"coverage": list(COVERAGE), "rmse_ratio_max": RMSE_RATIO},
        "summary": {"int8_coverage_median": float(np.median(cover)), "int8_coverage_min": min(cover),
                    "int8_coverage_max": max(cover), "rmse_ratio_median": float(np.median(ratio)),
                    "rmse_ratio_max": max(ratio),
                    "all_accepted": all(all(r["accepted"].values()) for r in runs)},
        "runs": runs,
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "scikit-learn": sklearn.__version__, "machine": platform.machine()},
    }
    from edgekit.runtime.fileio import atomic_write_bytes

    atomic_write_bytes(args.out, (json.dumps(out, indent=2) + "\n").encode())
    print(f"wrote {args.out}: median coverage {100 * out['summary']['int8_coverage_median']:.1f}%, median RMSE "
          f"ratio {out['summary']['rmse_ratio_median']:.4f}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
