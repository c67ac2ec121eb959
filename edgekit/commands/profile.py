"""``edgekit profile``: latency (and accuracy) of MC prediction against T, for a latency budget.

Runs on the base install (numpy, click, LiteRT): no TensorFlow is imported, so it runs on the
device itself. matplotlib is imported only for ``--plot``. The ``--json`` output follows
docs/profile-schema.md.
"""

from __future__ import annotations

import io
import platform
import sys
from pathlib import Path

import click

from edgekit.commands._common import (
    DATA,
    FASHION_MNIST,
    SEED,
    FiniteFloatRange,
    echo_json,
    json_option,
    library_errors,
    stderr_is_tty,
    warn,
)
from edgekit.errors import InvalidArgumentError

__all__ = ["SCHEMA_ID", "build_report", "profile", "render_plot"]

SCHEMA_ID = "edgekit.profile/2"


class _IntList(click.ParamType):
    """A comma-separated list of positive integers, e.g. ``1,10,30,100``."""

    name = "INT,INT,..."

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        try:
            items = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            items = ()
        if not items or any(i < 1 for i in items):
            self.fail(f"Expected a comma-separated list of integers >= 1. Received: {value!r}", param, ctx)
        return tuple(sorted(set(items)))


def _load_data(spec: str, examples: int, meta: dict | None, output: str | None = None):
    """(x, y, description) from ``fashion-mnist`` or a labelled .npz (keys x/y or x_test/y_test; with
    ``output``, the targets ``y_<output>`` or ``y_test_<output>`` first where the file has them)."""
    import numpy as np

    if spec == FASHION_MNIST:
        from edgekit.data import load_fashion_mnist

        ds = load_fashion_mnist()
        return ds.x_test[:examples], ds.y_test[:examples], "fashion-mnist test set"
    path = Path(spec)
    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as e:  # not an npz, an object array (pickle), or an empty file
        raise InvalidArgumentError(
            f"Expected an .npz file of labelled arrays. Received: --data {spec!r} ({e})"
        ) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise InvalidArgumentError(f"Expected an .npz file of labelled arrays. Received: --data {spec!r}, one array")
    with f:
        keys = set(f.files)
        pairs = [("x", "y"), ("x_test", "y_test")]
        if output is not None:
            pairs = [("x", f"y_{output}"), ("x_test", f"y_test_{output}"), *pairs]
        for kx, ky in pairs:
            if {kx, ky} <= keys:
                x, y = f[kx][:examples], f[ky][:examples]
                break
        else:
            raise InvalidArgumentError(
                f"{path}: Expected arrays named x and y (or x_test and y_test). Received: {sorted(keys)}"
            )
    image = ((meta or {}).get("input") or {}).get("image")
    if x.dtype.kind in "iu" and image:
        # 8-bit images: scale them the way the model's metadata says (docs/format.md).
        x = x.astype(np.float32) * np.float32(image["scale"]) + np.float32(image["offset"])
    return x, y, str(path)


