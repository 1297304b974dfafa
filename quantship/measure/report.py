"""Presenting figures: terminal tables, JSON, and a latency plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantship.measure.scenarios import ScenarioResult
from quantship.measure.timing import LatencyStats, percentile_key
from quantship.ui import UI


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def fmt_mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def fmt_num(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def latency_table(
    ui: UI,
    stats: Sequence[LatencyStats],
    title: str,
    reference: str | None = None,
    percentiles: Sequence[float] = (50.0, 90.0, 99.0),
) -> None:
    """Every row's speedup is against ``reference`` (a label) at the same batch size
    (and length, where ``--lengths`` set one), by p50."""
    by = {(s.label, s.batch, s.length): s for s in stats}
    lengths = any(s.length is not None for s in stats)
    keys = [percentile_key(p) for p in percentiles]
    rows = []
    for s in stats:
        b = by.get((reference, s.batch, s.length)) if reference else None
        speed = f"{b.p50_ms / s.p50_ms:.2f}x" if b is not None and s.p50_ms > 0 else "-"
        pct = s.percentiles(percentiles)
        rows.append(
            [
                s.label,
                str(s.batch),
                *([str(s.length)] if lengths else []),
                *(fmt_ms(pct.get(k)) for k in keys),
                fmt_ms(s.mean_ms),
                fmt_ms(s.std_ms),
                f"{s.throughput:.1f}",
                speed,
                str(s.iterations),
            ]
        )
    ui.table(
        title,
        [
            "model",
            "batch",
            *(["length"] if lengths else []),
            *(f"{k[:-3]} ms" for k in keys),
            "mean ms",
            "std ms",
            "samples/s",
            "speedup",
            "runs",
        ],
        rows,
    )


def scenario_tables(
    ui: UI, results: Sequence[ScenarioResult], percentiles: Sequence[float] = (50.0, 90.0, 99.0)
) -> None:
    """The offline scenario's throughput, and the server scenario's latency at the
    asked rate (and the highest rate within the latency bound, where one was given)."""
    lengths = any(r.length is not None for r in results)
    off = [r for r in results if r.scenario == "offline"]
    if off:
        ui.table(
            "offline scenario: every sample at once, the runtime's requests kept full",
            ["model", "batch", *(["length"] if lengths else []), "requests", "samples/s",
             "queries/s", "queries"],
            [[r.label, str(r.batch), *([str(r.length)] if lengths else []), r.requests,
              f"{r.samples_per_s:.1f}", f"{r.qps:.1f}", str(r.queries)] for r in off],
        )  # fmt: skip
    srv = [r for r in results if r.scenario == "server"]
    if srv:
        keys = [percentile_key(p) for p in percentiles]
        bound = srv[0].latency_bound_ms
        rows = []
        for r in srv:
            pct = r.percentiles(percentiles)
            rows.append(
                [r.label, str(r.batch), *([str(r.length)] if lengths else []),
                 f"{r.target_qps:g}", f"{r.qps:.1f}", *(fmt_ms(pct.get(k)) for k in keys),
                 *([fmt_num(r.max_qps_within_bound, 1)] if bound is not None else [])]
            )  # fmt: skip
        ui.table(
            "server scenario: Poisson arrivals; latency from arrival to completion",
            ["model", "batch", *(["length"] if lengths else []), "asked qps", "achieved qps",
             *(f"{k[:-3]} ms" for k in keys),
             *([f"max qps, p99 <= {bound:g} ms"] if bound is not None else [])],
            rows,
        )  # fmt: skip


def latency_plot(
    stats: Sequence[LatencyStats], results: Sequence[ScenarioResult], path: Path, title: str
) -> bool:
    """Latency distributions: per batch size (and length) and scenario with latencies
    (single-stream, server), each candidate's empirical CDF of its raw samples, p50 and
    p99 marked. False if matplotlib is missing (plots are an extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    panels: dict[tuple[str, int, int | None], list[tuple[str, Sequence[float]]]] = {}
    for s in stats:
        if s.samples_ms:
            panels.setdefault(("single-stream", s.batch, s.length), []).append(
                (s.label, s.samples_ms)
            )
    for r in results:
        if r.latencies_ms:
            panels.setdefault(("server", r.batch, r.length), []).append((r.label, r.latencies_ms))
    if not panels:
        return True
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, ((scenario, b, n), curves) in zip(axes[0], panels.items(), strict=True):
        for label, ms in curves:
            xs = np.sort(np.asarray(ms))
            ys = np.arange(1, len(xs) + 1) / len(xs)
            (line,) = ax.step(xs, ys, where="post", label=label)
            for q in (50, 99):
                ax.plot([np.percentile(xs, q)], [q / 100], "o", color=line.get_color(), ms=4)
        ax.set_xscale("log")
        ax.set_xlabel("latency per query (ms, log scale); dots: p50, p99")
        ax.set_ylabel("share of queries at or below")
        ax.set_title(f"{scenario}, batch {b}" + (f", length {n}" if n is not None else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
