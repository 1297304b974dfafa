"""``quantship bench --compare A.json B.json …``: the same models side by side across
runs or machines. Rows are matched by the candidate's stable key (``openvino:int8``,
``onnxruntime:float:fp32``…), scenario, batch and length; a figure is the p50 for the
latency scenarios and samples/s for offline; ratios are each run's figure over the
first's. Where a model's files differ between runs (their sha256), the row says so:
the figures are then of different artifacts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantship.errors import QuantshipError
from quantship.measure.report import fmt_ms
from quantship.ui import UI

Row = tuple[str, str, int, int | None]  # key, scenario, batch, length


def load_run(path: Path) -> dict[str, Any]:
    """A ``bench --json`` file, checked to be one."""
    try:
        run = json.loads(Path(path).read_bytes())
    except OSError as e:
        raise QuantshipError(f"--compare: cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise QuantshipError(f"--compare: {path} is not JSON ({e.msg}, line {e.lineno})") from None
    except ValueError:  # not text at all
        raise QuantshipError(f"--compare: {path} is not JSON (not UTF-8 text)") from None
    if not isinstance(run, dict) or (
        not isinstance(run.get("results"), list) and run.get("schema") != FLEET_SCHEMA
    ):
        raise QuantshipError(
            f"--compare: {path} is not a result file of quantship bench --json (no results list)"
        )
    if run.get("schema") == FLEET_SCHEMA and not run.get("runs"):
        raise QuantshipError(f"--compare: {path} holds no node's runs")
    return run


def _rows(run: dict[str, Any]) -> dict[Row, dict[str, Any]]:
    out: dict[Row, dict[str, Any]] = {}
    for r in run["results"]:
        if r.get("mode", "latency") != "latency":
            continue  # device-time rows are compared by their own key
        key = (str(r.get("key") or r["label"]), str(r.get("scenario", "single-stream")),
               int(r.get("batch", 1)), r.get("length"))  # fmt: skip
        out[key] = r
    return out


def _hashes(run: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {a["key"]: dict(a.get("files", {})) for a in run.get("artifacts", [])}


def machine_line(run: dict[str, Any]) -> str:
    m = run.get("machine", {})
    isa = " ".join(m.get("isa", [])) or "no listed ISA"
    rts = ", ".join(f"{k} {v}" for k, v in sorted(run.get("runtimes", {}).items()))
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {isa}" + (f"; {rts}" if rts else "")


def compare(
    paths: Sequence[Path],
    *,
    plot_path: Path | None = None,
    ui: UI,
) -> list[dict[str, Any]]:
    """Print the runs side by side; returns the table's rows (for tests and JSON). A
    file of ``bench --on`` (several nodes) counts as its runs, named by label and node."""
    runs: list[dict[str, Any]] = []
    names: list[str] = []
    for path, name in zip(paths, _names(paths), strict=True):
        run = load_run(path)
        if run.get("schema") == FLEET_SCHEMA:
            for r in run["runs"]:
                runs.append(r)
                names.append(f"{name}:{r['fleet']['label']}@{r['fleet']['node_ip']}")
        else:
            runs.append(run)
            names.append(name)
    if len(runs) < 2:
        raise QuantshipError("--compare needs at least two runs (result files)")
    return _table(runs, names, plot_path, ui)


def _table(
    runs: list[dict[str, Any]], names: list[str], plot_path: Path | None, ui: UI
) -> list[dict[str, Any]]:
    for name, run in zip(names, runs, strict=True):
        ui.note(f"{name}: {machine_line(run)} ({run.get('created', 'undated')})")
    tables = [_rows(r) for r in runs]
    hashes = [_hashes(r) for r in runs]
    order: list[Row] = []
    for t in tables:
        order += [k for k in t if k not in order]
    labels = {k: next(t[k]["label"] for t in tables if k in t) for k in order}
    lengths = any(k[3] is not None for k in order)
    out: list[dict[str, Any]] = []
    rows = []
    for k in order:
        metric = "samples_per_s" if k[1] == "offline" else "p50_ms"
        vals = [t.get(k, {}).get(metric) for t in tables]
        known = [h.get(k[0]) for h in hashes]
        seen = {json.dumps(h, sort_keys=True) for h in known if h}
        same = "yes" if len(seen) <= 1 else "no: files differ"
        base = vals[0]
        ratios = [None if v is None or base in (None, 0) else v / base for v in vals[1:]]
        out.append({"key": k[0], "label": labels[k], "scenario": k[1], "batch": k[2],
                    "length": k[3], "metric": metric, "values": vals, "ratios": ratios,
                    "same_artifact": len(seen) <= 1})  # fmt: skip
        fmt = (lambda v: "-" if v is None else f"{v:.1f}") if metric != "p50_ms" else fmt_ms
        rows.append(
            [labels[k], k[1], str(k[2]), *([str(k[3] or "")] if lengths else []),
             *(fmt(v) for v in vals), *("-" if r is None else f"{r:.2f}x" for r in ratios),
             same]
        )  # fmt: skip
    ui.table(
        "the same models across runs: p50 ms (single-stream, server) or samples/s (offline); "
        f"ratios: a run's figure over {names[0]}'s",
        ["model", "scenario", "batch", *(["length"] if lengths else []), *names,
         *(f"{n} / {names[0]}" for n in names[1:]), "same files"],
        rows,
    )  # fmt: skip
    if plot_path is not None and not _plot(runs, names, plot_path):
        ui.note("plot skipped: matplotlib is not installed (pip install 'quantship[plot]')")
    return out


def _names(paths: Sequence[Path]) -> list[str]:
    """Short names for the runs: the file names, or the paths where those repeat."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def _plot(runs: Sequence[dict[str, Any]], names: Sequence[str], path: Path) -> bool:
    """Single-stream latency CDFs of every model, one line per run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    keys: list[str] = []
    for run in runs:
        for r in run["results"]:
            if r.get("scenario", "single-stream") == "single-stream" and r.get("samples_ms"):
                keys += [r["key"]] if r["key"] not in keys else []
    if not keys:
        return True
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, run in zip(names, runs, strict=True):
            r = next((r for r in run["results"] if r.get("key") == key and r.get("samples_ms")
                      and r.get("scenario", "single-stream") == "single-stream"), None)  # fmt: skip
            if r is None:
                continue
            xs = np.sort(np.asarray(r["samples_ms"], dtype=float))
            ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=name)
        ax.set_xscale("log")
        ax.set_title(key)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("share of queries at or below")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fleet_report(
    runs: Sequence[dict[str, Any]], json_path: Path | None, plot_path: Path | None, ui: UI
) -> None:
    """The runs of ``bench --ray … --on …``, one per node: side by side in one table
    (named by label and node address), and written as one JSON."""
    from quantship.exporter.output import write_json

    names = [f"{r['fleet']['label']}@{r['fleet']['node_ip']}" for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    if json_path is not None:
        write_json(Path(json_path), {"schema": FLEET_SCHEMA, "runs": list(runs)})
    if len(runs) == 1:
        ui.note(f"{names[0]}: {machine_line(runs[0])}")
    _table(list(runs), names, plot_path, ui)


FLEET_SCHEMA = "quantship.bench-fleet/1"
