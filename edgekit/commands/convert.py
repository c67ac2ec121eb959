"""``edgekit convert`` (Keras -> stochastic .tflite + report) and ``edgekit sparsify`` (magnitude pruning).

Both are thin: the work is in :func:`edgekit.converters.convert`, :func:`edgekit.converters.evaluate`
and :func:`edgekit.sparsity.sparsify`. TensorFlow is imported inside the commands so that
``edgekit --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from edgekit.commands._common import (
    DATA,
    FASHION_MNIST,
    SEED,
    FiniteFloatRange,
    echo_json,
    json_option,
    library_errors,
    status,
    stderr_is_tty,
    warn,
)
from edgekit.errors import InvalidArgumentError
from edgekit.qtyping import CALIBRATED, QUANTIZATIONS, STOCHASTIC_MODES

__all__ = ["convert", "sparsify"]


@contextlib.contextmanager
def _c_stdout_to_stderr():
    """Send what TensorFlow's C++ code prints on fd 1 to stderr, so ``--json`` stdout stays JSON."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real fd 1 (e.g. captured by a test runner)
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# Fashion-MNIST: 28x28 gray images, 10 classes. The default data set only for models it fits.
_FASHION_PIXELS, _FASHION_CLASSES = 28 * 28, 10


def _fits_fashion_mnist(in_shape, num_classes) -> bool:
    """Whether Fashion-MNIST can feed a model of input ``in_shape`` (28x28 in some layout) and ``num_classes``."""
    import math

    if in_shape is None or any(d is None for d in in_shape):
        return False
    return math.prod(int(d) for d in in_shape) == _FASHION_PIXELS and num_classes in (None, _FASHION_CLASSES)


