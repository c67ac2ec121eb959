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

:func:`check_model` is the one fit check: ``edgekit convert --device``, ``convert(device=...)``
and ``edgekit profile --device`` all call it. It takes the profile and the file's facts
(:class:`ModelFacts`, read by :func:`edgekit.runtime.inspect.model_facts`) and returns every reason
the model does not fit (ops, with what the target has instead where it knows; dtypes; int8 I/O;
file size; tensor arena against RAM; stochastic mode; static batch), so a caller can refuse with
all of them at once:

>>> from edgekit.runtime.inspect import model_facts
>>> check_model(load_profile("coral-edgetpu"), model_facts(tflite))
['op ELU is not supported on coral-edgetpu: it has no ELU kernel; its activations are RELU, ...']

:func:`conversion_settings` applies a profile's conversion defaults (quantization, stochastic
mode, int8 I/O, static batch) under the caller's explicit choices; ``convert(device=...)`` and
``edgekit convert --device`` both use it, so Python and the CLI pick the same file.

Only the standard library is used here (``tomllib``; ``tomli`` on Python 3.10), so the profiles
load on the device itself.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, InvalidArgumentError
from edgekit.qtyping import QUANTIZATIONS, STOCHASTIC_MODES, Quantization, Stochastic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

__all__ = [
    "DEFAULT_SAMPLES",
    "DTYPES",
    "PROFILE_DIR",
    "ROLES",
    "ConversionSettings",
    "DeviceFitError",
    "DeviceProfile",
    "DeviceProfileError",
    "ModelFacts",
    "check_model",
    "conversion_settings",
    "list_profiles",
    "load_profile",
]

PROFILE_DIR = Path(__file__).resolve().parent

# The signature roles of an edgekit file (docs/format.md).
ROLES = ("full", "trunk", "head", "masked")
# MC samples T per prediction when a profile does not say (the runtime's default T).
DEFAULT_SAMPLES = 100
# Tensor dtypes a profile may list. int32/int64/bool tensors (int8 biases, shapes, comparison
# results) exist in every model and every runtime handles them, so they are not listed or checked.
DTYPES = ("float32", "float16", "int8", "uint8", "int16")
# The quantization modes and the compute dtypes each one needs on the device.
_QUANT_NEEDS = {
    Quantization.FLOAT32.value: ("float32",),
    Quantization.FLOAT16.value: ("float32",),  # float16 weights are dequantized to float32 when the model loads
    Quantization.DYNAMIC.value: ("float32", "int8"),
    Quantization.INT8.value: ("int8",),
    Quantization.INT16X8.value: ("int16", "int8"),
}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_OP_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class DeviceProfileError(EdgekitError, ValueError):
    """A device profile is missing, malformed, or has a bad value (the message says where)."""


class DeviceFitError(EdgekitError, ValueError):
    """A model does not fit a device profile (the message lists every reason)."""


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
            model is loaded into RAM next to the arena). Such a target runs TFLite Micro, which has
            no dynamic batch: it runs the T passes one by one, so its arena is the batch-1 one.
        default_quantization: The quantization ``convert --device`` picks, from
            :data:`edgekit.qtyping.QUANTIZATIONS`.
        default_budget_ms: Latency budget for one MC prediction used when none is given.
        default_samples: MC samples T one prediction plans for: the batch the tensor arena is
            checked at and, with ``static_batch``, the batch of the stochastic signatures.
        static_batch: True for a fixed-shape target (the Edge TPU compiler): every signature is
            exported with a static batch, ``trunk`` at 1 and ``full``/``head``/``masked`` at
            ``default_samples``, so no shape is computed at run time. The runtime then draws T in
            multiples of that batch.
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
    default_samples: int = DEFAULT_SAMPLES
    static_batch: bool = False
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
_OPTIONAL = {"flash_bytes": None, "default_samples": DEFAULT_SAMPLES, "static_batch": False, "notes": ""}


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
    out["default_samples"] = _int(values, "default_samples", source)
    if not isinstance(values["static_batch"], bool):
        raise _err(source, "static_batch", "true or false", values["static_batch"])
    out["static_batch"] = values["static_batch"]
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


# --------------------------------------------------------------------------- what a file is


