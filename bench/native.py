"""The native runtime's acceptance figures (issue 15): ``edgekit-run`` on the book MLP, JSON out.

    .venv/bin/python bench/native.py                   # a few minutes; writes bench/native.json

Everything is measured in this one run, 1 thread, the book MLP (``edgekit.recipes.book``, trained
briefly on Fashion-MNIST as bench/mc_speed.py does, converted with ``edgekit.converters.convert``),
one input, T=100 unless said:

- ``ratio``: ``edgekit-run --profile``: the median of a whole prediction (trunk, masks, invoke,
  checks, statistics) over the median of the bare batch-100 ``masked`` invoke (inputs written once,
  only LiteRT's Run timed), interleaved in one process, in three processes. Target <= 1.1 (the
  Python runtime takes ~1.3-1.5x). The same for the int8 file.
- ``startup``: a fresh ``edgekit-run MODEL x.npy -T 100 --json`` process: wall time (start-up +
  digest + load + first prediction + output) and peak RSS (``wait4``), median of 15 with the probe
  cached (every later start on a device) and the first one (the child-process probe runs). Targets
  <= 20 ms and <= 20 MB. The Python runtime's start-up (``import edgekit.runtime``, ``MCModel``,
  one prediction) is timed alongside for context.
- ``budget``: 500 inputs at budgets of 1, 2, 5 and 20 ms in one ``edgekit-run --budget-ms`` call
  each: p99 of the per-input ``elapsed_ms`` and the median share of "the samples that fit" (the
  largest T whose median fixed-T prediction, measured here with --profile, is within the budget).
  Targets: p99 <= budget with >= 70% of the samples that fit. ``fixed_t70_p99_ms``: the p99 of 500
  predictions at a fixed T of 70% of the fit, so ``both_feasible_here`` says whether any controller
  could have met both targets on this machine at this moment; ``python_runtime_same_inputs``: the
  Python runtime's controller on the same file and inputs, right after.

If the converter's file has a trunk that ends in a dynamic RESHAPE (a Keras Flatten with a dynamic
batch: the native runtime then cannot use the trunk, docs/native.md), the same trained weights are
also exported with a static flatten, and that file is the one measured (``export`` says which).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "build" / "native" / "edgekit-run"
T = 100
BUDGETS_MS = (1.0, 2.0, 5.0, 20.0)
BUDGET_CALLS = 500

__all__ = ["main"]


def _book(epochs: int):
    import keras

    from edgekit import recipes
    from edgekit.data import load_fashion_mnist

    data = load_fashion_mnist()
    keras.utils.set_random_seed(42)
    mean, std = float(data.x_train.mean()), float(data.x_train.std())
    model = recipes.build("book", mean=mean, std=std)
    recipes.train(model, data.x_train, data.y_train, epochs=epochs, verbose=0)
    return model, data, mean, std


def _static_flatten_copy(model, mean: float, std: float):
    """The book MLP with its Flatten as a reshape to [-1, 784] (a constant shape), same weights."""
    import keras
    from keras import ops

    from edgekit.layers import MCDropout

    class StaticFlatten(keras.layers.Layer):
        def call(self, x):
            return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))

        def compute_output_shape(self, shape):
            return (shape[0], int(np.prod(shape[1:])))

    inputs = keras.Input(model.input_shape[1:], name="x")
    h = keras.layers.Rescaling(scale=1.0 / std, offset=-mean / std, name="standardize")(inputs)
    h = StaticFlatten(name="flatten")(h)
    for layer in model.layers:
        if isinstance(layer, MCDropout):
            h = MCDropout(layer.rate, name=layer.name)(h)
        elif isinstance(layer, keras.layers.Dense):
            h = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)(h)
    copy = keras.Model(inputs, h, name=model.name)
    copy.set_weights(model.get_weights())
    return copy


def _tool(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, env=env, check=True)


def _profile(model: Path, x: Path, samples: int, rounds: int, env) -> dict:
    return json.loads(_tool(model, x, "-T", samples, "--profile", rounds, env=env).stdout)


# Peak RSS of a child as wait4 reports it includes the high-water mark of the memory it was forked
# or vforked from (Linux carries it across exec): from this process, with TensorFlow loaded, that
# is ~1 GB. So a tiny C program (a ~1 MB process) spawns each timed run and reports its wall time
# and ru_maxrss.
_SPAWN_C = r"""
#define _DEFAULT_SOURCE /* wait4 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  (void)argc;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    dup2(null, 2);
    execv(argv[1], argv + 1);
    _exit(127);
  }
  int status;
  struct rusage ru;
  wait4(pid, &status, 0, &ru);
  clock_gettime(CLOCK_MONOTONIC, &b);
  printf("%.4f %ld %d\n", (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) * 1e-6, ru.ru_maxrss,
         WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  return 0;
}
"""


def _spawner(folder: Path) -> Path:
    src, exe = folder / "spawn.c", folder / "spawn"
    src.write_text(_SPAWN_C)
    subprocess.run(["cc", "-std=c11", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def _spawn(spawner: Path, argv: list[str], env) -> tuple[float, float]:
    """(wall ms, peak RSS MB) of one run of argv."""
    out = subprocess.run([str(spawner), *argv], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[2] == "0", argv
    return float(out[0]), int(out[1]) / 1024


def _startup(spawner: Path, model: Path, x: Path, cache: Path, runs: int) -> dict:
    argv = [str(TOOL), str(model), str(x), "-T", str(T), "--json"]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    cold_ms, cold_mb = _spawn(spawner, argv, env)  # a fresh cache: the probe child runs
    warm = [_spawn(spawner, argv, env) for _ in range(runs)]
    return {
        "first_run_with_probe_ms": round(cold_ms, 2),
        "first_run_peak_rss_mb": round(cold_mb, 2),
        "median_ms": round(statistics.median(w[0] for w in warm), 2),
        "peak_rss_mb": round(statistics.median(w[1] for w in warm), 2),
        "runs": runs,
    }


def _python_startup(spawner: Path, model: Path, x: Path, runs: int) -> dict:
    code = ("import numpy as np; from edgekit.runtime import MCModel; "
            f"m = MCModel({str(model)!r}, threads=1); m.predict(np.load({str(x)!r}), samples={T})")
    warm = [_spawn(spawner, [sys.executable, "-c", code], None) for _ in range(runs + 1)][1:]  # the first compiles bytecode
    return {"median_ms": round(statistics.median(w[0] for w in warm), 1),
            "peak_rss_mb": round(statistics.median(w[1] for w in warm), 1), "runs": runs}


def _quantile(v, q) -> float:
    return float(np.quantile(np.asarray(v), q))


_PY_BUDGET = """
import json, sys
import numpy as np
from edgekit.runtime import MCModel
model, xs, budget = sys.argv[1], np.load(sys.argv[2]), float(sys.argv[3])
m = MCModel(model, threads=1)
m.warmup(budget_ms=budget)
p = m.predict(xs, budget_ms=budget)
print(json.dumps({"elapsed_ms": p.elapsed_ms.tolist(), "samples": p.samples.tolist()}))
"""


def _python_budget(model: Path, x_batch: Path, budget: float, fit: int) -> dict:
    """The Python runtime on the same file, inputs and budget, in a fresh process without TensorFlow."""
    out = json.loads(subprocess.run([sys.executable, "-c", _PY_BUDGET, str(model), str(x_batch), str(budget)],
                                    capture_output=True, text=True, check=True).stdout)
    return {"p99_ms": round(_quantile(out["elapsed_ms"], 0.99), 3),
            "late_share": round(float(np.mean(np.array(out["elapsed_ms"]) > budget)), 4),
            "median_share_of_fit": round(float(np.median(out["samples"])) / fit, 3) if fit else None}


def _budgets(model: Path, x_batch: Path, x_one: Path, env) -> dict:
    # Fixed-T prediction times for a ladder of T (median of 60 each, one process per T), for the
    # "samples that fit" of each budget.
    ladder = sorted({1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1000})
    fixed = {t: _profile(model, x_one, t, 60, env)["predict_ms"] for t in ladder}
    out = {"fixed_t_predict_ms": fixed}
    for budget in BUDGETS_MS:
        fits = [t for t, ms in fixed.items() if ms <= budget]
        fit = max(fits) if fits else 0
        run = json.loads(_tool(model, x_batch, "--budget-ms", budget, "--json", env=env).stdout)["predictions"]
        elapsed = [p["elapsed_ms"] for p in run]
        used = [p["samples"] for p in run]
        entry = {
            "calls": len(run),
            "p99_ms": round(_quantile(elapsed, 0.99), 3),
            "median_ms": round(_quantile(elapsed, 0.5), 3),
            "late_share": round(float(np.mean(np.array(elapsed) > budget)), 4),
            "samples_that_fit": fit,
            "median_samples": float(np.median(used)),
            "median_share_of_fit": round(float(np.median(used)) / fit, 3) if fit else None,
        }
        if fit:
            t70 = max(1, int(0.7 * fit))
            ref = json.loads(_tool(model, x_batch, "-T", t70, "--json", env=env).stdout)["predictions"]
            entry["fixed_t70_p99_ms"] = round(_quantile([p["elapsed_ms"] for p in ref], 0.99), 3)
            entry["both_feasible_here"] = entry["fixed_t70_p99_ms"] <= budget
        entry["meets_targets"] = bool(fit and entry["p99_ms"] <= budget and entry["median_share_of_fit"] >= 0.7)
        entry["python_runtime_same_inputs"] = _python_budget(model, x_batch, budget, fit)
        out[f"{budget:g}ms"] = entry
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "native.json"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=500, help="interleaved rounds of each --profile")
    args = parser.parse_args(argv)

    subprocess.run(["make", "-s", "native"], cwd=ROOT, check=True)
    from edgekit.converters import convert
    from edgekit.runtime.metadata import read_metadata

    model, data, mean, std = _book(args.epochs)
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                    "note": "shared with other jobs while measured: compare ratios within this run"},
        "threads": 1,
        "samples": T,
    }
    with tempfile.TemporaryDirectory(prefix="edgekit-native-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
        x = data.x_test[:1].astype(np.float32)
        np.save(tmp / "x.npy", x[0])
        np.save(tmp / "batch.npy", data.x_test[:BUDGET_CALLS].astype(np.float32))
        files = {"float32": convert(model).tflite}
        rep = data.x_train[:1000].astype(np.float32)
        files["int8"] = convert(model, quantize="int8", representative_data=rep).tflite
        export = "edgekit.converters.convert"
        probe = tmp / "probe.tflite"
        probe.write_bytes(files["float32"])
        plan = _profile(probe, tmp / "x.npy", T, 5, env)["plan"]
        if plan != "trunk+masked":
            static = _static_flatten_copy(model, mean, std)
            files = {"float32": convert(static).tflite,
                     "int8": convert(static, quantize="int8", representative_data=rep).tflite}
            export = (f"convert() of the same weights with a static flatten: the converter's file ran as '{plan}' "
                      "(its trunk ends in a dynamic RESHAPE)")
        result["export"] = export
        paths = {}
        for name, blob in files.items():
            paths[name] = tmp / f"book_{name}.tflite"
            paths[name].write_bytes(blob)
            result.setdefault("files", {})[name] = {"bytes": len(blob), "sha256": read_metadata(blob)["sha256"]}

        ratio = {}
        for name, path in paths.items():
            runs = [_profile(path, tmp / "x.npy", T, args.rounds, env) for _ in range(3)]
            ratio[name] = {
                "plan": runs[0]["plan"],
                "invoke_ms": [r["invoke_ms"] for r in runs],
                "predict_ms": [r["predict_ms"] for r in runs],
                "predict_over_invoke": [round(r["predict_over_invoke"], 4) for r in runs],
                "median_predict_over_invoke": round(statistics.median(r["predict_over_invoke"] for r in runs), 4),
            }
        result["ratio"] = ratio
        spawner = _spawner(tmp)
        result["startup"] = {name: _startup(spawner, path, tmp / "x.npy", tmp / f"cache-{name}", 15)
                             for name, path in paths.items()}
        result["startup_python_runtime"] = _python_startup(spawner, paths["float32"], tmp / "x.npy", 5)
        result["budget"] = _budgets(paths["float32"], tmp / "batch.npy", tmp / "x.npy", env)

    s = result["startup"]["float32"]
    result["targets"] = {
        "predict_over_invoke <= 1.1": result["ratio"]["float32"]["median_predict_over_invoke"] <= 1.1,
        "startup <= 20 ms": s["median_ms"] <= 20,
        "peak_rss <= 20 MB": s["peak_rss_mb"] <= 20,
        **{f"budget {b:g} ms: p99 <= budget, >= 70% of fit": result["budget"][f"{b:g}ms"]["meets_targets"]
           for b in BUDGETS_MS},
    }
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"ratio": {k: v["median_predict_over_invoke"] for k, v in result["ratio"].items()},
                      "startup": result["startup"], "budget": {k: v for k, v in result["budget"].items() if k != "fixed_t_predict_ms"},
                      "targets": result["targets"]}, indent=1))


if __name__ == "__main__":
    main()
