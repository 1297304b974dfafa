"""ONNX files with their external data: reading one (the weights stay on disk, checked
and hashed as they stream) and writing one deterministically, external tensors copied
chunk by chunk, so that a model larger than memory is never loaded whole."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from quantship.errors import ModelError
from quantship.exporter.graph import is_external, without_tensors
from quantship.exporter.output import sha256_file

# Protobuf cannot serialise a message over 2 GiB; bigger models keep weights outside.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# In a file with external data, tensors at least this large go to the data file.
EXTERNAL_TENSOR_BYTES = 1024


def has_external_data(proto: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in proto.graph.initializer)


def external_info(t: onnx.TensorProto) -> tuple[str, int, int | None]:
    info = {e.key: e.value for e in t.external_data}
    length = info.get("length")
    return info["location"], int(info.get("offset", 0)), int(length) if length else None


def model_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of a model as saved without shape annotations, its external data included."""
    # Computed from field sizes rather than by copying a model that may hold GBs.
    vi = sum(_field_bytes(int(v.ByteSize())) for v in proto.graph.value_info)
    graph = int(proto.graph.ByteSize())
    total = int(proto.ByteSize()) - vi - (_varint_len(graph) - _varint_len(graph - vi))
    for t in proto.graph.initializer:
        if is_external(t):
            _, _, length = external_info(t)
            total += length if length is not None else _nbytes(t)
    return total


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field_bytes(size: int) -> int:
    """A length-delimited protobuf field: one tag byte, the length, the payload."""
    return 1 + _varint_len(size) + size


def _nbytes(t: onnx.TensorProto) -> int:
    itemsize = int(np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize)
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def save_model(
    proto: onnx.ModelProto,
    path: Path,
    weights_dir: Path | None = None,
    *,
    location: str | None = None,
) -> Path | None:
    """Save deterministically, without shape annotations (they only add bytes). A model
    that holds external tensors (read from ``weights_dir``), or is past 1.8 GB, keeps its
    tensors of 1 KB or more in one file beside it (``location``, by default
    ``<name>.data``), which is returned; external tensors are copied there chunk by
    chunk, never loaded whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not has_external_data(proto) and proto.ByteSize() <= EXTERNAL_DATA_THRESHOLD:
        # Written without a copy of the model (it may hold GBs of int8 weights): the
        # shape annotations are set aside while it is serialised, then put back.
        annotations = [onnx.ValueInfoProto() for _ in proto.graph.value_info]
        for kept, vi in zip(annotations, proto.graph.value_info, strict=True):
            kept.CopyFrom(vi)
        del proto.graph.value_info[:]
        try:
            path.write_bytes(proto.SerializeToString())
        finally:
            proto.graph.value_info.extend(annotations)
        return None
    # The header is built tensor by tensor beside the data file: no copy of the weights.
    out = without_tensors(proto)
    location = location or path.name + ".data"
    data_path = path.with_name(location)
    with data_path.open("wb") as dst:
        for t in proto.graph.initializer:
            start = dst.tell()
            if is_external(t):
                if weights_dir is None:
                    raise ValueError(f"tensor {t.name!r} is external and no folder was given")
                loc, offset, length = external_info(t)
                length = _nbytes(t) if length is None else length
                with (weights_dir / loc).open("rb") as src:
                    src.seek(offset)
                    left = length
                    while left:
                        chunk = src.read(min(left, 1 << 24))
                        if not chunk:
                            raise ModelError(f"external data of {t.name!r} in '{loc}' is truncated")
                        dst.write(chunk)
                        left -= len(chunk)
            elif t.ByteSize() >= EXTERNAL_TENSOR_BYTES and t.data_type != onnx.TensorProto.STRING:
                raw = t.raw_data or onnx.numpy_helper.to_array(t).tobytes()
                dst.write(raw)
                length = len(raw)
            else:
                out.graph.initializer.append(t)
                continue
            head = out.graph.initializer.add()
            head.name, head.data_type = t.name, t.data_type
            head.dims.extend(t.dims)
            head.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", str(start)), ("length", str(length))):
                e = head.external_data.add()
                e.key, e.value = k, v
    path.write_bytes(out.SerializeToString())
    return data_path


@dataclass(frozen=True, eq=False)
class Source:
    """The user's model as read: the proto (external tensors not loaded), where it came
    from, the sha256 of the file and of its weight files, and its bytes with them."""

    proto: onnx.ModelProto
    name: str
    sha256: str
    size: int
    weights_dir: Path | None = None
    weights_sha256: str | None = None  # of the external data files, in name order


def read_onnx(path: Path) -> Source:
    """Read an ONNX file; its external data stays on disk, checked to be there and
    hashed as it streams (a calibration cache must not fit changed weights)."""
    if not path.exists():
        raise ModelError(f"model file '{path}' not found")
    if path.is_dir():
        raise ModelError(f"model path '{path}' is a folder; pass the .onnx file")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, onnx raises various
        raise ModelError(
            f"'{path}' is not a readable ONNX model ({type(e).__name__}: {e})"
        ) from None
    if not proto.graph.node:
        raise ModelError(f"'{path}' holds no graph nodes; is it an ONNX model?")
    size = path.stat().st_size
    files: dict[str, int] = {}
    for t in proto.graph.initializer:
        if not is_external(t):
            continue
        try:
            loc, offset, length = external_info(t)
        except KeyError:
            raise ModelError(f"'{path}': tensor {t.name!r} is external but names no file") from None
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ModelError(
                f"'{path}': tensor {t.name!r} points outside the model's folder ({loc})"
            )
        f = path.parent / loc
        if loc not in files:
            if not f.is_file():
                raise ModelError(
                    f"'{path}': its external weight data '{loc}' is missing (expected beside the model)"
                )
            files[loc] = f.stat().st_size
        end = offset + (length if length is not None else _nbytes(t))
        if end > files[loc]:
            raise ModelError(
                f"'{path}': external data '{loc}' is truncated ({files[loc]} bytes; tensor {t.name!r} ends at {end})"
            )
    weights_sha = None
    if files:
        h = hashlib.sha256()
        for loc in sorted(files):
            h.update(loc.encode() + b"\0" + bytes.fromhex(sha256_file(path.parent / loc)))
        weights_sha = h.hexdigest()
    return Source(
        proto,
        str(path),
        sha256_file(path),
        size + sum(files.values()),
        path.parent if files else None,
        weights_sha,
    )
