"""Target device profiles: what a device can run, and whether a model fits it.

A profile is a small TOML file describing one target (cores, threads, the TFLite builtin ops and
tensor dtypes it runs, how dropout masks are drawn there, memory and size limits, and the defaults
edgekit uses for it). The built-in profiles live next to this module; each one cites the vendor
pages its numbers come from, and says "estimate" where a number is edgekit's own judgement.

>>> from edgekit.devices import load_profile, list_profiles
>>> [p.name for p in list_profiles()]  # doctest: +NORMALIZE_WHITESPACE
['android-midrange', 'coral-edgetpu', 'cortex-m-tflm', 'host', 'jetson-orin-nano-cpu', 'rpi4', 'rpi5']
>>> load_profile("coral-edgetpu").stochastic
'mask-input'

A user's own board is a TOML file with the same keys (see ``rpi4.toml`` for a commented one):
``load_profile("./my-board.toml")``. Every profile is validated on load; an unknown key, a bad value
or a missing key raises :class:`DeviceProfileError` naming the file, the key and what is allowed.

:func:`check_model` tells whether a converted model fits a profile (ops, dtypes, size, tensor
arena versus RAM) and returns the list of problems, so ``edgekit convert --device`` can refuse
with all of them at once.

Only the standard library is used here (``tomllib``; ``tomli`` on Python 3.10), so the profiles
load on the device itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "DeviceProfile",
    "DeviceProfileError",
    "load_profile",
    "list_profiles",
    "check_model",
    "PROFILE_DIR",
    "QUANTIZATIONS",
    "STOCHASTIC_MODES",
    "DTYPES",
]

PROFILE_DIR = Path(__file__).resolve().parent

# Allowed values, in the order they are shown in error messages.
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
STOCHASTIC_MODES = ("in-graph", "mask-input")
# Tensor dtypes a profile may list. int32/int64/bool tensors (int8 biases, shapes, comparison
# results) exist in every model and every runtime handles them, so they are not listed or checked.
DTYPES = ("float32", "float16", "int8", "uint8", "int16")
# The quantization modes and the compute dtypes each one needs on the device.
_QUANT_NEEDS = {
    "float32": ("float32",),
    "float16": ("float32",),  # float16 weights are dequantized to float32 when the model loads
    "dynamic": ("float32", "int8"),
    "int8": ("int8",),
    "int16x8": ("int16", "int8"),
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_OP_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class DeviceProfileError(EdgekitError, ValueError):
    """A device profile is missing, malformed, or has a bad value (the message says where)."""


@dataclass(frozen=True)
class DeviceProfile:
    """One target device, validated.

    Attributes:
        name: Short id (lower case, digits, dashes), e.g. ``"rpi5"``.
        description: One line for people.
        sources: URLs of the vendor pages the numbers come from.
        cores: CPU cores usable by the interpreter.
        default_threads: Interpreter threads ``profile``/``predict`` use by default (<= cores).
        supported_ops: TFLite builtin op names (``"FULLY_CONNECTED"``, ...) the target runs, or
            ``"all"`` for a full LiteRT build.
        dtypes: Tensor dtypes the target computes in, from :data:`DTYPES`.
        stochastic: ``"in-graph"`` (the model draws masks with ``RANDOM_UNIFORM``) or
            ``"mask-input"`` (the runtime feeds masks; for targets without that kernel).
        int8_io: True if the model's input and output must be int8 tensors.
        max_model_bytes: Largest ``.tflite`` file the target takes.
        ram_bytes: RAM available for the model and its tensor arena.
        flash_bytes: Flash holding the model, for MCUs that run it from flash (else ``None``: the
            model is loaded into RAM next to the arena).
        default_quantization: The quantization ``convert --device`` picks, from
            :data:`QUANTIZATIONS`.
        default_budget_ms: Latency budget for one MC prediction used when none is given.
        notes: Free text (caveats, which variant the numbers are for).
    """

    name: str
    description: str
    sources: tuple[str, ...]
    cores: int
    default_threads: int
    supported_ops: tuple[str, ...] | str
    dtypes: tuple[str, ...]
    stochastic: str
    int8_io: bool
    max_model_bytes: int
    ram_bytes: int
    default_quantization: str
    default_budget_ms: float
    flash_bytes: int | None = None
    notes: str = ""

    def __post_init__(self):
        # Validate values built in code too, not only those loaded from files.
        _validate(dataclasses.asdict(self) | {"sources": self.sources}, "<DeviceProfile>")

    def supports_op(self, op: str) -> bool:
        """True if the target has a kernel for builtin op ``op`` (e.g. ``"RANDOM_UNIFORM"``)."""
        return self.supported_ops == "all" or op.upper() in self.supported_ops

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-ready dict; :meth:`from_dict` gives back an equal profile."""
        out = dataclasses.asdict(self)
        out["sources"] = list(self.sources)
        out["dtypes"] = list(self.dtypes)
        if self.supported_ops != "all":
            out["supported_ops"] = list(self.supported_ops)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> DeviceProfile:
        """Validate ``data`` (keys as in :meth:`to_dict`) and build a profile.

        ``source`` names where the data came from, for error messages. ``cores``,
        ``default_threads`` and ``ram_bytes`` may be ``"auto"``: they are then read from this
        machine (used by the ``host`` profile).
        """
        if not isinstance(data, Mapping):
            raise DeviceProfileError(f"{source}: Expected a table of profile keys. Received: {type(data).__name__}")
        values = _resolve_auto(dict(data), source)
        values = _validate(values, source)
        return cls._unchecked(values)

    @classmethod
    def _unchecked(cls, values: dict[str, Any]) -> DeviceProfile:
        obj = object.__new__(cls)
        for f in dataclasses.fields(cls):
            object.__setattr__(obj, f.name, values[f.name])
        return obj


