"""Load a ``.keras`` file that may have come from anywhere, and fail with one clear line if it is bad.

A ``.keras`` file is a zip archive holding ``config.json`` (the architecture), ``metadata.json`` and
``model.weights.h5`` (or ``.npz``). Keras can rebuild arbitrary Python from it (a ``Lambda`` layer
carries marshalled bytecode), and an archive is a list of paths that an extractor writes to disk.
:func:`load_keras_model` therefore checks the file itself before Keras touches it:

>>> from edgekit.converters.loading import load_keras_model
>>> model = load_keras_model("model.keras")          # doctest: +SKIP

1. The path is an existing regular file, and it is a zip archive that is not truncated (every
   member's CRC checks).
2. Every member name is a plain relative path: no absolute path, drive letter, ``..``, backslash or
   symbolic link (zip-slip). Keras only ever sees a private copy of the bytes inside a temporary
   folder, so anything it extracts lands there and is deleted afterwards.
3. ``config.json`` is valid JSON describing a model, and no object in it is a ``Lambda`` layer or a
   serialized Python lambda, whatever Keras' global safe-mode setting is. Keras' ``safe_mode`` stays
   on as a second line of defence.
4. The weights file is present, and Keras loads it into every layer (``compile=False``).

Every failure is a :class:`KerasFileError` (a ``ValueError``) whose message is one line naming what
was expected and what was received, so the CLI can print it as ``Error: ...``.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

import keras

import edgekit.layers  # noqa: F401  registers the MC layers so their configs resolve
from edgekit.errors import EdgekitError

__all__ = ["KerasFileError", "load_keras_model"]

# Members Keras 3 writes; anything else must live under assets/ (e.g. a vocabulary file).
_CONFIG = "config.json"
_WEIGHTS = ("model.weights.h5", "model.weights.npz")
_KNOWN = {_CONFIG, "metadata.json", *_WEIGHTS}
_ASSETS_PREFIX = "assets/"
# A model config is a few hundred KB at most; refuse to parse a JSON bomb.
_MAX_CONFIG_BYTES = 16 * 1024 * 1024
# Class names that make Keras run code stored in the file.
_CODE_CLASSES = {"Lambda", "__lambda__", "TFOpLambda"}


class KerasFileError(EdgekitError, ValueError):
    """A ``.keras`` file is missing, malformed, unsafe or describes a model edgekit cannot load."""


def load_keras_model(path: str | os.PathLike) -> keras.Model:
    """Load a Keras 3 ``.keras`` model safely (``compile=False``), or raise :class:`KerasFileError`.

    Args:
        path: Path to a ``.keras`` archive written by ``model.save``.

    Returns:
        The uncompiled ``keras.Model`` with its weights.

    Raises:
        KerasFileError: the file is missing, a directory, not a zip or not a Keras archive, truncated,
            has unsafe member names, invalid ``config.json``, a ``Lambda`` layer, an unknown layer
            class, or missing or mismatched weights.
    """
    where = f"path={str(path)!r}"
    data = _read_regular_file(Path(path), where)
    archive = _open_archive(data, where)
    with archive:
        names = _check_members(archive, where)
        config = _read_config(archive, where)
    _refuse_code(config, where)
    if not any(w in names for w in _WEIGHTS):
        raise KerasFileError(
            f"The Keras archive has no weights. Expected a member named {_WEIGHTS[0]!r} or {_WEIGHTS[1]!r}. "
            f"Received: members {sorted(names)} in {where}"
        )
    return _load_private_copy(data, where)


def _read_regular_file(path: Path, where: str) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KerasFileError(f"Keras model file not found. Expected an existing .keras file. Received: {where}") from None
    except OSError as e:
        raise KerasFileError(f"Cannot read the Keras model file ({e.strerror}). Expected a readable .keras file. Received: {where}") from None
    if stat.S_ISDIR(mode):
        raise KerasFileError(f"Expected a .keras file, not a directory. Received: {where}")
    if not stat.S_ISREG(mode):
        raise KerasFileError(f"Expected a regular .keras file (not a device, pipe or socket). Received: {where}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise KerasFileError(f"Cannot read the Keras model file ({e.strerror}). Expected a readable .keras file. Received: {where}") from None


def _open_archive(data: bytes, where: str) -> zipfile.ZipFile:
    if not data:
        raise KerasFileError(f"Expected a .keras file (a zip archive). Received: an empty file, {where}")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        # A zip's directory sits at its end, so a truncated archive looks like "not a zip" here.
        kind = "a truncated zip archive" if data[:4] == b"PK\x03\x04" else "a file that is not a zip archive"
        raise KerasFileError(f"Expected a .keras file (a zip archive). Received: {kind}, {where}") from None
    except (OSError, ValueError, EOFError) as e:  # e.g. a corrupt central directory
        raise KerasFileError(f"Expected a .keras file (a zip archive). Received: an unreadable zip ({e}), {where}") from None


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    """Why a member name could escape the extraction folder, or None if it is a plain relative path."""
    name = info.filename
    if "\\" in name:
        return "a backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' component"
    if "\x00" in name:
        return "a NUL byte"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link"
    return None


def _check_members(archive: zipfile.ZipFile, where: str) -> set[str]:
    infos = archive.infolist()
    for info in infos:
        why = _unsafe_member(info)
        if why is not None:
            raise KerasFileError(
                f"Unsafe member in the Keras archive: {info.filename!r} has {why}. Expected plain relative "
                f"member names (zip-slip protection). Received: {where}"
            )
        if info.filename not in _KNOWN and not info.filename.startswith(_ASSETS_PREFIX):
            raise KerasFileError(
                f"Unexpected member {info.filename!r} in the Keras archive. Expected only {sorted(_KNOWN)} and "
                f"assets/. Received: {where}"
            )
    names = {info.filename for info in infos}
    if _CONFIG not in names:
        raise KerasFileError(
            f"The zip archive is not a Keras model. Expected a member named {_CONFIG!r}. "
            f"Received: members {sorted(names)[:5]} in {where}"
        )
    try:
        bad = archive.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise KerasFileError(f"The Keras archive is corrupt or truncated ({e}). Expected intact zip members. Received: {where}") from None
    if bad is not None:
        raise KerasFileError(f"The Keras archive is corrupt: member {bad!r} fails its CRC check. Expected intact zip members. "
            f"Received: {where}")
    return names


def _read_config(archive: zipfile.ZipFile, where: str) -> dict:
    info = archive.getinfo(_CONFIG)
    if info.file_size > _MAX_CONFIG_BYTES:
        raise KerasFileError(
            f"config.json is too large. Expected at most {_MAX_CONFIG_BYTES} bytes. "
            f"Received: {info.file_size} bytes in {where}"
        )
    try:
        config = json.loads(archive.read(_CONFIG).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KerasFileError(f"config.json is not valid JSON ({e}). Expected UTF-8 JSON. Received: {where}") from None
    except RecursionError:
        raise KerasFileError(f"config.json is nested too deeply. Expected a Keras model config. Received: {where}") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str) or "config" not in config:
        raise KerasFileError(
            "config.json does not describe a Keras object. Expected a JSON object with 'class_name' and "
            f"'config'. Received: {type(config).__name__} in {where}"
        )
    return config


def _refuse_code(config: dict, where: str) -> None:
    # Checked here, not only by Keras' safe_mode: keras.config.enable_unsafe_deserialization() anywhere
    # in the process would silently switch Keras' own check off.
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") in _CODE_CLASSES:
                name = node.get("config", {}).get("name") if isinstance(node.get("config"), dict) else None
                raise KerasFileError(
                    f"The model holds a {node['class_name']} layer{f' ({name!r})' if name else ''}, which would run "
                    "Python code stored in the file. Expected layers without embedded code; edgekit never loads "
                    f"them (Keras safe_mode stays on). Received: {where}"
                )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _load_private_copy(data: bytes, where: str) -> keras.Model:
    # Keras extracts members next to the file it opens; give it a copy in a folder we own and delete.
    with tempfile.TemporaryDirectory(prefix="edgekit-keras-") as tmp:
        copy = Path(tmp, "model.keras")
        copy.write_bytes(data)
        try:
            model = keras.saving.load_model(copy, compile=False, safe_mode=True)
        except Exception as e:  # Keras raises bare TypeError/ValueError/KeyError/OSError for broken archives
            raise KerasFileError(_explain(e, where)) from None
    if not isinstance(model, keras.Model):
        raise KerasFileError(f"Expected a Keras model. Received: a {type(model).__name__} in {where}")
    return model


def _explain(error: BaseException, where: str) -> str:
    """One sentence for a Keras loading error (Keras' own messages span many lines and dump configs)."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:  # Sequential/Functional wrap the layer's own error
        chain.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(chain)
    found = re.search(r"Could not (?:locate \w+|deserialize) '([^']+)'", text) or re.search(
        r"Could not deserialize \w+ '([^']+)'", text
    )
    if found:
        return (
            f"Unsupported layer or object {found.group(1)!r}. Expected Keras built-in layers or edgekit's MC layers "
            f"(custom classes must be registered with keras.saving.register_keras_serializable). Received: {where}"
        )
    found = re.search(r"Layer '([^']+)' expected (\d+) variables, but received (\d+)", text)
    if found:
        name, want, got = found.groups()
        return (
            f"The weights do not match the architecture. Expected {want} variables for layer {name!r} in "
            f"the weights file. Received: {got} variables, in {where}"
        )
    return f"Cannot load the Keras model ({_first_line(error)}). Expected a model saved by Keras 3 model.save. Received: {where}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."
