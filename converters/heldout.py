"""Fit what an exported file carries on held-out data, from the file's own MC samples.

:func:`edgekit.converters.convert` calls :func:`fit_heldout` when it is given ``heldout_data``:
the converted bytes are run by the edgekit runtime (:class:`edgekit.runtime.MCModel`, its plan,
its masks) at the T the file will run, so every fit describes the file itself, with its
quantization. Per output (:mod:`edgekit.converters.calibrate` does the fitting):

- a class output gets a temperature (``calibration``; not stored when it does not lower the
  held-out NLL), and with ``abstain_coverage`` an abstention threshold (``abstain``) on its
  calibrated mean;
- a value output gets a noise variance per value (``noise_variance``: a homoscedastic output), or
  a variance scale (``variance_scale``: a heteroscedastic output that predicts its own variance).
  Without a class output to calibrate, a split of :data:`MIN_VALUE_EXAMPLES` examples is enough.

The held-out split must be neither the test set nor the int8 calibration inputs (those set the
ranges the file computes in, and would make it look better calibrated than it is).
"""

from __future__ import annotations

import warnings

import numpy as np

from edgekit.converters.calibrate import (
    MIN_EXAMPLES,
    SmallHeldOutWarning,
    check_labelled_samples,
    fit_abstention,
    fit_noise_variance,
    fit_temperature,
    fit_variance_scale,
    risk_coverage_summary,
)
from edgekit.errors import InvalidArgumentError

__all__ = ["MIN_VALUE_EXAMPLES", "fit_heldout"]

MIN_VALUE_EXAMPLES = 50
"""Smallest held-out split for the fits of value outputs only (without a class output to calibrate).
One variance per value is fitted from n residuals: its relative standard error is sqrt(2 / n), 20%
at 50, so the interval's width is off by about 10% and a 90% interval covers between about 86%
and 93%. Regression data sets are often small (the diabetes set has 442 patients), so the class
outputs' :data:`~edgekit.converters.calibrate.MIN_EXAMPLES` (set by a 15-bin ECE) would refuse them."""


def _targets(heldout_data, plan, n: int) -> dict[str, np.ndarray]:
    """The held-out targets per output (value targets as ``[n, values]``), checked."""
    from edgekit.converters.outputs import targets_by_output

    try:
        _, y = heldout_data
    except (TypeError, ValueError):
        raise InvalidArgumentError("Expected `heldout_data` to be a pair (x, y). Received: "
                                   f"{type(heldout_data).__name__}") from None
    out = targets_by_output(y, plan.outputs, n, "held-out")
    return {name: t.reshape(n, -1) if t.ndim > 1 else t for name, t in out.items()}


def _risk_coverage(mean: np.ndarray, labels) -> dict:
    """The held-out risk-coverage curve of the file's (calibrated) MC mean, by 1 - confidence."""
    y = np.asarray(labels).astype(np.int64)
    correct = mean.argmax(axis=1) == y
    return {"score": "confidence", **risk_coverage_summary(1.0 - mean.max(axis=1), correct)}


def fit_heldout(tflite: bytes, meta: dict, heldout_data, *, samples: int = 100, calibration: str = "mi-temperature",
                abstain_coverage: float | None = None, force: bool = False) -> tuple[dict, dict]:
    """``(metadata with the fits in its outputs, a report of every fit)`` (see the module docstring).

    Raises:
        InvalidArgumentError: malformed held-out data (shapes, labels out of range, NaN), or a
            split under 500 examples without ``force``.
    """
    from edgekit.converters.export import check_representative_data
    from edgekit.runtime import MCModel
    from edgekit.runtime.summaries import class_probs

    model = MCModel(tflite, probe=False, calibrated=False)  # just written by convert(): nothing to probe
    try:
        x = heldout_data[0]
    except (TypeError, IndexError, KeyError):
        raise InvalidArgumentError("Expected `heldout_data` to be a pair (x, y). Received: "
                                   f"{type(heldout_data).__name__}") from None
    x = check_representative_data(x, model.input.shape, "heldout_data x")
    n = len(x)
    targets = _targets(heldout_data, model.plan, n)
    classes = any(spec.task == "classification" for spec in model.plan.outputs if spec.name in targets)
    least = MIN_EXAMPLES if classes else MIN_VALUE_EXAMPLES
    if n < least:
        kind = "calibration" if classes else "noise-variance"
        if not force:
            raise InvalidArgumentError(
                f"A held-out split of {n} examples is too small for a stable {kind} fit. Expected at least "
                f"{least} (or force_small_heldout=True). Received: {n}"
            )
        warnings.warn(f"a held-out split of {n} examples is too small for a stable {kind} fit (expected at least "
                      f"{least}); fitting on it anyway, as forced", SmallHeldOutWarning, stacklevel=3)
    fits = {"min_examples": 0}  # the split's size is checked (and warned about) once, here
    rows = model.sample_rows(x, samples)
    entries = {e["name"]: dict(e) for e in meta["outputs"]}

    def what(spec) -> str:
        return "held-out" if len(model.plan.outputs) == 1 else f"held-out {spec.name!r}"

    report: dict = {"examples": n, "samples": int(rows.shape[1]), "method": calibration, "outputs": {}}
    for spec in model.plan.outputs:
        entry = entries[spec.name]
        if spec.name not in targets:
            report["outputs"][spec.name] = {"fitted": False, "reason": "no held-out targets for this output"}
            continue
        y = targets[spec.name]
        if spec.task == "classification":
            probs, y = check_labelled_samples(class_probs(spec, rows), y, what=what(spec), **fits)
            done: dict = {"fitted": True}
            cal = None
            if calibration != "none":
                fit = fit_temperature(probs, y, mi_aware=calibration == "mi-temperature", **fits)
                cal = fit.calibration
                # What the runtime reads (method, temperature, mi_slope), and what it was fitted on.
                entry["calibration"] = None if cal is None else {
                    **cal.to_dict(), "examples": fit.examples, "samples": fit.samples,
                    "heldout_before": fit.before, "heldout_after": fit.after}
                done["calibration"] = fit.to_dict()
            mean = (probs if cal is None else cal.apply(probs)).mean(axis=1)
            if abstain_coverage is not None:
                ab = fit_abstention(mean, y, score="confidence", target_coverage=abstain_coverage)
                entry["abstain"] = ab.to_dict()
                done["abstain"] = ab.to_dict()
            done["risk_coverage"] = _risk_coverage(mean, y)
            report["outputs"][spec.name] = done
        else:
            a, b = spec.columns
            values = rows[:, :, a:b]
            if spec.variance_columns is not None:
                va, vb = spec.variance_columns
                fit = fit_variance_scale(values, np.exp(rows[:, :, va:vb].astype(np.float64)), y, **fits)
                entry["variance_scale"] = fit.variance_scale
            else:
                fit = fit_noise_variance(values, y, **fits)
                entry["noise_variance"] = list(fit.noise_variance)
            report["outputs"][spec.name] = {"fitted": True, **fit.to_dict()}
    new = {**meta, "outputs": [entries[e["name"]] for e in meta["outputs"]]}
    new.pop("sha256", None)
    return new, report
