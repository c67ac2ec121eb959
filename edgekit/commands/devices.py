"""``edgekit devices``: list the target device profiles and show one of them."""

from __future__ import annotations

import click

from edgekit.commands._common import echo_json, json_option, library_errors

__all__ = ["devices"]


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


@click.group()
def devices():
    """Target device profiles (built in, or your own TOML file).

    \b
    Examples:
      edgekit devices list
      edgekit devices show coral-edgetpu
      edgekit devices show ./my-board.toml --json
    """


@devices.command("list")
@json_option
@library_errors
def list_(as_json: bool):
    """List the built-in device profiles.

    \b
    Examples:
      edgekit devices list
      edgekit devices list --json
    """
    from edgekit.devices import list_profiles

    profiles = list_profiles()
    if as_json:
        echo_json([p.to_dict() for p in profiles])
        return
    rows = [("NAME", "QUANT", "STOCHASTIC", "THREADS", "RAM", "BUDGET", "DESCRIPTION")]
    for p in profiles:
        rows.append((
            p.name, p.default_quantization, p.stochastic, f"{p.default_threads}/{p.cores}",
            _bytes(p.ram_bytes), f"{p.default_budget_ms:g} ms", p.description,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@devices.command("show")
@click.argument("name_or_path")
@json_option
@library_errors
def show(name_or_path: str, as_json: bool):
    """Show one profile: a built-in NAME or the PATH of a .toml file.

    \b
    Example:
      edgekit devices show rpi5
    """
    from edgekit.devices import load_profile

    p = load_profile(name_or_path)
    if as_json:
        echo_json(p.to_dict())
        return
    ops = "all (full LiteRT build)" if p.supported_ops == "all" else f"{len(p.supported_ops)}: " + ", ".join(p.supported_ops)
    lines = [
        ("name", p.name),
        ("description", p.description),
        ("cores", str(p.cores)),
        ("default threads", str(p.default_threads)),
        ("supported ops", ops),
        ("dtypes", ", ".join(p.dtypes)),
        ("stochastic", p.stochastic),
        ("int8 I/O", "yes" if p.int8_io else "no"),
        ("max model size", f"{_bytes(p.max_model_bytes)} ({p.max_model_bytes:,} bytes)"),
        ("RAM", f"{_bytes(p.ram_bytes)} ({p.ram_bytes:,} bytes)"),
        ("flash", "-" if p.flash_bytes is None else f"{_bytes(p.flash_bytes)} ({p.flash_bytes:,} bytes)"),
        ("quantization", p.default_quantization),
        ("latency budget", f"{p.default_budget_ms:g} ms"),
        ("default T", str(p.default_samples)),
        ("static batch", f"yes (trunk 1, the others {p.default_samples})" if p.static_batch else "no"),
    ]
    if p.notes:
        lines.append(("notes", p.notes))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k.ljust(width)}  {v}")
    click.echo("sources:")
    for url in p.sources:
        click.echo(f"  {url}")
