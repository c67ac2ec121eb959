"""``edgekit predict``: MC-dropout prediction with an exported model, on the device (no TensorFlow)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from edgekit.commands._common import SEED, FiniteFloatRange, echo_json, json_option, library_errors, warn
from edgekit.errors import InvalidArgumentError

__all__ = ["predict"]



def _load_input(path: Path, meta: dict):
    import numpy as np

    from edgekit.runtime.images import SUFFIXES, load_image

    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, MemoryError) as e:
            # EOFError: an empty file (click would print a bare "Aborted!"); MemoryError: a header
            # declaring an array far larger than the file.
            raise InvalidArgumentError(
                f"Expected a .npy array file. Received: {str(path)!r} ({str(e) or type(e).__name__})"
            ) from None
        if not isinstance(x, np.ndarray):  # an .npz archive saved under a .npy name
            x.close()
            raise InvalidArgumentError(f"Expected a .npy array file. Received: {str(path)!r}, an .npz archive")
        return x
    if suffix in SUFFIXES:
        spec = (meta.get("input") or {}).get("image")
        if not spec:
            raise InvalidArgumentError(
                f"The model does not take images. Expected a .npy input for this model (its metadata has no "
                f"input.image). Received: {path.name!r}"
            )
        x = load_image(path, spec)
        shape = tuple((meta.get("input") or {}).get("shape") or x.shape)
        if x.size == int(np.prod(shape)):
            x = x.reshape(shape)  # e.g. a [28, 28] model input from a [28, 28, 1] image
        return x
    raise InvalidArgumentError(
        f"Unsupported input file. Expected .npy or an image ({', '.join(SUFFIXES)}). Received: {path.name!r}"
    )


def _run_line(pred, i: int) -> str:
    cut = " (cut by the budget)" if pred.budget_cut[i] else ""
    return f"samples: {pred.samples[i]}{cut}   time: {pred.elapsed_ms[i]:.2f} ms"


def _class_block(out, pred, run: bool) -> list[str]:
    """A class output: its classes by mean probability (one input), or one row per input."""
    lines = []
    n = len(out.predicted)
    if n == 1:
        name_w = max(len("class"), *(len(c) for c in out.class_names))
        lines.append(f"{'class':<{name_w}}  {'mean':>7}  {'std':>7}")
        order = sorted(range(len(out.class_names)), key=lambda c: -out.mean[0, c])
        for c in order:
            mark = " <" if c == out.predicted[0] else ""
            lines.append(f"{out.class_names[c]:<{name_w}}  {out.mean[0, c]:7.4f}  {out.std[0, c]:7.4f}{mark}")
        lines.append("")
        lines.append(
            f"predicted: {out.class_names[out.predicted[0]]} ({out.confidence[0]:.4f})   "
            f"entropy: {out.entropy[0]:.4f} nats   mutual information: {out.mutual_information[0]:.4f} nats"
        )
        if run:
            lines.append(_run_line(pred, 0))
        return lines
    name_w = max(len("predicted"), *(len(c) for c in out.class_names))
    head = f"{'#':>5}  {'predicted':<{name_w}}  {'mean':>7}  {'std':>7}  {'entropy':>7}  {'MI':>7}"
    lines.append(head + (f"  {'T':>5}  {'ms':>7}" if run else ""))
    for i in range(n):
        p = out.predicted[i]
        line = (f"{i:>5}  {out.class_names[p]:<{name_w}}  {out.mean[i, p]:7.4f}  {out.std[i, p]:7.4f}  "
                f"{out.entropy[i]:7.4f}  {out.mutual_information[i]:7.4f}")
        lines.append(line + (f"  {pred.samples[i]:>5}  {pred.elapsed_ms[i]:7.2f}" if run else "")
                     + _abstain_mark(out, i))
    return lines


def _value_block(out, pred, run: bool) -> list[str]:
    """A value output: per value, mean +- epistemic std, the aleatoric and total std, and the interval."""
    import numpy as np

    n = out.mean.shape[0]
    shape = out.mean.shape[1:]
    index = [str(list(ix)) for ix in np.ndindex(*shape)]
    flat = {k: getattr(out, k).reshape(n, -1) for k in ("mean", "std", "total_std", "low", "high")}
    ale = None if out.aleatoric_std is None else out.aleatoric_std.reshape(n, -1)
    level = f"{100 * out.level:g}% interval"
    idx_w = max(len("value"), *(len(ix) for ix in index))
    spans = [[f"[{flat['low'][i, j]:.4g}, {flat['high'][i, j]:.4g}]" for j in range(len(index))] for i in range(n)]
    span_w = max(len(level), *(len(t) for row in spans for t in row))
    lines = []
    lead = f"{'#':>5}  " if n > 1 else ""
    tail = f"  {'T':>5}  {'ms':>7}" if run and n > 1 else ""
    lines.append(f"{lead}{'value':<{idx_w}}  {'mean':>10} +- {'std':<9}  {'aleatoric':>9}  {'total':>9}  "
                 f"{level:<{span_w}}{tail}".rstrip())
    for i in range(n):
        for j, ix in enumerate(index):
            a = "-" if ale is None else f"{ale[i, j]:.4g}"
            row = (f"{flat['mean'][i, j]:>10.4g} +- {flat['std'][i, j]:<9.4g}  {a:>9}  {flat['total_std'][i, j]:>9.4g}  "
                   f"{spans[i][j]:<{span_w}}")
            first = f"{i:>5}  " if n > 1 and j == 0 else " " * 7 if n > 1 else ""
            end = f"  {pred.samples[i]:>5}  {pred.elapsed_ms[i]:7.2f}" if run and n > 1 and j == 0 else ""
            lines.append(f"{first}{ix:<{idx_w}}  {row}{end}".rstrip())
    lines.append("")
    if ale is None:
        lines.append("std is the model's (epistemic) uncertainty; the file has no aleatoric part, so the interval "
                     "covers only the model's uncertainty (convert with held-out data to fit a noise variance)")
    else:
        lines.append("std: the model's (epistemic) uncertainty; aleatoric: the noise's; total: both "
                     "(total^2 = std^2 + aleatoric^2)")
    if run and n == 1:
        lines.append(_run_line(pred, 0))
    return lines


def _table(pred, model) -> str:
    """One block per output (named when there are several), then the samples and time of one input."""
    several = len(pred.outputs) > 1
    blocks = []
    for out in pred.outputs:
        block = _class_block if out.task == "classification" else _value_block
        lines = block(out, pred, run=not several or len(pred.samples) > 1)
        if several:
            lines = [f"output {out.name!r} ({out.task})", *lines]
        blocks.append("\n".join(lines))
    if several and len(pred.samples) == 1:
        blocks.append(_run_line(pred, 0))
    trust = _trust_lines(pred, model)
    if trust:
        blocks.append("\n".join(trust))
    return "\n\n".join(blocks)


def _abstain_mark(out, i: int) -> str:
    """A batch row's abstention flag (nothing when the file has no threshold)."""
    abstain = getattr(out, "abstain", None)
    return "" if abstain is None else ("  abstain" if abstain[i] else "")


