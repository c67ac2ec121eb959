"""What counts as a correct outcome for each corrupted file, shared by the tests and the benchmark.

:func:`violation` returns None when a result keeps the promise of issue 6 for its case, else a short
reason. The promise, by ``Case.expect``:

- every case: no crash of the calling process (``crash``), no hang (``hang``), no exception escaping
  the CLI (``uncaught``), and an error is one line of a type edgekit raises on purpose;
- ``integrity`` (an edgekit export with a changed byte): always an error; when the file keeps its
  length (a byte flip, a rewritten shape or index) it must be the integrity check that says so;
- ``error`` (not a model at all): an error;
- ``no-crash`` (re-signed or foreign files, which no digest can vouch for): may run, but then the
  probabilities must be finite and sum to 1.
"""

from __future__ import annotations

from .corrupt import Case

__all__ = ["WRONG_OUTPUT", "is_clean_error", "violation"]

# The reason :func:`violation` gives for a file that ran and returned something that is not a
# probability vector (kept apart: the digest cannot catch it on re-signed or foreign files; only a
# check of the outputs can).
WRONG_OUTPUT = "ran and returned non-finite or unnormalized probabilities"

# Python's own errors that are clear when they name the path (missing file, a directory, ...).
_OS_ERRORS = ("builtins.FileNotFoundError", "builtins.IsADirectoryError", "builtins.PermissionError", "builtins.OSError")
_SAME_LENGTH_KINDS = ("flip-header", "flip-opcode", "flip-shape", "flip-weights", "flip-metadata", "huge-tensor", "bad-index")


def is_clean_error(result: dict, mode: str) -> bool:
    if mode == "predict":
        # exit 1 for library errors; 2 for usage errors click catches first (missing path, directory)
        return result.get("exit_code") in (1, 2) and bool(result.get("one_line")) and result["message"].startswith("Error:")
    kind = result.get("type", "")
    return (kind.startswith("edgekit.") or kind in _OS_ERRORS) and bool(result.get("one_line")) and bool(result.get("message"))


def violation(case: Case, result: dict, mode: str) -> str | None:
    status = result["status"]
    if status in ("crash", "hang", "uncaught"):
        return status
    if status == "error":
        if not is_clean_error(result, mode):
            return f"unclear error {result.get('type')}: {result.get('message')!r}"
        if case.expect == "integrity" and case.kind in _SAME_LENGTH_KINDS:
            text = f"{result.get('type', '')} {result.get('message', '')}".lower()
            if "integrity" not in text and "digest" not in text and "damaged" not in text:
                return f"changed byte not caught by the integrity check: {result.get('type')}: {result.get('message')!r}"
        return None
    if status == "ran":
        if case.expect in ("integrity", "error"):
            return "ran a file that must be refused"
        if not result.get("finite"):
            return WRONG_OUTPUT
        return None
    return f"unknown status {status!r}"
