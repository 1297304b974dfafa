"""Sample data for calibration and fidelity: where it comes from, and its fit to the model.

Three sources, one interface (an iterator of one-sample feeds, batch axis kept); the
image folder lives in ``images.py`` and ``sources.open_data`` picks the reader:

- ``.npz``: one array per model input, keyed by input name, first axis the sample
  axis. Uncompressed archives (``np.savez``) are read a sample at a time, so a
  calibration set larger than memory streams from disk. ``.npy``: one array, for a
  one-input model.
- a folder of images, resized and normalised as ``ImageOptions`` says.
- ``package.module:function``: a function returning an iterable of feeds (dicts of
  arrays, or arrays for a one-input model), each a batch along its first axis.

Names, ranks, shapes and dtypes are checked against the model on the first sample,
before any work, and every sample is checked for NaN/Inf as it streams.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quantship.errors import DataError
from quantship.specs import resolve
from quantship.types import Feed, InputSpec


@dataclass(frozen=True, eq=False)
class CalibrationData:
    """Samples bound to a model's inputs: every feed has exactly the model's input
    names, dtypes and per-sample shapes (batch axis of 1)."""

    description: str
    role: str
    inputs: tuple[InputSpec, ...]
    num_samples: int | None
    _open: Callable[[], Iterator[Feed]]
    notes: tuple[str, ...] = ()

    def samples(self, start: int = 0, stop: int | None = None) -> Iterator[Feed]:
        """Checked one-sample feeds, ``start`` ≤ index < ``stop``."""
        for i, raw in enumerate(self._open()):
            if stop is not None and i >= stop:
                return
            if i < start:
                continue
            yield self._check(raw, i)

    def first(self) -> Feed:
        for feed in self.samples(0, 1):
            return feed
        raise DataError(f"{self.role} data {self.description} holds no samples")

    def _check(self, raw: Feed, index: int) -> Feed:
        out: Feed = {}
        for spec in self.inputs:
            arr = raw[spec.name]
            want = np.dtype(spec.dtype)
            if arr.dtype != want:
                if not _castable(arr.dtype, want):
                    raise DataError(
                        f"{self.role} data {self.description}: input {spec.name!r} is {arr.dtype}; "
                        f"the model expects {want}"
                    )
                if np.issubdtype(want, np.integer) and arr.size:
                    info = np.iinfo(want)
                    if arr.min() < info.min or arr.max() > info.max:
                        raise DataError(
                            f"{self.role} data {self.description}: sample {index} of input "
                            f"{spec.name!r} holds values outside {want}'s range"
                        )
                arr = arr.astype(want)
            if arr.ndim != len(spec.shape):
                raise DataError(
                    f"{self.role} data {self.description}: input {spec.name!r} has rank "
                    f"{arr.ndim - 1} per sample (shape {_fmt(arr.shape[1:])}); the model expects "
                    f"{_fmt(spec.shape[1:])}"
                )
            for axis in range(1, arr.ndim):
                d = spec.shape[axis]
                if d is not None and arr.shape[axis] != d:
                    raise DataError(
                        f"{self.role} data {self.description}: input {spec.name!r} has shape "
                        f"{_fmt(arr.shape[1:])} per sample; the model expects {_fmt(spec.shape[1:])}"
                    )
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                bad = "NaN" if np.isnan(arr).any() else "Inf"
                raise DataError(
                    f"{self.role} data {self.description}: sample {index} of input {spec.name!r} "
                    f"contains {bad}; remove or fix that sample"
                )
            out[spec.name] = np.ascontiguousarray(arr)
        return out


def _castable(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Float data for a float input (float64 arrays are common), integers for integer
    inputs (token ids saved as int32 for an int64 input), integers for float inputs
    (uint8 pixels); booleans only for boolean inputs (masks); never floats to integers."""
    if dst == np.bool_ or src == np.bool_:
        return bool(src == dst)
    if np.issubdtype(dst, np.floating):
        return bool(np.issubdtype(src, np.floating) or np.issubdtype(src, np.integer))
    return bool(np.issubdtype(dst, np.integer) and np.issubdtype(src, np.integer))


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


# The key np.savez gives an array passed without a name.
UNNAMED = "arr_0"
# Arrays a held-out set may carry beside the inputs: labels for --metric.
LABEL_KEYS = frozenset({"labels", "y"})


