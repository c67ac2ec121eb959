"""Child process of the fuzz harness: load many model files, one per request, and report each.

Run as ``python tests/fuzz/worker.py MODE``. Reads one JSON request per line on stdin
(``{"path": ..., "input_shape": [...]}``, plus ``"model"`` when the case is an input file for that
model) and writes one JSON result per line on stdout:
``{"status": "ran" | "error", ...}``. A native crash kills this process; the parent sees EOF and
records it. Modes:

- ``stock``: the stock ``ai_edge_litert`` Interpreter, nothing from edgekit (the baseline);
- ``mcmodel``: ``edgekit.runtime.MCModel(path).predict(x)``, this process being the caller;
- ``predict``: the ``edgekit predict`` command, run in-process with click's ``CliRunner``.

Address space is capped (``RLIMIT_AS``, 6 GiB or ``$FUZZ_AS_LIMIT`` bytes) so a file declaring huge
tensors, or a decompression bomb, cannot exhaust the shared machine: an allocation beyond the cap
fails instead of swapping.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback

import numpy as np

__all__ = ["main"]

ADDRESS_SPACE_LIMIT = 6 * 1024**3  # 6 GiB: far above what these models need (tens of MB)


def _finite_probs(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values)))


def _stock(path: str, input_shape: list[int]) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=1)
    interp.allocate_tensors()
    for detail in interp.get_input_details():
        shape = [int(d) for d in detail["shape"]]
        if int(np.prod(shape, dtype=np.int64)) > 10_000_000:
            raise MemoryError(f"input declares {shape}")
        # Mask inputs get ones (keep every unit) so a mask-input model is deterministic.
        fill = 1.0 if "mask" in detail["name"] else 0.5
        interp.set_tensor(detail["index"], np.full(shape, fill, dtype=detail["dtype"]))
    interp.invoke()
    outs = [interp.get_tensor(d["index"]) for d in interp.get_output_details()]
    flat = np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outs]) if outs else np.zeros(0)
    return {"status": "ran", "finite": _finite_probs(flat), "output": flat[:64].tolist()}


def _mcmodel(path: str, input_shape: list[int]) -> dict:
    from edgekit.runtime import MCModel

    model = MCModel(path, seed=0)
    x = np.full([1, *input_shape], 0.5, dtype=np.float32)
    pred = model.predict(x, samples=8)
    mean = np.asarray(pred.mean, dtype=np.float64)
    ok = _finite_probs(mean) and np.allclose(mean.sum(axis=-1), 1.0, atol=1e-4) and bool(np.all(mean >= -1e-6))
    return {"status": "ran", "finite": ok, "output": mean.ravel()[:64].tolist()}


def _predict(path: str, input_shape: list[int], scratch: str, model: str | None = None) -> dict:
    from click.testing import CliRunner

    from edgekit.cli import cli

    if model is not None:  # the case is the input file (an image), the model is fixed
        path, x_path = model, path
    else:
        x_path = os.path.join(scratch, f"x_{'_'.join(map(str, input_shape))}.npy")
        if not os.path.exists(x_path):
            np.save(x_path, np.full([1, *input_shape], 0.5, dtype=np.float32))
    result = CliRunner().invoke(cli, ["predict", path, x_path, "--samples", "8", "--json"])
    out = (result.stdout or "") + (getattr(result, "stderr", "") or "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        return {
            "status": "uncaught",
            "type": f"{type(exc).__module__}.{type(exc).__name__}",
            "message": str(exc)[:300],
            "trace": "".join(traceback.format_exception(exc))[-1500:],
        }
    if result.exit_code == 0:
        try:
            rows = json.loads(result.stdout)["predictions"]
            mean = np.asarray([row["mean"] for row in rows], dtype=np.float64)
            ok = bool(np.all(np.isfinite(mean)) and np.all(mean >= -1e-6) and np.allclose(mean.sum(axis=-1), 1.0, atol=1e-4))
        except (ValueError, KeyError, TypeError):
            ok = False  # exit 0 without the documented JSON is wrong too
        return {"status": "ran", "finite": ok, "output": result.stdout[-300:]}
    lines = [line for line in out.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return {
        "status": "error",
        "exit_code": result.exit_code,
        "type": "cli",
        "message": errors[-1] if errors else (lines[-1] if lines else ""),
        "one_line": len(errors) == 1,
    }


def main(mode: str) -> None:
    limit = int(os.environ.get("FUZZ_AS_LIMIT", ADDRESS_SPACE_LIMIT))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    scratch = os.environ.get("FUZZ_SCRATCH", "/tmp")
    handler = {"stock": _stock, "mcmodel": _mcmodel, "predict": _predict}[mode]
    # Warm the imports before the first request so its timeout covers only the model itself.
    if mode == "stock":
        import ai_edge_litert.interpreter  # noqa: F401
    else:
        import edgekit.runtime  # noqa: F401
    print(json.dumps({"status": "ready"}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if mode == "predict":
                result = handler(request["path"], request["input_shape"], scratch, request.get("model"))
            else:
                result = handler(request["path"], request["input_shape"])
        except Exception as exc:  # the result is the exception: its type and one-line message
            result = {
                "status": "error",
                "type": f"{type(exc).__module__}.{type(exc).__name__}",
                "message": str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
                "one_line": "\n" not in str(exc).strip(),
            }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
