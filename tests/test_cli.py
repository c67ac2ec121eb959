"""The command line as a whole: every command has help, --version works, packaging stays one namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from edgekit import __version__
from edgekit.cli import _COMMANDS, cli


def test_group_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    for name in _COMMANDS:
        assert f"  {name}" in result.output


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_command_has_help_with_text(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {name}" in result.output or f"Usage: edgekit {name}" in result.output
    command = cli.get_command(None, name)
    assert command.help and len(command.help.strip()) > 20, f"{name} needs a docstring"


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
    """The wheel holds edgekit/* only: no top-level `runtime`, `converters` or `devices` module."""
    proc = subprocess.run(
        # Build isolation on purpose: the build backend comes from [build-system], as for a user's `pip install .`.
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        capture_output=True, text=True, timeout=300,
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
    (["--recipe", "book", "--out", "m.h5"], "Expected a path ending in .keras. Received: 'm.h5'"),
    (["--recipe", "selu", "--l1", "0.01", "--out", "m.keras"], "--l1/--l2 apply to --recipe default only"),
    (["--recipe", "book", "--max-norm", "1", "--out", "m.keras"], "--max-norm applies to --recipe default or selu"),
])
def test_train_usage_errors_exit_2_before_any_work(args, message):
    result = CliRunner().invoke(cli, ["train", *args])
    assert result.exit_code == 2
    assert message in result.output