def _map_names(
    keys: Sequence[str], inputs: Sequence[InputSpec], desc: str, role: str
) -> tuple[dict[str, str], str | None]:
    """Which key feeds which input, by name. The one exception: a one-input model and
    an archive whose only array is np.savez's unnamed ``arr_0``, bound by position and
    said so (the returned note). Any other name that is not an input's is an error."""
    names = [i.name for i in inputs]
    if all(n in keys for n in names):
        return {n: n for n in names}, None
    if len(names) == 1 and list(keys) == [UNNAMED]:
        note = f"{role} data {desc}: its one unnamed array ({UNNAMED}) feeds input {names[0]!r}"
        return {names[0]: UNNAMED}, note
    missing = [n for n in names if n not in keys]
    raise DataError(
        f"{role} data {desc} has no array for model input(s) {', '.join(map(repr, missing))}; "
        f"it has {', '.join(map(repr, keys)) or 'none'} (save arrays under the input names: "
        f"np.savez(path, {names[0]}=...))"
    )


# --- .npz / .npy --------------------------------------------------------------------


class StoredArray:
    """An array stored uncompressed in a file, read a slice of samples at a time with
    plain file reads: only the samples in use are ever in memory (a memory map would
    keep every page it touched resident)."""

    def __init__(
        self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.ndim = len(shape)
        self._row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize if shape else 0

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def __getitem__(self, s: slice) -> npt.NDArray[Any]:
        start, stop, step = s.indices(len(self))
        if step != 1:
            raise IndexError("StoredArray supports contiguous slices only")
        n = max(0, stop - start)
        out = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        with self.path.open("rb") as f:
            f.seek(self.offset + start * self._row)
            got = f.readinto(out.data.cast("B"))
        if got != n * self._row:
            raise DataError(
                f"'{self.path}' is truncated: expected {n * self._row} bytes at sample {start}"
            )
        return out


def _read_header(raw: Any, path: Path, key: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(raw)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(raw)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(raw)
    except ValueError as e:
        raise DataError(f"'{path}': {key!r} is not a .npy array ({e})") from None
    if dtype.hasobject:
        raise DataError(f"'{path}': array {key!r} holds Python objects; save numeric arrays")
    return tuple(shape), bool(fortran), dtype


def stored_npz(path: Path) -> dict[str, Any]:
    """Arrays of an .npz: stored (uncompressed) members are read sample by sample from
    the file; compressed members are loaded whole."""
    out: dict[str, Any] = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"'{path}' is not a readable .npz archive ({e})") from None
    with zf, path.open("rb") as raw:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                header = raw.read(30)
                name_len = int.from_bytes(header[26:28], "little")
                extra_len = int.from_bytes(header[28:30], "little")
                raw.seek(info.header_offset + 30 + name_len + extra_len)
                shape, fortran, dtype = _read_header(raw, path, key)
                if fortran and len(shape) > 1:
                    with zf.open(info) as member:
                        out[key] = np.lib.format.read_array(member, allow_pickle=False)
                else:
                    out[key] = StoredArray(path, raw.tell(), shape, dtype)
            else:
                with zf.open(info) as member:
                    try:
                        out[key] = np.lib.format.read_array(member, allow_pickle=False)
                    except ValueError as e:
                        raise DataError(f"'{path}': array {key!r} cannot be read ({e})") from None
    if not out:
        raise DataError(f"'{path}' holds no arrays")
    return out


def stored_npy(path: Path) -> Any:
    try:
        with path.open("rb") as f:
            shape, fortran, dtype = _read_header(f, path, path.name)
            offset = f.tell()
    except OSError as e:
        raise DataError(f"'{path}' cannot be read ({e})") from None
    if fortran and len(shape) > 1:
        return np.load(path, allow_pickle=False)
    return StoredArray(path, offset, shape, dtype)


def _arrays_source(
    arrays: dict[str, Any], inputs: Sequence[InputSpec], desc: str, role: str
) -> CalibrationData:
    mapping, note = _map_names(list(arrays), inputs, desc, role)
    notes = [note] if note else []
    unused = sorted(set(arrays) - set(mapping.values()) - LABEL_KEYS)
    if unused:
        notes.append(
            f"{role} data {desc}: array(s) {', '.join(map(repr, unused))} match no model input "
            f"(inputs: {', '.join(i.name for i in inputs)}) and are not used"
        )
    counts = {k: arrays[k].shape[0] if arrays[k].ndim else 0 for k in mapping.values()}
    if len(set(counts.values())) != 1:
        raise DataError(
            f"{role} data {desc}: arrays disagree on the number of samples (first axis): "
            + ", ".join(f"{k}={v}" for k, v in counts.items())
        )
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError(f"{role} data {desc} holds no samples (first axis has length 0)")

    def gen() -> Iterator[Feed]:
        for i in range(n):
            yield {name: np.asarray(arrays[key][i : i + 1]) for name, key in mapping.items()}

    return CalibrationData(desc, role, tuple(inputs), n, gen, tuple(notes))


def arrays_data(
    arrays: dict[str, Any], inputs: Sequence[InputSpec], desc: str, role: str
) -> CalibrationData:
    """Arrays held in memory, keyed by input name, first axis the sample axis."""
    return _arrays_source(arrays, inputs, desc, role)


def npz_data(path: Path, inputs: Sequence[InputSpec], role: str) -> CalibrationData:
    return _arrays_source(stored_npz(path), inputs, f"'{path}'", role)


def npy_data(path: Path, inputs: Sequence[InputSpec], role: str) -> CalibrationData:
    arr = stored_npy(path)
    if len(inputs) != 1:
        raise DataError(
            f"{role} data '{path}' is one array, but the model has {len(inputs)} inputs; "
            "use an .npz keyed by input name"
        )
    return _arrays_source({inputs[0].name: arr}, inputs, f"'{path}'", role)  # one array, no name


# --- package.module:function ----------------------------------------------------------


def callable_data(text: str, inputs: Sequence[InputSpec], role: str) -> CalibrationData:
    mod_name, _, fn_name = text.partition(":")
    try:
        _, _, fn = resolve(text)
    except Exception as e:
        raise DataError(
            f"{role} data '{text}': cannot import {mod_name!r} ({type(e).__name__}: {e})"
        ) from None
    if not callable(fn):
        raise DataError(f"{role} data '{text}': module {mod_name!r} has no function {fn_name!r}")
    names = [i.name for i in inputs]

    def items() -> Iterator[Any]:
        try:
            iterator = iter(fn())
        except Exception as e:
            raise DataError(f"{role} data '{text}' failed: {type(e).__name__}: {e}") from None
        while True:
            try:
                yield next(iterator)
            except StopIteration:
                return
            except Exception as e:
                raise DataError(f"{role} data '{text}' failed: {type(e).__name__}: {e}") from None

    def to_feed(item: Any) -> dict[str, Any]:
        if isinstance(item, np.ndarray):
            item = {names[0]: item} if len(names) == 1 else None
        elif isinstance(item, (tuple, list)) and len(item) == len(names):
            item = dict(zip(names, item, strict=True))
        if not isinstance(item, dict):
            raise DataError(
                f"{role} data '{text}' yielded {type(item).__name__}; yield dicts of arrays "
                "keyed by input name (or arrays, for a one-input model)"
            )
        return item

    def gen() -> Iterator[Feed]:
        return batched_feeds(items(), to_feed, inputs, f"'{text}'", role)

    return CalibrationData(f"'{text}'", role, tuple(inputs), None, gen)


def batched_feeds(
    items: Iterable[Any],
    to_feed: Callable[[Any], dict[str, Any]],
    inputs: Sequence[InputSpec],
    desc: str,
    role: str,
) -> Iterator[Feed]:
    """One-sample feeds from items that are each a batch: ``to_feed`` makes a dict of
    arrays of each, bound to the inputs by name on the first, split along axis 0."""
    mapping: dict[str, str] | None = None
    for item in items:
        feed = to_feed(item)
        if mapping is None:
            mapping, _ = _map_names(list(feed), inputs, desc, role)
        arrays = {n: np.asarray(feed[k]) for n, k in mapping.items()}
        batch = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
        if len(batch) != 1:
            raise DataError(f"{role} data {desc}: arrays of one feed disagree on batch size")
        for i in range(batch.pop()):
            yield {n: a[i : i + 1] for n, a in arrays.items()}
