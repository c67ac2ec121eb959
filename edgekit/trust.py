"""Can the device's uncertainty be trusted? The shift protocol, the held-out split and the pictures.

Used by ``make demo`` (:mod:`edgekit.demo`), ``edgekit convert`` (the held-out split) and
``bench/trust.py`` (the full protocol, docs/trust.md):

- :func:`fashion_mnist_split`: the training set cut into the pool the int8 calibration inputs
  are drawn from (the first 55,000 images) and the held-out split the temperature and the
  abstention threshold are fitted on (the last 5,000, which training only uses for early
  stopping). The test set is neither.
- :func:`rotate`: Fashion-MNIST images rotated by an angle (Pillow, bilinear, zero fill), the
  shift of Ovadia et al. 2019, "Can you trust your model's uncertainty?" (0 to 180 degrees in
  steps of 15: :data:`ANGLES`).
- :func:`class_quality`: accuracy, ECE, NLL, Brier, mean confidence and mean mutual information
  of per-sample MC probabilities, with or without a file's temperature.
- :func:`plot_reliability` and :func:`plot_shift`: the reliability diagram of a converted file
  against the float Keras model, before and after calibration, and accuracy / ECE / mutual
  information against the rotation angle.

numpy and Pillow at import; matplotlib only inside the plotting functions.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np

from edgekit.errors import InvalidArgumentError

__all__ = [
    "ANGLES",
    "HELDOUT",
    "class_quality",
    "fashion_mnist_split",
    "plot_reliability",
    "plot_shift",
    "reliability_bins",
    "rotate",
]

ANGLES = tuple(range(0, 181, 15))
"""Rotation angles in degrees (Ovadia et al. 2019)."""

HELDOUT = 5000
"""Held-out training images for the fits (the tail ``recipes.train`` keeps for early stopping)."""


def fashion_mnist_split(x_train: np.ndarray, y_train: np.ndarray, heldout: int = HELDOUT):
    """``(calibration pool, (x_heldout, y_heldout))``: the first ``len - heldout`` training inputs,
    which int8 calibration inputs are drawn from, and the last ``heldout`` with their labels."""
    if not 0 < heldout < len(x_train):
        raise InvalidArgumentError(f"Expected a held-out split between 1 and {len(x_train) - 1} examples. "
                                   f"Received: {heldout}")
    return x_train[:-heldout], (x_train[-heldout:], y_train[-heldout:])


def rotate(images: np.ndarray, angle: float) -> np.ndarray:
    """``images`` ``[N, H, W]`` (or ``[N, H, W, 1]``) rotated counter-clockwise by ``angle`` degrees
    about their centre, bilinear, corners filled with 0 (the background); same shape and dtype."""
    from PIL import Image

    x = np.asarray(images)
    if angle % 360 == 0:
        return x.copy()
    flat = x.reshape(x.shape[0], x.shape[1], x.shape[2]).astype(np.float32)
    out = np.empty_like(flat)
    for i, img in enumerate(flat):
        out[i] = np.asarray(Image.fromarray(img, mode="F").rotate(angle, resample=Image.BILINEAR))
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def class_quality(probs: np.ndarray, labels: np.ndarray, calibration=None) -> dict[str, float]:
    """Accuracy, ECE (15 bins), NLL, Brier, mean confidence and mean mutual information of the MC
    mean of per-sample probabilities ``[N, T, C]``; with ``calibration`` (a
    :class:`~edgekit.runtime.calibration.Temperature`) applied to each sample first, as the runtime
    does. ``mean_mi`` is the MI of the samples the runtime reports (calibrated ones, when calibrated);
    ``mean_mi_raw`` that of the file's own samples."""
    from edgekit.converters.calibrate import class_metrics
    from edgekit.runtime.calibration import mutual_information

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    raw_mi = mutual_information(p)
    q = p if calibration is None else calibration.apply(p, raw_mi)
    mean = q.mean(axis=1)
    out = class_metrics(mean, y)
    out["mean_confidence"] = float(mean.max(axis=1).mean())
    out["mean_mi"] = float((raw_mi if calibration is None else mutual_information(q)).mean())
    out["mean_mi_raw"] = float(raw_mi.mean())
    return out


def reliability_bins(mean_probs: np.ndarray, labels: np.ndarray, bins: int = 15):
    """``(confidence, accuracy, share)`` per equal-width confidence bin (NaN where a bin is empty):
    what the ECE sums over."""
    conf = mean_probs.max(axis=1)
    correct = mean_probs.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    c, a, s = np.full(bins, np.nan), np.full(bins, np.nan), np.zeros(bins)
    for b in range(bins):
        sel = idx == b
        if sel.any():
            c[b], a[b], s[b] = conf[sel].mean(), correct[sel].mean(), sel.mean()
    return c, a, s


def _save(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    from edgekit.runtime.fileio import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(path: str | os.PathLike, title: str, reference: tuple, before: tuple, after: tuple | None,
                     *, reference_name: str = "float Keras MC", name: str = "file") -> None:
    """A reliability diagram of a converted file against the float model, before and after calibration.

    Each of ``reference``, ``before``, ``after`` is ``(mean probabilities [N, C], labels [N])``;
    ``after`` None (the file carries no temperature) draws the left panel only.
    """
    from edgekit.runtime.metrics import ece

    plt = _pyplot()
    panels = [("uncalibrated", before)] + ([("calibrated", after)] if after is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (label, (mean, y)) in zip(axes[0], panels):
        ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
        for curve, color, what in ((reference, "tab:blue", reference_name), ((mean, y), "tab:red", f"{name}, {label}")):
            c, a, _ = reliability_bins(*curve)
            keep = ~np.isnan(c)
            ax.plot(c[keep], a[keep], "o-", color=color, label=f"{what} (ECE {ece(*curve):.4f})")
        _, _, share = reliability_bins(mean, y)
        twin = ax.twinx()
        twin.bar((np.arange(len(share)) + 0.5) / len(share), share, width=1 / len(share), alpha=0.15, color="tab:red")
        twin.set_ylim(0, 1)
        twin.set_ylabel("share of inputs (bars)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-class MC mean probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: {label}")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_shift(path: str | os.PathLike, curves: Mapping[str, Sequence[dict]], *, title: str = "",
               reference: str = "float Keras MC") -> None:
    """Accuracy, ECE, ECE minus the ``reference`` curve's, and mean mutual information against the
    rotation angle, one line per model.

    ``curves`` maps a label to its points ``[{"angle", "accuracy", "ece", "mean_mi"}, ...]``
    (same angles for every label).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    ref = {p["angle"]: p["ece"] for p in curves.get(reference, ())}
    for label, points in curves.items():
        angles = [p["angle"] for p in points]
        style = "--" if "uncalibrated" in label else ":" if "plain" in label else "-"
        kw = {"marker": "o", "markersize": 3, "label": label, "color": "black" if label == reference else None}
        axes[0].plot(angles, [p["accuracy"] for p in points], style, **kw)
        axes[1].plot(angles, [p["ece"] for p in points], style, **kw)
        if ref:
            axes[2].plot(angles, [p["ece"] - ref[p["angle"]] for p in points], style, **kw)
        axes[3].plot(angles, [p["mean_mi"] for p in points], style, **kw)
    what = ("accuracy", "ECE (15 bins)", f"ECE minus {reference}'s", "mean mutual information (nats)")
    for ax, label in zip(axes, what):
        ax.set_xlabel("rotation (degrees)")
        ax.set_ylabel(label)
        ax.set_xticks(range(0, 181, 30))
        ax.grid(alpha=0.3)
    axes[2].axhline(0.0, color="gray", linewidth=0.8)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
