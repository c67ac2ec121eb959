"""The ``edgekit`` command line: train, convert and quantize, predict, profile.

Run ``edgekit COMMAND --help`` for each command. Library errors (:class:`edgekit.errors.EdgekitError`,
and ``OSError`` from the environment) print one line on stderr and exit with status 1; usage errors
(a missing input file, an option out of range) exit with status 2; anything else is a bug and shows
its traceback. Every command that writes a file takes ``-o/--output``; ``--samples`` is always the
number T of MC samples per input; most commands take ``--json`` for machines.
"""

from __future__ import annotations

import importlib

import click

from edgekit import __version__

# name -> module in edgekit.commands holding a click command of that name. Imported lazily so a
# broken optional dependency of one command cannot break `edgekit --help` or the others.
_COMMANDS = {
    "train": "train",
    "demo": "demo",
    "convert": "convert",
    "sparsify": "convert",
    "predict": "predict",
    "profile": "profile",
    "devices": "devices",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        module = _COMMANDS.get(name)
        if module is None:
            return None
        mod = importlib.import_module(f"edgekit.commands.{module}")
        return getattr(mod, name.replace("-", "_"))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def cli():
    """Deploy Keras models to the edge and keep their MC-dropout uncertainty.

    \b
    A typical session:
      edgekit train --recipe book --epochs 20 -o model.keras
      edgekit convert model.keras -o model.tflite --quantize int8
      edgekit predict model.tflite image.png --budget-ms 5
      edgekit profile model.tflite --device host --plot profile.png
    """


def main() -> None:
    import os

    # TensorFlow's C++ start-up chatter (CUDA probing on a CPU box) is noise for a CLI user.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cli(prog_name="edgekit")