def build_report(models, *, device, budget_ms, threads, samples, runs, data_desc, examples) -> dict:
    """The JSON report (docs/profile-schema.md) for one or two profiled models."""
    from edgekit.devices import check_model
    from edgekit.runtime.inspect import model_facts

    out_models = []
    for m in models:
        # The library's fit check, at the largest T profiled (the rules, the MCU's batch-1 arena
        # included, live in edgekit.devices).
        problems = check_model(device, model_facts(Path(m.path).read_bytes()), samples=max(samples))
        out_models.append({**m.to_dict(), "device_problems": problems})
    comparison = None
    if len(models) == 2:
        a, b = models
        rows = []
        for pa in a.latency:
            pb = b.point(pa.threads, pa.samples)
            rows.append({
                "threads": pa.threads, "samples": pa.samples,
                "p50_ratio": pb.p50_ms / pa.p50_ms, "p99_ratio": pb.p99_ms / pa.p99_ms,
            })
        acc_rows = None
        if a.accuracy and b.accuracy:
            acc_rows = [
                {"samples": x.samples, "accuracy_diff": y.accuracy - x.accuracy, "nll_diff": y.nll - x.nll,
                 "ece_diff": y.ece - x.ece}
                for x, y in zip(a.accuracy, b.accuracy)
            ]
        comparison = {
            "baseline": a.path, "other": b.path, "model_bytes_ratio": b.model_bytes / a.model_bytes,
            "latency": rows, "accuracy": acc_rows, "values": _value_diffs(a.values, b.values),
        }
    return {
        "schema": SCHEMA_ID,
        "device": device.name,
        "measured_on": {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
        "budget_ms": budget_ms,
        "threads": list(threads),
        "samples": list(samples),
        "runs": runs,
        "data": None if data_desc is None else {"source": data_desc, "examples": examples},
        "models": out_models,
        "comparison": comparison,
    }


def _value_diffs(a, b) -> list[dict] | None:
    """Per T, the second model's RMSE, NLL and coverage minus the first's (value outputs)."""
    if not a or not b:
        return None
    return [{"samples": x.samples, "rmse_diff": y.rmse - x.rmse,
             "nll_diff": None if x.nll is None or y.nll is None else y.nll - x.nll,
             "coverage_diff": y.coverage - x.coverage} for x, y in zip(a, b)]


def _value_rows(values) -> list[tuple[str, ...]]:
    rows = [("T", "RMSE", "NLL", f"{100 * values[0].level:g}% coverage")]
    rows += [(str(v.samples), f"{v.rmse:.4f}", "-" if v.nll is None else f"{v.nll:.4f}", f"{100 * v.coverage:.1f}%")
             for v in values]
    return rows


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _print_human(models, report) -> None:
    for m, rep in zip(models, report["models"]):
        largest = max(m.arena_bytes)
        click.echo(
            f"{m.path}: {_fmt_bytes(m.model_bytes)}, quantization {m.quantization or '?'}, "
            f"{m.stochastic or 'no metadata'}, {m.strategy}; tensor arena ~{_fmt_bytes(m.arena_bytes[largest])} "
            f"at T={largest}; peak RSS {_fmt_bytes(m.peak_rss_bytes)}"
        )
        rows = [("threads", "T", "strategy", "p50 ms", "p90 ms", "p99 ms", "p99 bound", "max ms", "trunk ms", "head ms",
                 "runtime p50")]
        for p in m.latency:
            rows.append((str(p.threads), str(p.samples), p.strategy, f"{p.p50_ms:.3f}", f"{p.p90_ms:.3f}",
                         f"{p.p99_ms:.3f}", f"{p.p99_upper_ms:.3f}", f"{p.max_ms:.3f}",
                         "-" if p.trunk_p50_ms is None else f"{p.trunk_p50_ms:.3f}",
                         f"{p.head_p50_ms:.3f}", "-" if p.runtime_p50_ms is None else f"{p.runtime_p50_ms:.3f}"))
        click.echo(_table(rows))
        if m.accuracy:
            rows = [("T", "accuracy", "NLL", "ECE", "ECE SE")]
            rows += [(str(a.samples), f"{a.accuracy:.4f}", f"{a.nll:.4f}", f"{a.ece:.4f}",
                      "-" if a.ece_se is None else f"{a.ece_se:.4f}") for a in m.accuracy]
            cal = ", the file's temperature applied" if m.accuracy[0].calibrated else ""
            click.echo(f"MC quality on {m.accuracy[0].examples} labelled examples{cal}:")
            click.echo(_table(rows))
        if m.values:
            click.echo(f"MC quality of value output {m.output!r} on {m.values[0].examples} targets:")
            click.echo(_table(_value_rows(m.values)))
        r = m.recommended
        if r.samples is None:
            click.echo(f"recommended: none ({r.reason})")
        else:
            click.echo(f"recommended: T={r.samples} with {r.threads} thread(s): {r.reason}")
        for problem in rep["device_problems"]:
            click.echo(f"does not fit {report['device']}: {problem}")
        click.echo("")
    comp = report["comparison"]
    if comp:
        click.echo(f"comparison (B/A), A = {comp['baseline']}, B = {comp['other']}; "
                   f"size ratio {comp['model_bytes_ratio']:.3f}")
        rows = [("threads", "T", "A p50", "B p50", "p50 B/A", "A p99", "B p99", "p99 B/A")]
        a, b = models
        for row in comp["latency"]:
            pa, pb = a.point(row["threads"], row["samples"]), b.point(row["threads"], row["samples"])
            rows.append((str(row["threads"]), str(row["samples"]), f"{pa.p50_ms:.3f}", f"{pb.p50_ms:.3f}",
                         f"{row['p50_ratio']:.2f}", f"{pa.p99_ms:.3f}", f"{pb.p99_ms:.3f}", f"{row['p99_ratio']:.2f}"))
        click.echo(_table(rows))
        if comp["accuracy"]:
            rows = [("T", "A acc", "B acc", "B-A acc", "B-A ECE")]
            for x, y, d in zip(a.accuracy, b.accuracy, comp["accuracy"]):
                rows.append((str(x.samples), f"{x.accuracy:.4f}", f"{y.accuracy:.4f}", f"{d['accuracy_diff']:+.4f}",
                             f"{d['ece_diff']:+.4f}"))
            click.echo(_table(rows))


def _t_axis(ax, samples) -> None:
    """A log-scale x axis of MC sample counts, ticked at the T values measured."""
    ax.set_xscale("log")
    ax.set_xticks(samples, [str(t) for t in samples])
    ax.minorticks_off()
    ax.set_xlabel("MC samples T (log scale)")


def render_plot(models, budget_ms: float, device_name: str) -> bytes:
    """PNG bytes: latency vs T with the budget line, accuracy vs T (with data), a latency histogram."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a device or in CI
    import matplotlib.pyplot as plt
    import numpy as np

    has_acc = any(m.accuracy or m.values for m in models)
    ncols = 3 if has_acc else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.4 * ncols, 5.6), constrained_layout=True)
    ax_lat, ax_hist = axes[0], axes[-1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [Path(m.path).name for m in models]
    for i, m in enumerate(models):
        thread_counts = sorted({p.threads for p in m.latency})
        # One colour per model (the same in every panel), one marker per thread count.
        color = colors[i % len(colors)]
        for j, t in enumerate(thread_counts):
            pts = sorted((p for p in m.latency if p.threads == t), key=lambda p: p.samples)
            ts = [p.samples for p in pts]
            marker = "o^Dv<>"[j % 6]
            label = f"{names[i]}, {t} thr" if len(models) > 1 or len(thread_counts) > 1 else names[i]
            ax_lat.plot(ts, [p.p50_ms for p in pts], marker + "-", color=color, label=f"{label} p50")
            ax_lat.plot(ts, [p.p99_ms for p in pts], marker + "--", color=color, alpha=0.5, label=f"{label} p99")
        r = m.recommended
        if r.samples is not None:
            ax_lat.plot([r.samples], [r.p99_ms], "*", color="black", markersize=14, zorder=5,
                        label=f"recommended T={r.samples} ({names[i]})" if len(models) > 1 else f"recommended T={r.samples}")
    ax_lat.axhline(budget_ms, color="red", linewidth=2, label=f"budget {budget_ms:g} ms")
    all_t = sorted({p.samples for m in models for p in m.latency})
    ax_lat.set_yscale("log")  # before _t_axis, whose minorticks_off() covers both axes
    _t_axis(ax_lat, all_t)
    ax_lat.set_ylabel("latency of one MC prediction (ms, log scale)")
    ax_lat.set_title(f"Latency vs T ({device_name} profile, measured here)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

    if has_acc:
        ax_acc = axes[1]
        # A class output's accuracy, or a value output's Gaussian NLL (lower is better).
        values = not any(m.accuracy for m in models)
        for i, m in enumerate(models):
            points = [(v.samples, v.nll) for v in m.values or () if v.nll is not None] if values else [
                (a.samples, a.accuracy) for a in m.accuracy or ()]
            if not points:
                continue
            ax_acc.plot([t for t, _ in points], [q for _, q in points], "o-", color=colors[i % len(colors)],
                        label=f"{names[i]} {'NLL' if values else 'accuracy'}")
            quality = dict(points)
            if m.recommended.samples in quality:
                ax_acc.plot([m.recommended.samples], [quality[m.recommended.samples]], "*", color="black",
                            markersize=14)
        n = next((m.values or m.accuracy)[0].examples for m in models if m.values or m.accuracy)
        _t_axis(ax_acc, all_t)
        ax_acc.set_ylabel("Gaussian NLL per value (nats)" if values else "MC accuracy")
        ax_acc.set_title(f"NLL vs T ({n} targets)" if values else f"Accuracy vs T ({n} labelled examples)")
        ax_acc.grid(True, which="both", alpha=0.3)
        ax_acc.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))

    hist_hi = 0.0
    any_rec = any(m.recommended.samples is not None for m in models)
    for i, m in enumerate(models):
        r = m.recommended
        p = m.point(r.threads, r.samples) if r.samples is not None else max(m.latency, key=lambda q: q.samples)
        lat = np.asarray(p.latencies_ms)
        # Clip the long tail at the 99.5th percentile for the bins, so the bulk stays readable.
        hi = float(np.percentile(lat, 99.5)) if lat.size else 1.0
        hist_hi = max(hist_hi, hi)
        ax_hist.hist(np.minimum(lat, hi), bins=40, alpha=0.55, color=colors[i % len(colors)],
                     label=f"{names[i]}, T={p.samples}, {p.threads} thr (p99 {p.p99_ms:.3g} ms)")
    if budget_ms <= 3 * hist_hi:
        ax_hist.axvline(budget_ms, color="red", linewidth=2, label=f"budget {budget_ms:g} ms")
    else:  # a line far to the right would squash every bin into one; say where it is instead
        ax_hist.annotate(f"budget {budget_ms:g} ms (off scale) \u2192", xy=(0.98, 0.5), xycoords="axes fraction",
                         ha="right", color="red", fontsize=9)
    ax_hist.set_xlabel("latency (ms; tail beyond p99.5 piled in the last bin)")
    ax_hist.set_ylabel("runs")
    all_rec = all(m.recommended.samples is not None for m in models)
    ax_hist.set_title("Latency histogram at the recommended T" if all_rec else
                      "Latency histogram (recommended T, else largest)" if any_rec else
                      "Latency histogram at the largest T (none fits)")
    ax_hist.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--device", default="host", show_default=True, help="Device profile name or .toml path (defaults for threads and budget).")
@click.option("--threads", type=_IntList(), default=None, help="Interpreter thread counts, e.g. 1,2 [default: the device's].")
@click.option("--sweep", "sweep", type=_IntList(), default="1,10,30,100", show_default=True,
              help="The MC sample counts T to time, one prediction of one input at each.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Measured predictions per (threads, T).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Unmeasured predictions first [default: max(10, runs/5)].")
@click.option("--budget-ms", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Latency budget in ms [default: the device's].")
@click.option("--data", type=DATA, default=None,
              help="fashion-mnist, or a labelled .npz (arrays x, y, or x_test, y_test) for the quality against T: "
                   "accuracy, NLL and ECE of a class output; RMSE, Gaussian NLL and interval coverage of a value "
                   "output (y of shape (n, *output shape)).")
@click.option("--output-name", "output_name", metavar="NAME", default=None,
              help="The output --data's targets belong to [default: the model's first]; the .npz may hold them "
                   "as y_<output> (or y_test_<output>).")
@click.option("--examples", type=click.IntRange(min=1), default=1000, show_default=True, help="Labelled examples used with --data.")
@click.option("--runtime/--no-runtime", "time_runtime", default=True, show_default=True,
              help="Also time each (threads, T) on a second, separately loaded model (a check of the figures).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the mask generator (mask-input models) and the synthetic input.")
@click.option("-o", "--output", "--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG here: latency and accuracy vs T, latency histogram.")
@json_option
@library_errors
def profile(models, device, threads, sweep, runs, warmup, budget_ms, data, output_name, examples, time_runtime, seed,
            plot_path, as_json):
    """Time MC prediction of MODEL.tflite against T and recommend T for a latency budget.

    Give two models (e.g. float32 and int8) to compare them side by side with ratios.
    Latencies are of the machine this runs on: run it on the target for the target's numbers.

    --sweep lists the values of T (MC samples per input) to time.

    \b
    Examples:
      edgekit profile model.tflite --threads 1,2 --budget-ms 5
      edgekit profile model.tflite --sweep 1,10,30,100,300 --runs 200
      edgekit profile fp32.tflite int8.tflite --data fashion-mnist --plot profile.png
      edgekit profile regressor.tflite --data test.npz --budget-ms 2
    """
    from edgekit.devices import load_profile
    from edgekit.runtime.fileio import atomic_write_bytes, refuse_overwrite_input
    from edgekit.runtime.metadata import read_metadata
    from edgekit.runtime.profiling import profile_model

    if len(models) > 2:
        raise click.UsageError(f"Expected one model, or two to compare. Received: {len(models)} models")
    if plot_path is not None:
        refuse_overwrite_input(plot_path, models)
    dev = load_profile(device)
    threads = threads or (dev.default_threads,)
    budget_ms = budget_ms if budget_ms is not None else dev.default_budget_ms
    if dev.name != "host" and not as_json:
        warn(f"latencies are measured on this machine ({platform.machine()}), not on {dev.name}; "
             f"the {dev.name} profile gives the defaults and the fit check. Run this on the device for its numbers.")

    x = y = data_desc = None
    if data is not None:
        x, y, data_desc = _load_data(data, examples, read_metadata(Path(models[0]).read_bytes()), output_name)

    warm = max(10, runs // 5) if warmup is None else warmup
    total = len(models) * len(threads) * len(sweep) * (warm + runs) * (2 if time_runtime else 1) + (len(models) * len(x) if x is not None else 0)
    results = []
    show_bar = stderr_is_tty() and total >= 500
    bar = click.progressbar(length=total, label="Profiling", file=sys.stderr) if show_bar else None
    try:
        if bar is not None:
            bar.__enter__()
        for path in models:
            results.append(profile_model(
                path, threads=threads, samples=sweep, runs=runs, warmup=warm, budget_ms=budget_ms,
                x=x, y=y, seed=seed, progress=bar.update if bar is not None else None, runtime=time_runtime,
                output=output_name,
            ))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)

    report = build_report(results, device=dev, budget_ms=budget_ms, threads=threads, samples=sweep, runs=runs,
                          data_desc=data_desc, examples=None if x is None else len(x))
    if plot_path is not None:
        atomic_write_bytes(plot_path, render_plot(results, budget_ms, dev.name))
    if as_json:
        echo_json(report)
    else:
        _print_human(results, report)
        if plot_path is not None:
            click.echo(f"plot written to {plot_path}")