def _trust_lines(pred, model) -> list[str]:
    """Calibration, abstention and the result's notes, under the table."""
    first = pred.outputs[0]
    lines = []
    if first.task == "classification":
        abstain = first.abstain
        if abstain is not None and len(abstain) == 1:
            lines.append("abstain: yes (less sure than the file's threshold: do not act on this answer)"
                         if abstain[0] else "abstain: no")
        elif abstain is not None:
            lines.append(f"abstain: {int(abstain.sum())} of {len(abstain)} inputs")
        if first.calibrated:
            lines.append("calibrated: yes (the file's temperature)")
        elif model.plan.output.calibration is not None:
            lines.append("calibrated: no (--uncalibrated: the file's raw MC probabilities)")
    lines.extend(f"note: {n}" for n in pred.notes)
    return lines


def _anytime(on: bool, k: float | None):
    if not on:
        return False
    from edgekit.runtime.anytime import Anytime

    return Anytime() if k is None else Anytime(k=k)


@click.command(name="predict")
@click.argument("model_path", metavar="MODEL.tflite", type=click.Path(exists=True, dir_okay=False))
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("--samples", "-T", type=click.IntRange(min=1), default=None,
              help="MC samples per input (default 100). Exclusive with --budget-ms.")
@click.option("--budget-ms", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Latency budget per input in ms: as many samples as fit (at p99).")
@click.option("--tolerance", type=FiniteFloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Stop once the top class's standard error is below this (e.g. 0.01).")
@click.option("--seed", type=SEED, default=None,
              help="Seed for the masks the runtime draws (mask-input models, in-graph models with `masked`).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Interpreter threads (default 1).")
@click.option("--device", default=None, help="Device profile (threads, memory budget, default budget).")
@click.option("--no-probe", is_flag=True, help="Skip the child-process load probe (trusted models only).")
@click.option("--anytime", is_flag=True,
              help="Stop each input once its answer is settled: the top class leads the runner-up by more than "
                   "--anytime-k standard errors (checked from 8 samples on, every 4; --samples is the cap, "
                   "default 100).")
@click.option("--anytime-k", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Standard errors of the lead that settle an answer, with --anytime [default: 2].")
@click.option("--uncalibrated", is_flag=True, help="Ignore the temperature the file carries: its raw MC probabilities.")
@json_option
@library_errors
def predict(model_path, input_path, samples, budget_ms, tolerance, seed, threads, device, no_probe, anytime,
            anytime_k, uncalibrated, as_json):
    """Predict with MC dropout: mean class probabilities, their spread, and uncertainty.

    INPUT is a .npy array (one input or a batch) or, for image models, a PNG, JPEG, WebP or BMP
    image, resized and scaled as the model's metadata says.

    A class output shows its mean probabilities, their spread, entropy and mutual information; a
    value (regression) output its MC mean +- the epistemic std, the aleatoric and total std, and
    the central predictive interval (90% unless the file says otherwise). A model with several
    outputs gets one block per output. --json has every output (docs/predict-json.md).

    The file's temperature is applied (--uncalibrated: not); a file with an abstention threshold
    says whether to abstain. --anytime stops sampling an input once its answer is settled.

    \b
    Examples:
      edgekit predict model.tflite shoe.png --budget-ms 5
      edgekit predict model.tflite shoe.png --anytime
      edgekit predict model.tflite batch.npy --samples 200 --json
    """
    if samples is not None and budget_ms is not None:
        raise click.UsageError("--samples and --budget-ms are exclusive: give one of them.")
    if anytime_k is not None and not anytime:
        raise click.UsageError("--anytime-k needs --anytime.")
    from edgekit.runtime import MCModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = MCModel(model_path, threads=threads, device=device, seed=seed, probe=not no_probe,
                        calibrated=not uncalibrated)
    for w in caught:
        warn(str(w.message))
    if seed is not None and model.masks_from != "numpy":
        why = "it draws its own masks" if model.masks_from == "file" else "it has no dropout masks"
        warn(f"--seed only affects models whose masks the runtime draws (mask-input models and in-graph models "
             f"with a `masked` signature); this {model.stochastic} model is not one: {why}.")
    if budget_ms is None and samples is None and model.profile is not None:
        budget_ms = model.profile.default_budget_ms
    x = _load_input(Path(input_path), model.metadata)
    if budget_ms is not None:
        model.warmup(budget_ms=budget_ms, samples=samples)  # allocate now, outside the budget
    pred = model.predict(x, samples=samples, budget_ms=budget_ms, tolerance=tolerance,
                         anytime=_anytime(anytime, anytime_k))
    if as_json:
        echo_json({"model": str(model_path), "stochastic": model.stochastic, "verified": model.verified, **pred.to_dict()})
    else:
        click.echo(_table(pred, model))
