"""Presenting figures: terminal tables, JSON, and a latency plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from quantship.bench.timing import LatencyStats
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
) -> None:
    """Every row's speedup is against ``reference`` (a label) at the same batch size
    (and length, where ``--lengths`` set one)."""
    by = {(s.label, s.batch, s.length): s for s in stats}
    lengths = any(s.length is not None for s in stats)
    rows = []
    for s in stats:
        b = by.get((reference, s.batch, s.length)) if reference else None
        speed = f"{b.p50_ms / s.p50_ms:.2f}x" if b is not None and s.p50_ms > 0 else "-"
        rows.append(
            [
                s.label,
                str(s.batch),
                *([str(s.length)] if lengths else []),
                fmt_ms(s.p50_ms),
                fmt_ms(s.p90_ms),
                fmt_ms(s.p99_ms),
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
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "mean ms",
            "std ms",
            "samples/s",
            "speedup",
            "runs",
        ],
        rows,
    )


def latency_plot(stats: Sequence[LatencyStats], path: Path, title: str) -> bool:
    """p50 bars with p90 and p99 marks, grouped by batch size. False if matplotlib is
    missing (plots are an extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = list(dict.fromkeys(s.label for s in stats))
    points = list(dict.fromkeys((s.batch, s.length) for s in stats))
    fig, axes = plt.subplots(
        1, len(points), figsize=(max(5, 2.2 * len(labels)) * len(points), 4), squeeze=False
    )
    for ax, (b, n) in zip(axes[0], points, strict=True):
        row = [
            next((s for s in stats if s.label == lab and s.batch == b and s.length == n), None)
            for lab in labels
        ]
        xs = list(range(len(labels)))
        p50 = [s.p50_ms if s else 0.0 for s in row]
        ax.bar(xs, p50, color=["#7f7f7f"] + ["#1f77b4"] * (len(labels) - 1), label="p50")
        ax.scatter(
            xs,
            [s.p90_ms if s else 0.0 for s in row],
            marker="_",
            s=300,
            color="#ff7f0e",
            label="p90",
            zorder=3,
        )
        ax.scatter(
            xs,
            [s.p99_ms if s else 0.0 for s in row],
            marker="_",
            s=300,
            color="#d62728",
            label="p99",
            zorder=3,
        )
        for x, v in zip(xs, p50, strict=True):
            ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, labels, rotation=20, ha="right")
        ax.set_ylabel("latency per run (ms)")
        ax.set_title(f"batch {b}" + (f", length {n}" if n is not None else ""))
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