@dataclass(frozen=True)
class ModelFacts:
    """What the fit check needs to know about one model file, as plain values.

    :func:`edgekit.runtime.inspect.model_facts` reads them from a ``.tflite``; a test (or a tool
    with its own reader) may build them by hand.

    Attributes:
        size_bytes: Size of the file.
        ops: Builtin op names it uses (any case; custom ops as ``"CUSTOM:<code>"``).
        dtypes: Tensor dtypes (strings or numpy dtypes); int32/int64/bool are never checked.
        io_dtype: dtype of its input and output tensors, or None if unknown.
        stochastic: The metadata's stochastic mode (``"in-graph"``, ``"mask-input"``, ``"none"``),
            or None for a file without edgekit metadata.
        batches: Role (``full``, ``trunk``, ``head``, ``masked``) -> static batch of that
            signature, None where the batch is dynamic; only the roles the file has.
        arena: Role -> the live tensor bytes at each step of that signature, as ``(bytes per
            batch row, fixed bytes)`` pairs (:meth:`arena_bytes`). Empty: the arena is not checked.
    """

    size_bytes: int
    ops: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    io_dtype: str | None = None
    stochastic: str | None = None
    batches: Mapping[str, int | None] = field(default_factory=dict)
    arena: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def arena_bytes(self, role: str, batch: int) -> int | None:
        """Estimated tensor arena of signature ``role`` run at ``batch`` rows (None if unknown).

        A signature with a static batch has the same arena at every ``batch``.
        """
        steps = self.arena.get(role)
        if steps is None:
            return None
        return max((per_row * batch + fixed for per_row, fixed in steps), default=0)


# --------------------------------------------------------------------------- the fit check

# The signature the runtime runs at batch T, in the order it prefers them.
_SAMPLERS = ("masked", "head", "full")
# Ops that do the same kind of job, so a refusal can name what the target has instead.
_OP_FAMILIES = {
    "activations": ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "ELU", "GELU",
                    "HARD_SWISH", "LOGISTIC", "TANH"),
    "pooling ops": ("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"),
}
# Ops edgekit's own export puts in a file, and how to convert without them.
_EXPORT_HINTS = {
    "RANDOM_UNIFORM": " (in-graph dropout: convert in mask-input mode)",
    "SHAPE": " (a shape computed at run time from a dynamic batch: convert for this device, which exports "
             "static shapes)",
    "DEQUANTIZE": " (a float island of an int8 model: some op has no int8 kernel)",
}


def _op_hint(profile: DeviceProfile, op: str) -> str:
    if op in _EXPORT_HINTS:
        return _EXPORT_HINTS[op]
    for family, members in _OP_FAMILIES.items():
        if op in members:
            has = [m for m in members if profile.supports_op(m)]
            if has:
                return f": it has no {op} kernel; its {family} are {', '.join(has)}"
    return ""


def _arena_need(profile: DeviceProfile, facts: ModelFacts, samples: int) -> int | None:
    """The tensor arena the runtime needs: ``trunk`` at batch 1, then the sampler at batch T
    (batch 1 on TFLite Micro, which runs the T passes one by one)."""
    rows = 1 if profile.flash_bytes is not None else samples
    sampler = next((r for r in _SAMPLERS if r in facts.arena), None)
    parts = [facts.arena_bytes(sampler, rows)] if sampler is not None else []
    if "trunk" in facts.arena:
        parts.append(facts.arena_bytes("trunk", 1))
    parts = [p for p in parts if p is not None]
    return max(parts) if parts else None


