"""The calibration table: statistics of every float activation of one model, from one
pass over the sample data. Saved as ``calibration.json`` and reusable as a cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantship.calibration.observers import TensorStats
from quantship.errors import DataError

FORMAT = "quantship-calibration/1"


@dataclass(frozen=True, eq=False)
class CalibrationTable(Mapping[str, TensorStats]):
    """Per-tensor ``TensorStats`` plus what they were computed from."""

    model_sha256: str
    data_sha256: str
    samples: int
    histograms: bool
    tensors: Mapping[str, TensorStats]
    # Per model input, each axis's smallest and largest size in the data (the batch axis
    # per sample): the sequence lengths calibration covered, and a TensorRT profile's
    # default bounds.
    input_dims: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.samples < 0:
            raise ValueError("samples must be non-negative")
        for name, st in self.tensors.items():
            if st.name != name:
                raise ValueError(f"stats for {st.name!r} filed under {name!r}")

    def __getitem__(self, name: str) -> TensorStats:
        return self.tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def merge(self, other: CalibrationTable) -> CalibrationTable:
        """The table over both tables' samples (for sharded or incremental calibration)."""
        if other.model_sha256 != self.model_sha256:
            raise ValueError("cannot merge calibration tables of different models")
        if other.histograms != self.histograms:
            raise ValueError("cannot merge a table with histograms and one without")
        names = sorted(set(self.tensors) | set(other.tensors))
        merged = {}
        for n in names:
            a, b = self.tensors.get(n), other.tensors.get(n)
            merged[n] = a.merge(b) if a is not None and b is not None else (a or b)
        data = hashlib.sha256((self.data_sha256 + other.data_sha256).encode()).hexdigest()
        return CalibrationTable(
            self.model_sha256,
            data,
            self.samples + other.samples,
            self.histograms,
            {n: s for n, s in merged.items() if s is not None},
            merge_dims(self.input_dims, other.input_dims),
        )

    def to_text(self) -> str:
        """Deterministic JSON, one tensor per line (histograms make long lines)."""
        head = {
            "format": FORMAT,
            "model_sha256": self.model_sha256,
            "data_sha256": self.data_sha256,
            "samples": self.samples,
            "histograms": self.histograms,
            "input_dims": {k: [list(r) for r in v] for k, v in sorted(self.input_dims.items())},
        }
        lines = ["{"]
        for k, v in head.items():
            lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
        lines.append('  "tensors": {')
        items = sorted(self.tensors.items())
        for i, (name, st) in enumerate(items):
            sep = "," if i < len(items) - 1 else ""
            body = json.dumps(st.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)
            lines.append(f"    {json.dumps(name)}: {body}{sep}")
        lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> None:
        from quantship.exporter.output import write_text_atomic

        write_text_atomic(path, self.to_text())

    @classmethod
    def load(cls, path: Path) -> CalibrationTable:
        try:
            d: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"calibration cache '{path}' not found") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"calibration cache '{path}' is not readable JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(
                f"'{path}' is not a quantship calibration table (format {FORMAT!r} expected)"
            )
        try:
            tensors = {n: TensorStats.from_json(n, t) for n, t in d["tensors"].items()}
            return cls(
                str(d["model_sha256"]),
                str(d["data_sha256"]),
                int(d["samples"]),
                bool(d["histograms"]),
                tensors,
                {
                    str(k): tuple((int(lo), int(hi)) for lo, hi in v)
                    for k, v in d.get("input_dims", {}).items()
                },
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"calibration cache '{path}' is malformed ({e})") from None


Dims = Mapping[str, tuple[tuple[int, int], ...]]


def merge_dims(a: Dims, b: Dims) -> dict[str, tuple[tuple[int, int], ...]]:
    """Per input and axis, the smallest and largest size over both."""
    out = dict(a)
    for name, ranges in b.items():
        have = out.get(name)
        if have is None:
            out[name] = tuple(ranges)
            continue
        if len(have) != len(ranges):
            raise ValueError(
                f"input {name!r} has rank {len(have)} in one table, {len(ranges)} in the other"
            )
        out[name] = tuple(
            (min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(have, ranges, strict=True)
        )
    return out


def feed_dims(feed: Mapping[str, Any]) -> dict[str, tuple[tuple[int, int], ...]]:
    """One sample's sizes as ranges (batch axis 1)."""
    return {k: ((1, 1), *((int(d), int(d)) for d in v.shape[1:])) for k, v in feed.items()}
