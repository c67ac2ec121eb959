"""Acceptance figures of the converter on real Fashion-MNIST, as JSON.

Trains the seed's MLP ("book") and a small CNN (Conv+BN+ReLU twice, MC dropout in the top two
layers) briefly, converts each in all five quantization modes, and measures against the float
Keras model on the test set: MC accuracy (T samples), NLL, ECE, file sizes, and the int8/float32
size ratio. Also measures per-unit Dense scales for int8 (the default is one per kernel) and the
experimental sparse encoding after 80% magnitude pruning (float32 runs; int8 fails in LiteRT).

    .venv/bin/python bench/convert_report.py --out bench/convert_report.json [--test-samples 10000]

Timings are medians of repeated invokes in this process (the machine is shared: compare ratios).
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

MODES = ("float32", "float16", "dynamic", "int8", "int16x8")


def _book(ds):
    from edgekit.recipes import book

    return book(mean=float(ds.x_train.mean()), std=float(ds.x_train.std()))


def _cnn():
    from edgekit.recipes import small_cnn

    return small_cnn()


def _median_ms(fn, repeats=15):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def _head_ms(tflite: bytes, x1: np.ndarray, samples: int) -> float | str:
    """Median ms of one batch-T invoke of ``head`` (or of ``full`` when the file has no split)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_content=tflite, num_threads=1)
        if "head" not in it.get_signature_list():
            full = it.get_signature_runner("full")
            xs = np.repeat(x1, samples, axis=0)
            return _median_ms(lambda: full(x=xs))
        trunk, head = it.get_signature_runner("trunk"), it.get_signature_runner("head")
        feats = np.repeat(trunk(x=x1)["features"], samples, axis=0)
        return _median_ms(lambda: head(features=feats))
    except (RuntimeError, ValueError) as e:
        return f"fails: {str(e).splitlines()[0][:160]}"


def run(args) -> dict:
    import keras

    from edgekit.converters import convert, evaluate
    from edgekit.data import load_fashion_mnist
    from edgekit.sparsity import prune_once

    ds = load_fashion_mnist()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(0)
    calib_idx = np.sort(rng.permutation(len(ds.x_train))[: args.calibration])
    out = {
        "command": " ".join(sys.argv),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "test_samples": args.test_samples,
        "mc_samples": args.mc_samples,
        "models": {},
    }
    builders = {"book": lambda: _book(ds), "cnn": _cnn}
    for name in args.models:
        shape = (28, 28) if name == "book" else (28, 28, 1)
        x_train = ds.x_train.reshape((-1, *shape))
        x_test = ds.x_test[: args.test_samples].reshape((-1, *shape))
        y_test = ds.y_test[: args.test_samples]
        model = builders[name]()
        model.compile(optimizer="nadam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        t = time.perf_counter()
        model.fit(x_train, ds.y_train, epochs=args.epochs, batch_size=64, verbose=0)
        entry = {"train_seconds": round(time.perf_counter() - t, 1), "epochs": args.epochs, "modes": {}}
        rep = x_train[calib_idx]
        for mode in MODES:
            t = time.perf_counter()
            result = convert(model, quantize=mode, representative_data=rep)
            seconds = time.perf_counter() - t
            report = evaluate(result, model, x_test, y_test, samples=args.mc_samples)
            acc = report.accuracy
            entry["modes"][mode] = {
                "convert_seconds": round(seconds, 1),
                "size_bytes": report.size_bytes,
                "gzip_bytes": report.gzip_bytes,
                "float_islands": report.float_islands,
                "keras_mc_accuracy": acc["keras"]["mc_accuracy"],
                "keras_deterministic_accuracy": acc["keras"]["deterministic_accuracy"],
                "tflite_mc_accuracy": acc["tflite"]["mc_accuracy"],
                "mc_accuracy_delta_points": acc["mc_accuracy_delta_points"],
                "tflite_nll": acc["tflite"]["nll"],
                "tflite_ece": acc["tflite"]["ece"],
                "keras_nll": acc["keras"]["nll"],
                "keras_ece": acc["keras"]["ece"],
                "head_batch_T_ms": _head_ms(result.tflite, x_test[:1], args.mc_samples),
                "warnings": list(report.warnings),
            }
            print(f"{name} {mode}: {entry['modes'][mode]['size_bytes']} B, MC acc "
                  f"{100 * acc['tflite']['mc_accuracy']:.2f} (Keras {100 * acc['keras']['mc_accuracy']:.2f})",
                  file=sys.stderr, flush=True)
        # int8 with one scale per unit of each Dense kernel (the default is one per kernel).
        result = convert(model, quantize="int8", representative_data=rep, dense_per_channel=True)
        report = evaluate(result, model, x_test, y_test, samples=args.mc_samples)
        entry["modes"]["int8_per_channel_dense"] = {
            "size_bytes": report.size_bytes,
            "tflite_mc_accuracy": report.accuracy["tflite"]["mc_accuracy"],
            "mc_accuracy_delta_points": report.accuracy["mc_accuracy_delta_points"],
            "tflite_nll": report.accuracy["tflite"]["nll"],
            "tflite_ece": report.accuracy["tflite"]["ece"],
        }
        f32 = entry["modes"]["float32"]["size_bytes"]
        entry["int8_over_float32"] = entry["modes"]["int8"]["size_bytes"] / f32
        entry["int8_per_channel_dense_over_float32"] = entry["modes"]["int8_per_channel_dense"]["size_bytes"] / f32
        # Sparse encoding after one-shot 80% pruning (no fine-tuning: this measures size and speed only).
        pruned = keras.models.clone_model(model)
        pruned.set_weights(model.get_weights())
        prune_once(pruned, 0.8)
        sparse = {}
        for mode, flag in (("float32", False), ("float32", True), ("int8", False)):
            r = convert(pruned, quantize=mode, representative_data=rep, sparse=flag)
            sparse[f"{mode}{'_sparse' if flag else ''}"] = {
                "size_bytes": r.report.size_bytes, "gzip_bytes": r.report.gzip_bytes,
                "head_batch_T_ms": _head_ms(r.tflite, x_test[:1], args.mc_samples),
            }
        entry["pruned_80"] = sparse
        out["models"][name] = entry
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write JSON here (default: stdout)")
    p.add_argument("--models", nargs="+", default=["book", "cnn"], choices=["book", "cnn"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--mc-samples", type=int, default=100)
    p.add_argument("--calibration", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        from edgekit.runtime.fileio import atomic_write_bytes

        atomic_write_bytes(args.out, text.encode())
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
