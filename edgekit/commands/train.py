"""``edgekit train``: train a recipe's MC-dropout model on Fashion-MNIST and save it."""

from __future__ import annotations

from pathlib import Path

import click

from edgekit.commands._common import SEED, FiniteFloatRange, echo_json, json_option, library_errors

__all__ = ["evaluate", "train"]


def evaluate(model, x, y, samples: int = 100) -> dict:
    """Deterministic (dropout off) and MC accuracy of ``model`` on ``(x, y)``."""
    import numpy as np

    from edgekit import mc

    det = mc.predict_deterministic(model, x)
    result = mc.predict(model, x, samples=samples)
    return {
        "deterministic_accuracy": float(np.mean(det.argmax(-1) == y)),
        "mc_accuracy": float(np.mean(result.predicted == y)),
        "samples": samples,
        "_mc": result,
        "_det": det,
    }


@click.command()
@click.option("--recipe", type=click.Choice(["book", "default", "selu"]), default="book", show_default=True,
              help="book: the Hands-On ML chapter 11 MLP (the reference MLP); default: its Table 11-3 (He, ELU, "
                   "BN if deep); selu: its Table 11-4.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Maximum epochs (early stopping may end sooner).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, writable=True), required=True,
              help="Where to save the trained model (.keras).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["nadam", "momentum"]), default="nadam", show_default=True)
@click.option("--l1", type=FiniteFloatRange(min=0), default=None, help="ℓ1 kernel regularization (default recipe).")
@click.option("--l2", type=FiniteFloatRange(min=0), default=None, help="ℓ2 kernel regularization (default recipe).")
@click.option("--max-norm", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Max-norm constraint r on each neuron's incoming weights.")
@click.option("--seed", type=SEED, default=None, help="Seed for reproducible training (keras.utils.set_random_seed).")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True,
              help="MC samples for the final test accuracy.")
@json_option
@library_errors
def train(recipe, epochs, out, batch_size, optimizer, l1, l2, max_norm, seed, samples, as_json):
    """Train an MC-dropout model on Fashion-MNIST and save it as a .keras file.

    Shows Keras' progress bar, then prints the test accuracy with dropout off
    (deterministic) and with MC dropout. The recipes are those of Hands-On ML (Géron),
    chapter 11.

    \b
    Example:
      edgekit train --recipe book --epochs 20 -o model.keras
    """
    if not str(out).endswith(".keras"):
        raise click.BadParameter(f"Expected a path ending in .keras. Received: {out!r}", param_hint="'-o' / '--output'")
    if recipe != "default" and (l1 or l2):
        raise click.UsageError("--l1/--l2 apply to --recipe default only (with selu they break self-normalization).")
    if recipe == "book" and max_norm:
        raise click.UsageError("--max-norm applies to --recipe default or selu; book is the reference MLP as is.")
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from edgekit import recipes
    from edgekit.data import load_fashion_mnist
    from edgekit.runtime.fileio import atomic_write_bytes

    data = load_fashion_mnist()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    kwargs = {"mean": float(data.x_train.mean()), "std": float(data.x_train.std())}
    if recipe == "default":
        kwargs.update(l1=l1, l2=l2, max_norm=max_norm)
    elif recipe == "selu":
        kwargs.update(max_norm=max_norm)
    model = recipes.build(recipe, **kwargs)
    fit = recipes.train(model, data.x_train, data.y_train, epochs=epochs, batch_size=batch_size,
                        optimizer=optimizer, verbose=0 if as_json else "auto")
    scores = evaluate(model, data.x_test, data.y_test, samples=samples)
    # Keras writes .keras files itself; save to a temporary file beside the target, then rename.
    tmp = Path(out).with_name(f".{Path(out).name}.partial.keras")
    try:
        model.save(tmp)
        atomic_write_bytes(out, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    summary = {"recipe": recipe, "output": str(out), "epochs_run": fit.epochs_run,
               "val_accuracy": fit.val_accuracy,
               **{k: v for k, v in scores.items() if not k.startswith("_")}}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"Saved {out} ({recipe}, {fit.epochs_run} epochs)")
        click.echo(f"Test accuracy, dropout off:      {summary['deterministic_accuracy']:.4f}")
        click.echo(f"Test accuracy, MC (T={samples}): {summary['mc_accuracy']:.4f}")
