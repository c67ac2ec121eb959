"""The end-to-end demo (``make demo`` / ``edgekit demo``): the reference MC-dropout walk-through, then the device.

1. Train the dropout MLP of the reference text (Hands-On ML, ch. 11; the "book" recipe, MC layers)
   on the real Fashion-MNIST.
2. Repeat its MC-dropout walk-through on the real test set: the first test image with dropout off and
   three stochastic samples, the MC mean and std over 100 samples, accuracy deterministic vs MC.
3. Convert the model to float32, float16 and int8 TFLite files whose dropout stays stochastic, each
   carrying a temperature and an abstention threshold fitted on the last 5,000 training images
   (which training kept for early stopping), and print the conversion report (size, float islands,
   accuracy, NLL, ECE against the Keras model, calibration before and after, abstention, AURC).
4. Profile the float32 and int8 files for the ``host`` device: latency and accuracy against T.
5. Trust: a reliability diagram per file (float Keras against the file, before and after
   calibration, on the test set), and accuracy, ECE and mutual information on rotated test images
   (2,000 of them, T=50; ``bench/trust.py`` runs the full protocol).

Everything lands in one folder (``demo-out/``): ``demo.json`` (the figures), ``first_image_mc.png``
(the first image's per-class MC distribution), the model files, the report, the profile plot,
``reliability_<mode>.png`` and ``shift.png``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import numpy as np

from edgekit.errors import EdgekitError

__all__ = ["run_demo"]


def _say(text: str = "") -> None:
    click.echo(text)


def _plot_first_image(image, probs, class_names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.runtime.fileio import atomic_write_bytes

    fig, (ax_img, ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 3]})
    ax_img.imshow(image, cmap="gray_r")
    ax_img.set_title("First test image")
    ax_img.axis("off")
    ax.boxplot([probs[:, c] for c in range(probs.shape[1])], showfliers=True)
    ax.plot(range(1, probs.shape[1] + 1), probs.mean(axis=0), "D", color="tab:red", label="MC mean")
    ax.set_xticks(range(1, probs.shape[1] + 1), class_names, rotation=30, ha="right")
    ax.set_ylabel("probability")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"MC dropout: {probs.shape[0]} stochastic passes")
    ax.legend(loc="upper left")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_demo(out: str | os.PathLike = "demo-out", *, epochs: int = 15, seed: int = 42, samples: int = 100,
             profile_runs: int = 100, shift_examples: int = 2000, shift_samples: int = 50) -> dict:
    """Run the demo and return what it wrote to ``demo.json``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from edgekit import mc, recipes
    from edgekit.data import load_fashion_mnist
    from edgekit.runtime.fileio import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = load_fashion_mnist()
    summary: dict = {"dataset": "fashion-mnist", "train": len(data.x_train), "test": len(data.x_test),
                     "seed": seed, "samples": samples}

    _say(f"1. Training the Hands-On ML chapter 11 dropout MLP (MC layers) on Fashion-MNIST, up to {epochs} epochs")
    keras.utils.set_random_seed(seed)
    model = recipes.book(mean=float(data.x_train.mean()), std=float(data.x_train.std()))
    fit = recipes.train(model, data.x_train, data.y_train, epochs=epochs, batch_size=128, verbose=2)
    summary["training"] = {"recipe": "book", "epochs_run": fit.epochs_run, "val_accuracy": fit.val_accuracy,
                           "seconds": round(time.perf_counter() - started, 1)}
    model_path = out / "book.keras"
    tmp = out / ".book.partial.keras"
    model.save(tmp)
    atomic_write_bytes(model_path, tmp.read_bytes())
    tmp.unlink()

    _say("\n2. The chapter's MC-dropout walk-through on the real test set")
    first = data.x_test[:1]
    det_first = mc.predict_deterministic(model, first)[0]
    _say("   First test image, dropout off:")
    _say(f"   {np.round(det_first, 2)}")
    mc_first = mc.predict(model, first, samples=samples)
    _say("   Three stochastic samples (dropout on):")
    for row in mc_first.probs[:3, 0]:
        _say(f"   {np.round(row, 2)}")
    _say(f"   MC mean over {samples} samples: {np.round(mc_first.mean[0], 2)}")
    _say(f"   MC std:                     {np.round(mc_first.std[0], 2)}")
    # The whole test set, MC and dropout off; the same arrays are the Keras side of the
    # conversion report below, so they are computed once.
    from edgekit.converters import keras_reference

    reference = keras_reference(model, data.x_test, samples=samples)
    mc_mean_all, det_all = reference
    det_acc = float(np.mean(det_all.argmax(-1) == data.y_test))
    mc_acc = float(np.mean(mc_mean_all.argmax(-1) == data.y_test))
    _say(f"   Test accuracy: dropout off {det_acc:.4f}, MC dropout {mc_acc:.4f} (the book: 0.868 -> 0.869)")
    truth = int(data.y_test[0])
    summary["first_image"] = {
        "label": truth, "label_name": data.class_names[truth],
        "dropout_off": det_first.round(4).tolist(),
        "stochastic_samples": mc_first.probs[:3, 0].round(4).tolist(),
        "mc_mean": mc_first.mean[0].round(4).tolist(), "mc_std": mc_first.std[0].round(4).tolist(),
    }
    summary["accuracy"] = {"deterministic": det_acc, "mc": mc_acc}
    _plot_first_image(data.x_test[0], mc_first.probs[:, 0], data.class_names, out / "first_image_mc.png")

    _say("\n3. Converting to TFLite (dropout stays stochastic): float32, float16, int8")
    summary["conversion"] = _convert_all(model, data, out, samples, reference)

    _say("\n4. Profiling the float32 and int8 files on the host device")
    summary["profile"] = _profile(out, data, profile_runs)

    _say("\n5. Can the files' uncertainty be trusted? Reliability diagrams and rotated test images")
    summary["trust"] = _trust(model, data, out, samples, reference.mean, shift_examples, shift_samples)

    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_bytes(out / "demo.json", (json.dumps(summary, indent=2) + "\n").encode())
    _say(f"\nWrote {out}/demo.json, first_image_mc.png, the .tflite files, report, profile, reliability "
         f"diagrams and shift.png ({summary['seconds']} s in all)")
    return summary


