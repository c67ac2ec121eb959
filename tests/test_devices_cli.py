"""``edgekit devices list|show``: exact output, JSON, exit codes, help text."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.devices import PROFILE_DIR, list_profiles, load_profile


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)


def test_list_table():
    result = _run("devices", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "QUANT", "STOCHASTIC", "THREADS", "RAM", "BUDGET", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == [p.name for p in list_profiles()]
    coral = next(line for line in lines if line.startswith("coral-edgetpu"))
    assert coral.split()[1:6] == ["int8", "mask-input", "1/4", "1", "GiB"]


def test_list_json_round_trips():
    result = _run("devices", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == [p.to_dict() for p in list_profiles()]


def test_show_builtin():
    result = _run("devices", "show", "cortex-m-tflm")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "stochastic       mask-input" in lines
    assert "RAM              192 KiB (196,608 bytes)" in lines
    assert "flash            1 MiB (1,048,576 bytes)" in lines
    assert lines[lines.index("sources:") + 1] == "  https://docs.arduino.cc/hardware/nano-33-ble-sense/"
    assert "static batch     no" in lines


def test_show_a_fixed_shape_target():
    lines = _run("devices", "show", "coral-edgetpu").stdout.splitlines()
    assert "default T        16" in lines
    assert "static batch     yes (trunk 1, the others 16)" in lines


def test_show_user_file_json(tmp_path):
    path = tmp_path / "my-board.toml"
    path.write_text((PROFILE_DIR / "rpi5.toml").read_text().replace('name = "rpi5"', 'name = "my-board"'))
    result = _run("devices", "show", path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {**load_profile("rpi5").to_dict(), "name": "my-board"}


def test_show_bad_file_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text((PROFILE_DIR / "rpi5.toml").read_text().replace('stochastic = "in-graph"', 'stochastic = "sometimes"'))
    result = _run("devices", "show", path)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {path}: invalid value for key `stochastic`. Expected one of 'in-graph', 'mask-input'. "
        "Received: 'sometimes'\n"
    )


def test_show_needs_an_argument():
    assert _run("devices", "show").exit_code == 2


@pytest.mark.parametrize(
    "args, first_line",
    [
        (["devices"], "Target device profiles (built in, or your own TOML file)."),
        (["devices", "list"], "List the built-in device profiles."),
        (["devices", "show"], "Show one profile: a built-in NAME or the PATH of a .toml file."),
        (["profile"], "Time MC prediction of MODEL.tflite against T and recommend T for a latency"),
    ],
)
def test_help(args, first_line):
    result = _run(*args, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: cli {' '.join(args)}")
    assert first_line in result.stdout
