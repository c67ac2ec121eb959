"""``edgekit demo``: the end-to-end job that ``make demo`` runs (see :mod:`edgekit.demo`)."""

from __future__ import annotations

import click

from edgekit.commands._common import SEED, library_errors

__all__ = ["demo"]


@click.command()
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Folder for demo.json, the plots, the model and the .tflite files.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True,
              help="Maximum training epochs (early stopping may end sooner).")
@click.option("--seed", type=SEED, default=42, show_default=True, help="Training seed (the export stays unseeded).")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="MC samples T.")
@click.option("--profile-runs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Measured predictions per T when profiling.")
@library_errors
def demo(out, epochs, seed, samples, profile_runs):
    """Train the reference MC-dropout MLP on Fashion-MNIST and take it to the device.

    Trains the Hands-On ML chapter 11 MLP, repeats the chapter's MC-dropout walk-through on
    the real test set, converts to float32/float16/int8 TFLite with stochastic dropout, prints
    the conversion report and profiles the float32 and int8 files on the host.

    \b
    Example:
      edgekit demo -o demo-out
    """
    from edgekit.demo import run_demo

    run_demo(out, epochs=epochs, seed=seed, samples=samples, profile_runs=profile_runs)
