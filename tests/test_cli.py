"""The command line as a whole: every command has help, --version works, packaging stays one namespace."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import __version__
from edgekit.cli import _COMMANDS, cli
from edgekit.commands._common import echo_json, library_errors
from edgekit.errors import InvalidArgumentError, MissingFileError


def test_group_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for name in _COMMANDS:
        assert f"  {name}" in result.output


def _all_commands():
    """(argv path, click command) for every command and every subcommand of a group."""
    out = []
    for name in sorted(_COMMANDS):
        command = cli.get_command(None, name)
        out.append(([name], command))
        for sub in sorted(getattr(command, "commands", {})):
            out.append(([name, sub], command.commands[sub]))
    return out


@pytest.mark.parametrize("path, command", _all_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_command_has_help_with_an_example(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {' '.join(path)}" in result.output or f"Usage: edgekit {' '.join(path)}" in result.output
    assert command.help and len(command.help.strip()) > 20, f"{path} needs a docstring"
    assert "Example" in result.output and "  edgekit " + " ".join(path) in result.output, result.output


def test_help_speaks_to_users():
    # "the seed" is the name of the reference text inside the project; a user knows the book.
    for path, _ in _all_commands():
        text = CliRunner().invoke(cli, [*path, "--help"]).output.lower()
        assert "seed's" not in text and "the seed " not in text and "seed text" not in text, (path, text)


def _option_names(command) -> set[str]:
    return {opt for param in command.params for opt in getattr(param, "opts", [])}


def test_every_command_that_writes_a_file_takes_o_output():
    for name in ("train", "convert", "sparsify", "demo"):
        names = _option_names(cli.get_command(None, name))
        assert {"-o", "--output"} <= names and "--out" not in names, (name, names)


def test_samples_is_t_per_input_everywhere():
    # --samples (T per input, one integer) in every command that draws MC samples; profile's list is --sweep.
    for name in ("train", "demo", "convert", "predict"):
        param = next(p for p in cli.get_command(None, name).params if "--samples" in p.opts)
        assert isinstance(param.type, click.IntRange) and param.type.min == 1, name
    profile = cli.get_command(None, "profile")
    assert "--sweep" in _option_names(profile) and "--samples" not in _option_names(profile)


def test_version_and_python_m():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.output.strip() == f"edgekit, version {__version__}"
    proc = subprocess.run([sys.executable, "-m", "edgekit", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.output


def test_help_does_not_import_tensorflow():
    """`edgekit --help` must work on a device: only the base install (no TensorFlow)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from edgekit.cli import cli, _COMMANDS\n"
        "for name in [None, *_COMMANDS]:\n"
        "    r = CliRunner().invoke(cli, ([name] if name else []) + ['--help'])\n"
        "    assert r.exit_code == 0, (name, r.output)\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_wheel_installs_one_namespace(tmp_path):
    """The wheel holds edgekit/* only: no top-level `runtime`, `converters` or `devices` module.

    Built offline: the build backend is the one installed here ([dev] holds setuptools and wheel),
    not a fresh download into an isolated build environment; --no-index makes any download fail.
    """
    from importlib.metadata import version

    backend = version("setuptools")
    assert int(backend.split(".")[0]) >= 77, f"[build-system] needs setuptools>=77; this venv has {backend}"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path), "."],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("edgekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"edgekit", f"edgekit-{__version__}.dist-info"}
    for module in ("edgekit/runtime/__init__.py", "edgekit/converters/__init__.py", "edgekit/devices/__init__.py",
                   "edgekit/devices/host.toml", "edgekit/commands/__init__.py"):
        assert module in names


@pytest.mark.parametrize("args, message", [
    (["--recipe", "book", "-o", "m.h5"], "Expected a path ending in .keras. Received: 'm.h5'"),
    (["--recipe", "selu", "--l1", "0.01", "--output", "m.keras"], "--l1/--l2 apply to --recipe default only"),
    (["--recipe", "book", "--max-norm", "1", "-o", "m.keras"], "--max-norm applies to --recipe default or selu"),
    (["--recipe", "default", "--l2", "nan", "-o", "m.keras"], "Expected a finite number. Received: 'nan'"),
    (["--seed", "-1", "-o", "m.keras"], "-1 is not in the range 0<=x<=4294967295"),
    (["--out", "m.keras"], "No such option '--out'. Did you mean '--output'?"),
])
def test_train_usage_errors_exit_2_before_any_work(args, message):
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 2
    assert message in result.output


# --- Usage errors exit 2 in every command, before any work ----------------------------------------

FIX = Path(__file__).parent / "fixtures"
MLP = str(FIX / "mlp_ingraph.tflite")


@pytest.mark.parametrize("args, message", [
    (["predict", MLP, "x.npy", "--budget-ms", "-1"], "-1.0 is not in the range x>0"),
    (["predict", MLP, "x.npy", "--budget-ms", "0"], "0.0 is not in the range x>0"),
    (["predict", MLP, "x.npy", "--budget-ms", "inf"], "Expected a finite number. Received: 'inf'"),
    (["predict", MLP, "x.npy", "--tolerance", "1.5"], "1.5 is not in the range 0<x<1"),
    (["predict", MLP, "x.npy", "--tolerance", "nan"], "Expected a finite number. Received: 'nan'"),
    (["predict", MLP, "x.npy", "--seed", "-3"], "-3 is not in the range 0<=x<=4294967295"),
    (["predict", MLP, "x.npy", "--threads", "0"], "0 is not in the range x>=1"),
    (["predict", MLP, "x.npy", "--samples", "0"], "0 is not in the range x>=1"),
    (["predict", MLP, "missing.npy"], "'missing.npy' does not exist"),
    (["predict", "missing.tflite", "x.npy"], "'missing.tflite' does not exist"),
    (["profile", MLP, "--budget-ms", "-1"], "-1.0 is not in the range x>0"),
    (["profile", MLP, "--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
    (["profile", MLP, "--threads", "0"], "Expected a comma-separated list of integers >= 1"),
    (["profile", MLP, "--samples", "1,10"], "No such option '--samples'"),
    (["profile", MLP, "--data", "missing.npz"],
     "Expected 'fashion-mnist' or an existing .npz file. Received: 'missing.npz'"),
    (["profile", "missing.tflite"], "'missing.tflite' does not exist"),
    (["convert", "missing.keras", "-o", "m.tflite"], "'missing.keras' does not exist"),
    (["sparsify", "missing.keras", "-o", "m.keras"], "'missing.keras' does not exist"),
    (["demo", "--seed", "-1"], "-1 is not in the range 0<=x<=4294967295"),
    (["demo", "--out", "d"], "No such option '--out'. Did you mean '--output'?"),
])
def test_bad_options_and_missing_inputs_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros(20, np.float32))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr


def test_predict_of_a_valid_budget_still_runs(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(20, np.float32))
    result = CliRunner().invoke(cli, ["predict", MLP, str(tmp_path / "x.npy"), "--budget-ms", "50", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["predictions"][0]["samples"] >= 1


# --- Library errors are one line; bugs keep their traceback ---------------------------------------


def _command(exc: BaseException):
    @click.command()
    @library_errors
    def boom():
        """Raise ``exc``."""
        raise exc

    return boom


@pytest.mark.parametrize("exc", [
    InvalidArgumentError("Expected a thing. Received: another\nsecond line"),
    MissingFileError("Expected a file. Received: nothing"),
    OSError(28, "No space left on device"),
    PermissionError(13, "Permission denied"),
])
def test_library_errors_become_one_line_and_exit_1(exc):
    result = CliRunner().invoke(_command(exc), [])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), KeyError("x"), ValueError("bad"),
                                 RuntimeError("boom"), IndexError("list index out of range")])
def test_bugs_are_not_swallowed(exc):
    # A plain TypeError or KeyError is a bug, not a user mistake: it keeps its type and traceback.
    result = CliRunner().invoke(_command(exc), [])
    assert result.exception is exc and result.exit_code == 1
    assert "Error:" not in result.stderr


def test_a_real_bug_through_a_command_keeps_its_traceback(tmp_path):
    # echo_json on an object it cannot serialise raises a plain TypeError: inside a command that is
    # a bug (a command printing something it should not), and must surface as one.
    @click.command()
    @library_errors
    def dump():
        """Print an object JSON cannot hold."""
        echo_json({"path": tmp_path})

    result = CliRunner().invoke(dump, [])
    assert isinstance(result.exception, TypeError) and "not JSON serializable" in str(result.exception)