def check_model(profile: DeviceProfile, facts: ModelFacts, *, samples: int | None = None) -> list[str]:
    """The reasons a model does not fit ``profile``; an empty list if it fits.

    The one fit check of edgekit: convert, profile and the CLI all call it.

    Args:
        profile: The target.
        facts: The file's facts (:func:`edgekit.runtime.inspect.model_facts`).
        samples: MC samples T per prediction the tensor arena is checked at (default: the
            profile's ``default_samples``). Not used where the batch is static, nor on TFLite
            Micro (a profile with ``flash_bytes``: batch 1).

    The rules, in the order the problems are listed: every op has a kernel on the target (a
    refused op names what the target has instead where edgekit knows it); every compute dtype is
    one the target computes in; int8 inputs and outputs where the profile needs them; the file
    size; a target that takes its masks as inputs gets no in-graph random op; a fixed-shape
    target (``static_batch``) gets static batches only; the tensor arena fits the RAM (on an MCU
    the model stays in flash and only the arena counts; elsewhere model and arena both do).
    """
    if not isinstance(facts, ModelFacts):
        raise InvalidArgumentError(
            f"Expected `facts` to be edgekit.devices.ModelFacts (edgekit.runtime.inspect.model_facts(tflite)). "
            f"Received: {type(facts).__name__}"
        )
    samples = profile.default_samples if samples is None else samples
    problems: list[str] = []
    if profile.supported_ops != "all":
        for op in sorted({op.upper() for op in facts.ops} - set(profile.supported_ops)):
            problems.append(f"op {op} is not supported on {profile.name}{_op_hint(profile, op)}")
    bad = sorted({_dtype_name(d) for d in facts.dtypes} & (set(DTYPES) - set(profile.dtypes)))
    for d in bad:
        problems.append(f"{d} tensors are not supported on {profile.name} (supported: {', '.join(profile.dtypes)})")
    if facts.io_dtype is not None and profile.int8_io and _dtype_name(facts.io_dtype) != "int8":
        problems.append(f"{profile.name} needs int8 input/output tensors; the model has {_dtype_name(facts.io_dtype)}")
    if facts.size_bytes > profile.max_model_bytes:
        problems.append(
            f"model is {facts.size_bytes:,} bytes; {profile.name} takes at most {profile.max_model_bytes:,} bytes"
        )
    if profile.stochastic == Stochastic.MASK_INPUT.value and facts.stochastic == Stochastic.IN_GRAPH.value:
        problems.append(
            f"{profile.name} takes its dropout masks as inputs (stochastic='mask-input'); the model draws them "
            "in the graph (stochastic='in-graph')"
        )
    if profile.static_batch:
        dynamic = [r for r in ROLES if r in facts.batches and facts.batches[r] is None]
        if dynamic:
            problems.append(
                f"{profile.name} runs static shapes only; the model's {', '.join(dynamic)} signature"
                f"{'s have' if len(dynamic) > 1 else ' has'} a dynamic batch (convert for {profile.name}: trunk at "
                f"batch 1, the others at batch {profile.default_samples})"
            )
    need = _arena_need(profile, facts, samples)
    if need is not None:
        # On an MCU the model runs from flash and only the arena takes RAM; elsewhere both do.
        in_ram = need + (0 if profile.flash_bytes is not None else facts.size_bytes)
        if in_ram > profile.ram_bytes:
            what = "tensor arena" if profile.flash_bytes is not None else "model + tensor arena"
            problems.append(f"{what} needs {in_ram:,} bytes; {profile.name} has {profile.ram_bytes:,} bytes of RAM")
    return problems


# --------------------------------------------------------------------------- conversion defaults


@dataclass(frozen=True)
class ConversionSettings:
    """The export choices for one conversion, after a profile's defaults were applied.

    Attributes:
        quantize: One of :data:`edgekit.qtyping.QUANTIZATIONS`.
        stochastic: ``"in-graph"`` or ``"mask-input"``.
        int8_io: int8 input and output tensors.
        batch: Static batch of ``full``/``head``/``masked`` (``trunk`` is then exported at batch
            1); None exports every signature with a dynamic batch.
    """

    quantize: str
    stochastic: str
    int8_io: bool
    batch: int | None


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise InvalidArgumentError(
            f"Invalid value received for argument `{name}`. Expected one of {', '.join(map(repr, allowed))}. "
            f"Received: {name}={value!r}"
        )


def conversion_settings(
    profile: DeviceProfile | None = None,
    *,
    quantize: str | None = None,
    stochastic: str | None = None,
    int8_io: bool | None = None,
    batch: int | None = None,
) -> ConversionSettings:
    """The export choices for ``profile``, with every argument given (not None) taking precedence.

    Without a profile: ``float32``, ``in-graph``, float I/O, dynamic batch. With one: its
    ``default_quantization`` and ``stochastic``; int8 I/O when the profile needs it and the
    quantization is ``int8``; a static batch of ``default_samples`` when ``static_batch`` is set.
    """
    if profile is not None and not isinstance(profile, DeviceProfile):
        raise InvalidArgumentError(f"Expected a DeviceProfile or None. Received: {type(profile).__name__}")
    quantize = quantize if quantize is not None else (
        profile.default_quantization if profile is not None else Quantization.FLOAT32.value)
    stochastic = stochastic if stochastic is not None else (
        profile.stochastic if profile is not None else Stochastic.IN_GRAPH.value)
    _choice("quantize", quantize, QUANTIZATIONS)
    _choice("stochastic", stochastic, STOCHASTIC_MODES)
    if int8_io is None:
        int8_io = profile is not None and profile.int8_io and quantize == Quantization.INT8.value
    if batch is None and profile is not None and profile.static_batch:
        batch = profile.default_samples
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise InvalidArgumentError(
            f"Invalid value received for argument `batch`. Expected a positive int or None. Received: batch={batch!r}"
        )
    return ConversionSettings(quantize=str(quantize), stochastic=str(stochastic), int8_io=bool(int8_io), batch=batch)
