"""TensorRT's optimization profiles: the (min, opt, max) shape of every dynamic input
of an engine. By default the batch spans 1 … max_batch (tuned for 1, the latency case)
and another dynamic dimension (a sequence length) the sizes the calibration data
covered; ``build-engine --shapes`` gives them instead, checked here. Pure functions:
no TensorRT needed."""

from __future__ import annotations

from typing import Any

from quantship.backends.base import ShapeRanges
from quantship.errors import BackendError
from quantship.exporter.load import FloatModel


def engine_inputs(model: FloatModel) -> list[dict[str, Any]]:
    """Each input's shape and the bounds of its engine profile: TensorRT needs bounds on
    every dynamic dimension. The batch axis spans 1 … max_batch; another dynamic
    dimension (a sequence length) spans the sizes the calibration data covered
    (``min``/``max``), tuned for the first sample's (``profile``). Without a record of
    the data's sizes it is fixed at the sample's, and the entry says so."""
    out: list[dict[str, Any]] = []
    for spec in model.inputs:
        example = model.example_shape(spec)
        seen = model.input_ranges.get(spec.name)
        if seen is not None and len(seen) != len(spec.shape):
            seen = None
        batch = None if spec.shape and spec.shape[0] is None else spec.shape[0]
        profile: list[int | None] = [batch]
        lo: list[int | None] = [batch]
        hi: list[int | None] = [batch]
        fixed = []
        for axis in range(1, len(spec.shape)):
            profile.append(example[axis])
            if spec.shape[axis] is not None or seen is None:
                lo.append(example[axis])
                hi.append(example[axis])
                if spec.shape[axis] is None:
                    fixed.append(axis)
            else:
                lo.append(min(seen[axis][0], example[axis] or seen[axis][0]))
                hi.append(max(seen[axis][1], example[axis] or seen[axis][1]))
        entry: dict[str, Any] = {"name": spec.name, "shape": list(spec.shape), "profile": profile}
        if lo != profile or hi != profile:
            entry["min"], entry["max"] = lo, hi
        if fixed:
            entry["fixed_for_engine"] = {
                "axes": fixed,
                "why": "a TensorRT profile needs bounds on dynamic dimensions; fixed at the "
                "calibration sample's size (give build-engine --shapes to span others)",
            }
        out.append(entry)
    return out


Dims = list[int]


def profile_shapes(
    spec: dict[str, Any], max_batch: int, given: tuple[Dims, Dims, Dims] | None = None
) -> tuple[Dims, Dims, Dims] | None:
    """An input's (min, opt, max) shapes for TensorRT's optimization profile, or None
    for a fully static input. ``given`` (``build-engine --shapes``) is used as it is,
    after checking it against the input's fixed dimensions. Otherwise a dynamic batch
    spans 1 … ``max_batch`` (tuned for 1, the latency case), and another dynamic
    dimension spans the entry's ``min`` … ``max`` (the calibration data's sizes), tuned
    for its ``profile`` size."""
    shape = list(spec["shape"])
    if given is not None:
        check_given(spec["name"], shape, given)
        return given
    if None not in shape:
        return None
    example = list(spec.get("profile", shape))
    mins = list(spec.get("min", example))
    maxs = list(spec.get("max", example))
    lo, opt, hi = [], [], []
    for axis, d in enumerate(shape):
        if d is not None:
            a, b, c = int(d), int(d), int(d)
        elif axis == 0:
            a, b, c = 1, 1, max_batch
        else:
            b = int(example[axis] or 1)
            a, c = min(int(mins[axis] or b), b), max(int(maxs[axis] or b), b)
        lo.append(a)
        opt.append(b)
        hi.append(c)
    return lo, opt, hi


def engine_profiles(
    inputs: list[dict[str, Any]], max_batch: int, shapes: ShapeRanges | None
) -> ShapeRanges:
    """Every dynamic input's (min, opt, max) shapes, ``shapes`` (``--shapes``) checked
    and taking precedence; inputs with no dynamic dimension and no ``--shapes`` get none."""
    names = [spec["name"] for spec in inputs]
    unknown = sorted(set(shapes or {}) - set(names))
    if unknown:
        raise BackendError(
            f"--shapes names {', '.join(map(repr, unknown))}; the model's inputs are: "
            + ", ".join(names)
        )
    dynamic = [s["name"] for s in inputs if None in s["shape"]]
    missing = [n for n in dynamic if shapes and n not in shapes]
    if missing:
        # One profile serves every input: a length given for one and not another would
        # build an engine that runs only where the two overlap.
        raise BackendError(
            f"--shapes gives a profile for {', '.join(sorted(shapes or {}))} but not for "
            f"{', '.join(missing)}; give one for every dynamic input"
        )
    out: ShapeRanges = {}
    for spec in inputs:
        bounds = profile_shapes(spec, max_batch, (shapes or {}).get(spec["name"]))
        if bounds is not None:
            out[spec["name"]] = bounds
    return out


def check_given(name: str, shape: list[int | None], given: tuple[Dims, Dims, Dims]) -> None:
    """``--shapes NAME=MIN:OPT:MAX``: each of the input's rank, agreeing with its fixed
    dimensions, and MIN ≤ OPT ≤ MAX on every axis."""
    text = ":".join("x".join(map(str, s)) for s in given)
    for s in given:
        if len(s) != len(shape):
            raise BackendError(
                f"--shapes {name}={text}: rank {len(s)}; the input has rank {len(shape)} "
                f"({'x'.join('?' if d is None else str(d) for d in shape)})"
            )
    for axis, d in enumerate(shape):
        lo, opt, hi = (s[axis] for s in given)
        if d is not None and not lo == opt == hi == d:
            raise BackendError(f"--shapes {name}={text}: dimension {axis} is fixed at {d}")
        if not 1 <= lo <= opt <= hi:
            raise BackendError(
                f"--shapes {name}={text}: dimension {axis} needs 1 <= min <= opt <= max"
            )