def _convert_all(model, data, out: Path, samples: int, reference) -> dict:
    import warnings

    from edgekit.converters import convert, evaluate
    from edgekit.runtime.fileio import atomic_write_bytes
    from edgekit.trust import fashion_mnist_split

    image = {"height": 28, "width": 28, "channels": 1, "scale": 1 / 255, "offset": 0.0}
    # int8 calibration inputs and the held-out split the temperature is fitted on never overlap.
    pool, heldout = fashion_mnist_split(data.x_train, data.y_train)
    rows = {}
    tables = []
    for mode in ("float32", "float16", "int8"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = convert(model, quantize=mode, representative_data=pool[:1000],
                                class_names=list(data.class_names), input_image=image, heldout_data=heldout,
                                heldout_samples=samples, abstain_coverage=0.9)
            report = evaluate(converted, model, data.x_test, data.y_test, samples=samples, reference=reference)
        for w in caught:
            click.echo(f"   Warning ({mode}): {w.message}", err=True)
        atomic_write_bytes(out / f"book_{mode}.tflite", converted.tflite)
        rows[mode] = report.to_dict()
        tables.append(f"-- {mode} --\n{report.to_table()}")
    _say("\n".join(tables))
    atomic_write_bytes(out / "conversion_report.json", (json.dumps(rows, indent=2, default=str) + "\n").encode())
    return rows


def _trust(model, data, out: Path, samples: int, keras_mean, shift_examples: int, shift_samples: int) -> dict:
    from edgekit import mc
    from edgekit.runtime import MCModel
    from edgekit.trust import ANGLES, class_quality, plot_reliability, plot_shift, rotate

    y = data.y_test.astype(np.int64)
    files = {mode: MCModel(out / f"book_{mode}.tflite", seed=0) for mode in ("float32", "float16", "int8")}
    result: dict = {"reliability": {}}
    for mode, m in files.items():
        p = m.sample(data.x_test, samples)
        cal = m.plan.output.calibration
        after = None if cal is None else cal.apply(p).mean(axis=1)
        name = f"reliability_{mode}.png"
        plot_reliability(out / name, f"{mode} file, {len(y)} test images, T={samples}", (keras_mean, y),
                         (p.mean(axis=1), y), None if after is None else (after, y), name=f"{mode} file")
        result["reliability"][mode] = {"png": name, "uncalibrated": class_quality(p, y),
                                       "calibrated": None if cal is None else class_quality(p, y, cal)}
        q = result["reliability"][mode]
        _say(f"   {mode}: test ECE {q['uncalibrated']['ece']:.4f} -> "
             f"{(q['calibrated'] or q['uncalibrated'])['ece']:.4f} calibrated (float Keras MC: "
             f"{class_quality(keras_mean[:, None, :], y)['ece']:.4f}); wrote {name}")
    xs, ys = data.x_test[:shift_examples], y[:shift_examples]
    int8 = files["int8"]
    cal = int8.plan.output.calibration
    curves: dict[str, list] = {"float Keras MC": [], "int8 uncalibrated": [], "int8 calibrated": []}
    for angle in ANGLES:
        xr = rotate(xs, angle)
        kp = mc.predict(model, xr, samples=shift_samples).probs.transpose(1, 0, 2)
        p = int8.sample(xr, shift_samples)
        curves["float Keras MC"].append({"angle": angle, **class_quality(kp, ys)})
        curves["int8 uncalibrated"].append({"angle": angle, **class_quality(p, ys)})
        curves["int8 calibrated"].append({"angle": angle, **class_quality(p, ys, cal)})
    plot_shift(out / "shift.png", curves, title=f"Rotated Fashion-MNIST test images ({len(ys)}), T={shift_samples}")
    shifted = zip(curves["int8 calibrated"][1:], curves["float Keras MC"][1:])  # 15 to 180 degrees
    gap = float(np.mean([c["ece"] - k["ece"] for c, k in shifted]))
    _say(f"   rotated {len(ys)} test images by 0-180 degrees, T={shift_samples}: mean ECE of the calibrated int8 file "
         f"minus float Keras MC's over 15-180 degrees {gap:+.4f}; wrote shift.png")
    _say("   angle  accuracy (Keras / int8 cal)   ECE (Keras / int8 / int8 cal)   MI (Keras / int8)")
    for k, u, c in zip(curves["float Keras MC"], curves["int8 uncalibrated"], curves["int8 calibrated"]):
        _say(f"   {k['angle']:>5}  {k['accuracy']:.4f} / {c['accuracy']:.4f}          "
             f"{k['ece']:.4f} / {u['ece']:.4f} / {c['ece']:.4f}        {k['mean_mi']:.4f} / {u['mean_mi']:.4f}")
    result["shift"] = {"examples": len(ys), "samples": shift_samples, "png": "shift.png", "curves": curves,
                       "mean_ece_gap_calibrated_int8_to_keras_15_180": gap}
    return result


def _profile(out: Path, data, runs: int) -> dict:
    from click.testing import CliRunner

    from edgekit.commands.profile import profile
    from edgekit.runtime.fileio import atomic_write_bytes

    # The real command, as a user would run it; its JSON goes to profile.json and demo.json.
    args = [str(out / "book_float32.tflite"), str(out / "book_int8.tflite"), "--device", "host",
            "--data", "fashion-mnist", "--runs", str(runs), "-o", str(out / "profile.png"), "--json"]
    result = CliRunner().invoke(profile, args, catch_exceptions=False)
    if result.exit_code != 0:
        raise EdgekitError(f"edgekit profile failed: {result.output.strip()}")
    report = json.loads(result.stdout)
    atomic_write_bytes(out / "profile.json", (json.dumps(report, indent=2) + "\n").encode())
    _say(f"   budget {report['budget_ms']} ms; one input; p50 / p99 latency in ms and MC accuracy against T")
    for entry in report["models"]:
        acc = {row["samples"]: row["accuracy"] for row in entry.get("accuracy") or []}
        _say(f"   {Path(entry['path']).name} ({entry['model_bytes'] / 1024:.0f} KiB)")
        for row in entry["latency"]:
            a = acc.get(row["samples"])
            _say(f"     T={row['samples']:>4} threads={row['threads']}: {row['p50_ms']:7.3f} / {row['p99_ms']:7.3f}"
                 + (f"   accuracy {a:.4f}" if a is not None else ""))
        rec = entry["recommended"]
        _say(f"     recommended T={rec['samples']} ({rec['reason']})")
    return report