_FIELDS = {f.name: f for f in dataclasses.fields(DeviceProfile)}
_OPTIONAL = {"flash_bytes": None, "notes": ""}


def _err(source: str, key: str, expected: str, received: Any) -> DeviceProfileError:
    return DeviceProfileError(f"{source}: invalid value for key `{key}`. Expected {expected}. Received: {received!r}")


def _resolve_auto(values: dict[str, Any], source: str) -> dict[str, Any]:
    cpu = os.cpu_count() or 1
    if values.get("cores") == "auto":
        values["cores"] = cpu
    if values.get("default_threads") == "auto":
        values["default_threads"] = min(cpu, values["cores"]) if isinstance(values.get("cores"), int) else cpu
    if values.get("ram_bytes") == "auto":
        try:
            values["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            raise DeviceProfileError(
                f"{source}: cannot read this machine's RAM for key `ram_bytes` = \"auto\". "
                "Expected a number of bytes instead. Received: 'auto'"
            ) from None
    return values


def _int(values, key, source, *, minimum=1, optional=False):
    v = values[key]
    if optional and v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        what = f"an integer >= {minimum}" + (" or nothing" if optional else "")
        raise _err(source, key, what, v)
    return v


def _str(values, key, source, *, allowed=None, allow_empty=False):
    v = values[key]
    if not isinstance(v, str) or (not allow_empty and not v.strip()):
        raise _err(source, key, "a non-empty string", v)
    if allowed is not None and v not in allowed:
        raise _err(source, key, "one of " + ", ".join(repr(a) for a in allowed), v)
    return v


def _str_list(values, key, source, *, item_ok, what):
    v = values[key]
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or not v:
        raise _err(source, key, f"a non-empty list of {what}", v)
    for item in v:
        if not isinstance(item, str) or not item_ok(item):
            raise _err(source, key, f"a non-empty list of {what}", item)
    if len(set(v)) != len(v):
        dup = next(x for x in v if list(v).count(x) > 1)
        raise _err(source, key, f"a list of {what} without repeats", dup)
    return tuple(v)