def _load_data(spec: str, need_train: bool, need_test: bool):
    """(x_train, y_train, x_test, y_test, class_names, image) from 'fashion-mnist' or an .npz file."""
    import numpy as np

    if spec == FASHION_MNIST:
        from edgekit.data import load_fashion_mnist

        ds = load_fashion_mnist()
        image = {"height": 28, "width": 28, "channels": 1, "scale": 1.0 / 255.0, "offset": 0.0}
        return ds.x_train, ds.y_train, ds.x_test, ds.y_test, list(ds.class_names), image
    try:
        with open(spec, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise InvalidArgumentError(
                    f"Expected an .npz file of arrays (np.savez). Received: --data {spec!r}, a single .npy array"
                )
            with npz:
                arrays = {k: npz[k] for k in npz.files}
    except (ValueError, EOFError) as e:  # not an npz, an object array (pickle), or an empty file
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidArgumentError(f"Expected an .npz file of arrays. Received: --data {spec!r} ({why})") from None
    wanted = (["x_train"] if need_train else []) + (["x_test", "y_test"] if need_test else [])
    if any(k.startswith("y_test_") for k in arrays):  # targets per output name (a model with several)
        wanted = [k for k in wanted if k != "y_test"]
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise InvalidArgumentError(
            f"Expected arrays {', '.join(wanted)} in {spec!r}. Received: {', '.join(sorted(arrays)) or 'none'}"
        )
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    return (arrays.get("x_train"), arrays.get("y_train"), arrays.get("x_test"), arrays.get("y_test"), names, None)


class _Pairs(click.ParamType):
    """``NAME=VALUE`` (an option given once per output), with VALUE in ``choices`` when given."""

    name = "NAME=VALUE"

    def __init__(self, choices=None, metavar="NAME=VALUE"):
        self.choices, self.name = choices, metavar

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key.strip() or not val.strip() or (self.choices and val.strip() not in self.choices):
            allowed = "|".join(self.choices) if self.choices else "VALUE"
            self.fail(f"Expected NAME={allowed}. Received: {value!r}", param, ctx)
        return key.strip(), val.strip()


def _targets_of(arrays: dict, prefix: str, names: list[str]) -> dict | None:
    """Targets per output name from an .npz's arrays: ``<prefix>_<output>`` for each output that has
    them, and ``<prefix>`` itself for the first output. None when there are none."""
    out = {n: arrays[f"{prefix}_{n}"] for n in names if f"{prefix}_{n}" in arrays}
    if prefix in arrays and names and names[0] not in out:
        out[names[0]] = arrays[prefix]
    return out or None


def _npz_arrays(spec) -> dict:
    """Every array of the .npz ``spec``."""
    import numpy as np

    try:
        with open(spec, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise InvalidArgumentError(f"Expected an .npz file of arrays (np.savez). Received: --data {spec!r}, "
                                           f"a single .npy array")
            with npz:
                return {k: npz[k] for k in npz.files}
    except (ValueError, EOFError) as e:  # not an npz, an object array (pickle), or an empty file
        if isinstance(e, InvalidArgumentError):
            raise
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidArgumentError(f"Expected an .npz file of arrays. Received: --data {spec!r} ({why})") from None


def _fit_shape(x, shape):
    """Reshape (n, 28, 28) data to a model input such as (28, 28, 1) when the sizes agree."""
    import numpy as np

    if x is None:
        return None
    x = np.asarray(x, dtype=np.float32)
    want = tuple(int(d) for d in shape)
    if x.ndim >= 1 and x.shape[1:] != want and int(np.prod(x.shape[1:])) == int(np.prod(want)):
        x = x.reshape((len(x), *want))
    return x


def _shape_text(in_shape) -> str:
    return "(n, " + ", ".join(str(d) for d in in_shape) + ")"


def _choose_data(data, in_shape, num_classes, quantize, need_train, need_test):
    """(data source, need_test): Fashion-MNIST by default only where it fits the model.

    A model it does not fit gets no silent fallback: calibration (int8, int16x8) needs inputs
    shaped like the model's, so that is a usage error naming ``--data``; the accuracy part of the
    report is skipped with a warning.
    """
    if data is not None:
        if data == FASHION_MNIST and (need_train or need_test) and not _fits_fashion_mnist(in_shape, num_classes):
            raise InvalidArgumentError(
                f"Expected data that fits the model (input {in_shape}, {num_classes} classes). Received: --data "
                f"fashion-mnist (28x28 images, 10 classes); pass --data FILE.npz with x_train (and x_test, y_test)"
            )
        return data, need_test
    if _fits_fashion_mnist(in_shape, num_classes):
        return FASHION_MNIST, need_test
    if need_train:
        raise click.UsageError(
            f"--quantize {quantize} calibrates on training inputs, and the default data (Fashion-MNIST, 28x28 "
            f"images) does not fit this model's input {in_shape}. Pass calibration inputs with --data FILE.npz "
            f"holding x_train of shape {_shape_text(in_shape)} (numpy.savez('FILE.npz', x_train=x)), or choose "
            f"--quantize float16 or dynamic, which need no data."
        )
    if need_test:
        warn(f"the report has no accuracy part: the default data (Fashion-MNIST, 28x28 images, 10 classes) does "
             f"not fit this model (input {in_shape}, {num_classes} classes). Pass --data FILE.npz with x_test and "
             f"y_test for it, or --examples 0 to skip it quietly.")
    return None, False


@click.command()
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .tflite.")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=None,
              help="Quantization mode [default: float32, or the device's default].")
@click.option("--int8-io", is_flag=True, default=None, help="int8 input and output tensors (with --quantize int8).")
@click.option("--device", default=None, help="Device profile name or .toml path; the result is checked against it.")
@click.option("--calibration-examples", type=click.IntRange(min=1), default=500, show_default=True,
              help="Training inputs (x_train) used to calibrate int8/int16x8 ranges.")
@click.option("--no-fold-bn", is_flag=True, help="Do not fold BatchNormalization into Dense/Conv layers.")
@click.option("--seed", type=SEED, default=None,
              help="Bake a seed into the random ops: reproducible, but every device draws the same masks.")
@click.option("--stochastic", type=click.Choice(STOCHASTIC_MODES), default=None,
              help="in-graph: RANDOM_UNIFORM draws the masks; mask-input: masks are inputs [default: in-graph, "
                   "or the device's mode].")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report as JSON to this file.")
@click.option("--data", type=DATA, default=None,
              help="fashion-mnist, or an .npz with x_train (calibration), x_test/y_test (evaluation) and "
                   "x_heldout/y_heldout (held-out fits) [default: fashion-mnist if it fits the model's input]. "
                   "y_test and y_heldout are the first output's targets; y_test_<output> and y_heldout_<output> "
                   "name an output's (integer labels of a class output, values (n, *shape) of a value output).")
@click.option("--task", "tasks", type=_Pairs(("regression", "classification"), "NAME=regression|classification"),
              multiple=True, help="The task of output NAME (Keras' output name) where its activation does not say "
                                  "it (softmax or one sigmoid unit: classes; linear: values). Repeatable.")
@click.option("--log-variance", "log_variance", type=_Pairs(metavar="MEAN=LOGVAR"), multiple=True,
              help="Output LOGVAR is the log-variance of value output MEAN (a heteroscedastic head): the "
                   "predictive variance is its mean aleatoric variance plus the epistemic one. Repeatable.")
@click.option("--examples", type=click.IntRange(min=0), default=2000, show_default=True,
              help="Test inputs for the accuracy part of the report (0: skip it).")
@click.option("--samples", "-T", type=click.IntRange(min=1), default=100, show_default=True,
              help="MC samples T per test input in the report.")
@click.option("--class-names", default=None, help="Comma-separated class names [default: from the data].")
@click.option("--sparse", is_flag=True, help="Sparse flatbuffer encoding of weights (float32 only).")
@click.option("--per-channel-dense/--per-tensor-dense", "per_channel_dense", default=None,
              help="Dense kernels: one quantization scale per unit, or one per kernel (smaller file) "
                   "[default: per kernel for int8, per unit otherwise].")
@click.option("--calibration", type=click.Choice(("mi-temperature", "temperature", "none")), default=None,
              help="Temperature fitted on held-out data and stored in the file: one that grows with the samples' "
                   "mutual information, one for every input, or none [default: mi-temperature when there is "
                   "held-out data].")
@click.option("--abstain-coverage", type=FiniteFloatRange(0, 1), default=0.9, show_default=True,
              help="Store an abstention threshold that answers this share of the held-out inputs (0: none).")
@click.option("--heldout-samples", type=click.IntRange(min=1), default=100, show_default=True,
              help="MC samples per held-out input for the fits (the T the file will run).")
@click.option("--force-small-heldout", is_flag=True,
              help="Fit on a held-out split under 500 examples anyway (with a warning).")
@json_option
@library_errors
def convert(model_path, output, quantize, int8_io, device, calibration_examples, no_fold_bn, seed, stochastic,
            report_path, data, tasks, log_variance, examples, samples, class_names, sparse, per_channel_dense,
            calibration, abstain_coverage, heldout_samples, force_small_heldout, as_json):
    """Convert a Keras MC-dropout model to one .tflite whose dropout stays random.

    The file runs on the stock LiteRT interpreter, has signatures full, trunk and head (and
    masked, the head with keep-masks as inputs, for edgekit's runtime), carries
    edgekit metadata with a SHA-256 digest, and is written atomically. The report (a table, or
    JSON with --json) gives sizes, ops, float islands and, on the test set, deterministic and MC
    accuracy, NLL and ECE against the float Keras model.

    int8 and int16x8 calibrate on training inputs: Fashion-MNIST by default (when it fits the
    model's input), else x_train from --data FILE.npz.

    Each output's task is read from its activation (softmax or one sigmoid unit: classes, linear:
    values), or given with --task. On a held-out split, the file's own MC samples fit what it
    carries: a temperature and an abstention threshold per class output, a noise variance per
    value output (without it, a value output's interval covers the model's uncertainty only).
    The split is the last 5,000 Fashion-MNIST training images (int8 calibration inputs then come
    from the first 55,000), or x_heldout with y_heldout (y_heldout_<output>) in --data FILE.npz;
    it must be neither the test set nor x_train's calibration inputs.

    \b
    Examples:
      edgekit convert model.keras -o model.tflite --quantize int8
      edgekit convert model.keras -o model.tflite --quantize int8 --data mydata.npz
      edgekit convert model.keras -o tpu.tflite --device coral-edgetpu --report report.json
      edgekit convert regressor.keras -o reg.tflite --quantize int8 --data diabetes.npz
      edgekit convert two_heads.keras -o m.tflite --log-variance mean=log_var --data d.npz
    """
    from edgekit.runtime.fileio import atomic_write_bytes, refuse_overwrite_input

    refuse_overwrite_input(output, [model_path])
    if report_path is not None:
        refuse_overwrite_input(report_path, [model_path, output])
    from edgekit.devices import conversion_settings, load_profile

    # The library's rule (the same one convert(device=...) applies): the profile's defaults, under
    # the options given.
    profile = load_profile(device) if device is not None else None
    settings = conversion_settings(profile, quantize=quantize, stochastic=stochastic, int8_io=int8_io)
    quantize, stochastic, int8_io = settings.quantize, settings.stochastic, settings.int8_io
    if int8_io and quantize != "int8":
        raise click.UsageError("--int8-io needs --quantize int8.")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    import numpy as np

    from edgekit.converters import convert as convert_model
    from edgekit.converters import evaluate
    from edgekit.converters.loading import load_keras_model

    status(f"Loading {model_path}")
    model = load_keras_model(model_path)
    in_shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    infos = _outputs(model, dict(tasks), dict(log_variance))
    classes = [i for i in infos if i.task == "classification"]
    num_classes = classes[0].num_classes if classes else 0  # 0: no class output (Fashion-MNIST cannot fit)
    need_train = quantize in CALIBRATED
    need_test = examples > 0
    need_heldout = calibration != "none" or abstain_coverage > 0
    data, need_test = _choose_data(data, in_shape, num_classes, quantize, need_train, need_test)
    fashion = data == FASHION_MNIST and _fits_fashion_mnist(in_shape, num_classes)
    x_train = y_train = x_test = y_test = None
    names, image = None, None
    if need_train or need_test or (need_heldout and fashion):
        x_train, y_train, x_test, y_test, names, image = _load_data(data, need_train, need_test)
    if class_names is not None:
        names = [c.strip() for c in class_names.split(",")]
    if names is not None and len(names) != num_classes and class_names is None:
        names = None  # the data's names do not describe this model
    heldout, y_test = _heldout_and_test_targets(data, infos, y_test, in_shape)
    if need_heldout and fashion:
        from edgekit.trust import fashion_mnist_split

        x_train, heldout = fashion_mnist_split(x_train, y_train)
        heldout = (_fit_shape(heldout[0], in_shape), heldout[1])
    if calibration not in (None, "none") and (heldout is None or not classes):
        raise click.UsageError(
            f"--calibration {calibration} fits a class output's temperature on held-out data, and there is none. "
            f"Pass --data FILE.npz holding x_heldout and y_heldout (inputs and labels held out from training and "
            f"testing), or --data fashion-mnist for a model it fits."
        )
    if in_shape is not None:
        x_train, x_test = _fit_shape(x_train, in_shape), _fit_shape(x_test, in_shape)
    rep = None
    if x_train is not None:
        # A fixed, spread-out subset of the training set (not the first N, which may be ordered).
        idx = np.random.default_rng(0).permutation(len(x_train))[:calibration_examples]
        rep = x_train[np.sort(idx)]

    with warnings.catch_warnings(record=True) as caught, _c_stdout_to_stderr():
        warnings.simplefilter("always")
        status(f"Converting to TFLite ({quantize}, {stochastic})")
        result = convert_model(
            model, quantize=quantize, representative_data=rep, fold_batchnorm=not no_fold_bn, device=profile,
            stochastic=stochastic, seed=seed, class_names=names if classes else None, input_image=image,
            int8_io=int8_io, batch=settings.batch, sparse=sparse, dense_per_channel=per_channel_dense,
            tasks=dict(tasks), variance=dict(log_variance),
            **_heldout_options(heldout, calibration, abstain_coverage, heldout_samples, force_small_heldout),
        )
        report = result.report
        if need_test:
            status(f"Evaluating on {min(examples, len(x_test))} test inputs, T={samples}")
            targets = ({k: v[:examples] for k, v in y_test.items()} if isinstance(y_test, dict)
                       else y_test[:examples])
            report = evaluate(result, model, x_test[:examples], targets, samples=samples)
    atomic_write_bytes(output, result.tflite)
    shown = set()
    for w in caught:
        text = str(w.message).strip().splitlines()[0]
        if issubclass(w.category, UserWarning) and w.category.__module__.startswith("edgekit") and text not in shown:
            shown.add(text)
            warn(text)
    if report_path is not None:
        atomic_write_bytes(report_path, (json.dumps(_report_json(report, output), indent=2) + "\n").encode())
    if as_json:
        echo_json(_report_json(report, output))
    else:
        click.echo(f"wrote {output}")
        click.echo(report.to_table())


def _outputs(model, tasks: dict, variance: dict):
    """The model's outputs as the file will carry them (:func:`edgekit.converters.outputs.describe_outputs`):
    a task that cannot be inferred, or an override naming no output, fails here, before any data is read."""
    from edgekit.converters.outputs import describe_outputs

    return describe_outputs(model, tasks=tasks, variance=variance)


def _heldout_and_test_targets(data, infos, y_test, in_shape):
    """``(heldout_data or None, test targets)`` from --data: x_heldout with y_heldout /
    y_heldout_<output>, and y_test / y_test_<output> (per output name when the model has several,
    or when the .npz names them). Warns for value outputs when there is no held-out split."""
    names = [i.name for i in infos if i.task != "log_variance"]
    values = [i.name for i in infos if i.task == "regression"]
    arrays = _npz_arrays(data) if data is not None and data != FASHION_MNIST else {}
    heldout = None
    if "x_heldout" in arrays:
        y = _targets_of(arrays, "y_heldout", names)
        if y is None:
            raise InvalidArgumentError(f"Expected held-out targets with x_heldout in {data!r}: y_heldout or "
                                       f"y_heldout_<output> for outputs {names}. Received: {sorted(arrays)}")
        heldout = (_fit_shape(arrays["x_heldout"], in_shape), y)
    if values and (heldout is None or not set(values) & set(heldout[1])):
        warn(f"value output(s) {', '.join(map(repr, values))}: no held-out split (x_heldout with y_heldout or "
             f"y_heldout_<output> in --data), so no noise variance is fitted: their std and interval then reflect "
             f"the model's uncertainty only, not the noise in the targets.")
    if arrays:
        y_test = _targets_of(arrays, "y_test", names)
    return heldout, y_test


def _report_json(report, output) -> dict:
    return {"output": str(output), **report.to_dict()}


@click.command()
@click.argument("model_path", metavar="MODEL.keras", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to save the pruned .keras.")
@click.option("--target", type=FiniteFloatRange(0.0, 1.0, max_open=True), default=0.8, show_default=True,
              help="Fraction of each prunable kernel set to zero.")
@click.option("--epochs", type=click.IntRange(min=0), default=2, show_default=True,
              help="Fine-tuning epochs while the sparsity ramps up (0: prune once, no fine-tuning).")
@click.option("--data", type=DATA, default=None,
              help="fashion-mnist, or an .npz with x_train/y_train (and x_test/y_test for the report) "
                   "[default: fashion-mnist if it fits the model].")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@json_option
@library_errors
def sparsify(model_path, output, target, epochs, data, batch_size, as_json):
    """Prune a Keras model to a target sparsity (magnitude pruning + fine-tuning).

    Dense and Conv kernels lose their smallest-magnitude weights on a polynomial schedule while
    the model fine-tunes, then a per-layer sparsity report is printed. The zeros survive
    conversion and int8 quantization; gzip shows the saving.

    \b
    Example:
      edgekit sparsify model.keras -o sparse.keras --target 0.8 --epochs 2
    """
    import tempfile

    from edgekit.runtime.fileio import atomic_write_bytes, refuse_overwrite_input

    if not str(output).endswith(".keras"):
        raise click.BadParameter(f"Expected a path ending in .keras. Received: {output!r}",
                                 param_hint="'-o' / '--output'")
    refuse_overwrite_input(output, [model_path])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgekit.converters.loading import load_keras_model
    from edgekit.sparsity import sparsify as sparsify_model

    status(f"Loading {model_path}")
    model = load_keras_model(model_path)
    in_shape = tuple(model.inputs[0].shape[1:])
    num_classes = int(model.outputs[0].shape[-1])
    if data is None:
        if not _fits_fashion_mnist(in_shape, num_classes):
            raise click.UsageError(
                f"sparsify fine-tunes on labelled training data, and the default data (Fashion-MNIST, 28x28 images, "
                f"10 classes) does not fit this model (input {in_shape}, {num_classes} classes). Pass --data "
                f"FILE.npz holding x_train of shape {_shape_text(in_shape)} and y_train (integer labels)."
            )
        data = FASHION_MNIST
    elif data == FASHION_MNIST and not _fits_fashion_mnist(in_shape, num_classes):
        raise InvalidArgumentError(
            f"Expected data that fits the model (input {in_shape}, {num_classes} classes). Received: --data "
            f"fashion-mnist (28x28 images, 10 classes); pass --data FILE.npz with x_train and y_train"
        )
    x, y, xt, yt, _, _ = _load_data(data, need_train=True, need_test=False)
    if y is None:
        raise InvalidArgumentError(f"Expected arrays x_train and y_train in {data!r}. Received: no y_train")
    x, xt = _fit_shape(x, in_shape), _fit_shape(xt, in_shape)
    status(f"Pruning to {target:.0%} sparsity, {epochs} epoch(s) of fine-tuning")
    with _c_stdout_to_stderr():
        # Keras' progress bar for people at a terminal; it goes to stderr, as fd 1 does here.
        result = sparsify_model(model, x, y, target=target, epochs=epochs, batch_size=batch_size,
                                validation_data=(xt, yt) if xt is not None and yt is not None else None,
                                verbose=1 if stderr_is_tty() else 0)
    # model.save writes through a path; save to a temporary file, then move the bytes atomically.
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.keras"
        result.model.save(tmp_path)
        atomic_write_bytes(output, tmp_path.read_bytes())
    if as_json:
        echo_json({"output": str(output), **result.to_dict()})
    else:
        click.echo(f"wrote {output}")
        click.echo(result.to_table())


def _heldout_options(heldout, calibration, abstain_coverage, heldout_samples, force) -> dict:
    """The held-out fitting arguments of :func:`edgekit.converters.convert` from the CLI's options."""
    if heldout is None:
        return {}
    status(f"Fitting calibration on {len(heldout[0])} held-out inputs, T={heldout_samples}")
    return {"heldout_data": heldout, "heldout_samples": heldout_samples, "calibration": calibration or "mi-temperature",
            "abstain_coverage": abstain_coverage or None, "force_small_heldout": force}