def _validate(values: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise DeviceProfileError(
            f"{source}: unknown key `{unknown[0]}`. Expected keys: {', '.join(_FIELDS)}. Received: {unknown[0]!r}"
        )
    for key in _FIELDS:
        if key not in values:
            if key in _OPTIONAL:
                values[key] = _OPTIONAL[key]
            else:
                raise DeviceProfileError(f"{source}: missing key `{key}`. Expected it to be set. Received: nothing")
    out: dict[str, Any] = {}
    out["name"] = _str(values, "name", source)
    if not _NAME_RE.match(out["name"]):
        raise _err(source, "name", "lower-case letters, digits and dashes", out["name"])
    out["description"] = _str(values, "description", source)
    out["sources"] = _str_list(
        values, "sources", source, item_ok=lambda s: s.startswith(("https://", "http://")), what="http(s) URLs"
    )
    out["cores"] = _int(values, "cores", source)
    out["default_threads"] = _int(values, "default_threads", source)
    if out["default_threads"] > out["cores"]:
        raise _err(source, "default_threads", f"at most cores={out['cores']}", out["default_threads"])
    if values["supported_ops"] == "all":
        out["supported_ops"] = "all"
    else:
        out["supported_ops"] = _str_list(
            values, "supported_ops", source, item_ok=lambda s: bool(_OP_RE.match(s)),
            what='TFLite builtin op names in upper case (e.g. "FULLY_CONNECTED"), or "all"',
        )
    out["dtypes"] = _str_list(values, "dtypes", source, item_ok=lambda s: s in DTYPES, what=f"dtypes from {DTYPES}")
    out["stochastic"] = _str(values, "stochastic", source, allowed=STOCHASTIC_MODES)
    if not isinstance(values["int8_io"], bool):
        raise _err(source, "int8_io", "true or false", values["int8_io"])
    out["int8_io"] = values["int8_io"]
    out["max_model_bytes"] = _int(values, "max_model_bytes", source)
    out["ram_bytes"] = _int(values, "ram_bytes", source)
    out["flash_bytes"] = _int(values, "flash_bytes", source, optional=True)
    out["default_quantization"] = _str(values, "default_quantization", source, allowed=QUANTIZATIONS)
    budget = values["default_budget_ms"]
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 < budget < float("inf"):
        raise _err(source, "default_budget_ms", "a number of milliseconds > 0", budget)
    out["default_budget_ms"] = float(budget)
    out["notes"] = _str(values, "notes", source, allow_empty=True)

    # Cross-checks: a profile must be usable with its own defaults.
    if out["stochastic"] == "in-graph" and out["supported_ops"] != "all" and "RANDOM_UNIFORM" not in out["supported_ops"]:
        raise _err(source, "stochastic", "'mask-input' when supported_ops lacks RANDOM_UNIFORM", "in-graph")
    missing = [d for d in _QUANT_NEEDS[out["default_quantization"]] if d not in out["dtypes"]]
    if missing:
        raise _err(
            source, "default_quantization",
            f"a mode whose dtypes the profile lists (dtypes lacks {', '.join(missing)})", out["default_quantization"],
        )
    if out["int8_io"] and out["default_quantization"] != "int8":
        raise _err(source, "default_quantization", "'int8' when int8_io is true", out["default_quantization"])
    if out["flash_bytes"] is not None and out["max_model_bytes"] > out["flash_bytes"]:
        raise _err(source, "max_model_bytes", f"at most flash_bytes={out['flash_bytes']}", out["max_model_bytes"])
    return out


def _builtin_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.toml"))}


def _load_file(path: Path) -> DeviceProfile:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise DeviceProfileError(f"Device profile file not found: {str(path)!r}") from None
    except tomllib.TOMLDecodeError as e:
        raise DeviceProfileError(f"{path}: not valid TOML ({e})") from None
    return DeviceProfile.from_dict(data, source=str(path))


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """Load a built-in profile by name (``"rpi5"``) or a user's profile from a ``.toml`` path.

    Raises:
        DeviceProfileError: unknown name, missing file, bad TOML or an invalid profile.
    """
    text = os.fspath(name_or_path)
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text or Path(text).is_file()
    if looks_like_path:
        return _load_file(Path(text))
    builtin = _builtin_paths()
    if text not in builtin:
        raise DeviceProfileError(
            f"Unknown device profile. Expected one of {', '.join(builtin)} or a path to a .toml file. "
            f"Received: {text!r}"
        )
    profile = _load_file(builtin[text])
    if profile.name != text:  # a built-in profile's file name is its name
        raise DeviceProfileError(
            f"{builtin[text]}: invalid value for key `name`. Expected {text!r} (the file name). Received: {profile.name!r}"
        )
    return profile


def list_profiles() -> list[DeviceProfile]:
    """All built-in profiles, sorted by name."""
    return [load_profile(name) for name in _builtin_paths()]


def _dtype_name(d: Any) -> str:
    # Accept numpy dtypes/classes and strings without importing numpy.
    name = getattr(d, "name", None) or getattr(d, "__name__", None) or str(d)
    return str(name).lower()


def check_model(
    profile: DeviceProfile,
    *,
    ops: Iterable[str],
    model_bytes: int,
    arena_bytes: int | None = None,
    dtypes: Iterable[Any] = (),
    io_dtype: str | None = None,
) -> list[str]:
    """The reasons a model does not fit ``profile``; an empty list if it fits.

    Args:
        profile: The target.
        ops: Builtin op names used by the model (``"FULLY_CONNECTED"``, ...), any case.
        model_bytes: Size of the ``.tflite`` file.
        arena_bytes: Estimated tensor arena (activations) in bytes, or None to skip that check.
        dtypes: Tensor dtypes in the model (strings or numpy dtypes). int32/int64/bool are ignored.
        io_dtype: dtype of the model's input/output tensors, checked against ``int8_io`` if given.
    """
    problems: list[str] = []
    if profile.supported_ops != "all":
        missing = sorted({op.upper() for op in ops} - set(profile.supported_ops))
        for op in missing:
            hint = " (in-graph dropout: convert in mask-input mode)" if op == "RANDOM_UNIFORM" else ""
            problems.append(f"op {op} is not supported on {profile.name}{hint}")
    bad = sorted({_dtype_name(d) for d in dtypes} & (set(DTYPES) - set(profile.dtypes)))
    for d in bad:
        problems.append(f"{d} tensors are not supported on {profile.name} (supported: {', '.join(profile.dtypes)})")
    if io_dtype is not None and profile.int8_io and _dtype_name(io_dtype) != "int8":
        problems.append(f"{profile.name} needs int8 input/output tensors; the model has {_dtype_name(io_dtype)}")
    if model_bytes > profile.max_model_bytes:
        problems.append(
            f"model is {model_bytes:,} bytes; {profile.name} takes at most {profile.max_model_bytes:,} bytes"
        )
    if arena_bytes is not None:
        # On an MCU the model runs from flash and only the arena takes RAM; elsewhere both do.
        in_ram = arena_bytes + (0 if profile.flash_bytes is not None else model_bytes)
        if in_ram > profile.ram_bytes:
            what = "tensor arena" if profile.flash_bytes is not None else "model + tensor arena"
            problems.append(f"{what} needs {in_ram:,} bytes; {profile.name} has {profile.ram_bytes:,} bytes of RAM")
    return problems
