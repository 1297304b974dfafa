"""Small read-only views of an ONNX graph, used by the loader, the planners and the
QDQ writer. Nothing here mutates a model.

Two questions published graphs make hard, answered here once:

- *Is this input a weight?* Exporters hide weights behind ``Constant`` nodes,
  ``Identity``/``Cast``/``Transpose``/``Reshape`` chains, or in external data files.
  ``constant_value`` follows such chains and reads external data on demand, one tensor
  at a time, so a model larger than memory is never loaded whole.
- *Is this tensor data?* A float tensor carries the model's data when it is computed
  from a signal input (float, or 8/16-bit integers: pixels, audio samples) or from an
  embedding lookup. Float tensors computed only from 32/64-bit integer or boolean inputs
  (token ids, attention masks, lengths) and constants are masks, position ramps or
  shape arithmetic (``Cast(Shape(x))``): they are neither observed nor quantized.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
# Ops that move or reinterpret a constant without computing on it: a weight behind a
# chain of them is still a weight.
CONSTANT_CHAIN_OPS = frozenset(
    {"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Dropout"}
)
# A lookup into a float table by run-time indices reads model data (embeddings).
LOOKUP_OPS = frozenset({"Gather", "GatherElements", "GatherND"})
# Integer inputs that carry a signal (uint8 pixels, int16 audio), unlike 32/64-bit
# integers (token ids, masks, lengths) and booleans.
SIGNAL_INT_TYPES = frozenset(
    {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT16}
)


@dataclass(frozen=True)
class Use:
    """One consumer of a tensor: a node (by index in graph.node) and which input slot."""

    node: int
    slot: int


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def tensor_value(t: onnx.TensorProto, weights_dir: Path | None) -> npt.NDArray[Any]:
    """The values of an initializer, read from its external file when it has one."""
    if is_external(t):
        if weights_dir is None:
            raise ValueError(f"tensor {t.name!r} is stored externally and no folder was given")
        return numpy_helper.to_array(t, str(weights_dir))
    return numpy_helper.to_array(t)


def constant_attr_value(node: onnx.NodeProto) -> npt.NDArray[Any] | None:
    """The value of a ``Constant`` node, whichever attribute holds it."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.asarray(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.asarray(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.asarray(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.asarray(list(a.ints), dtype=np.int64)
    return None


class GraphView:
    """Indexes of a graph: who produces and who consumes each tensor, initializers, the
    element types known after shape inference, and which float tensors carry data.
    ``weights_dir`` is where external weight files live."""

    def __init__(self, model: onnx.ModelProto, weights_dir: Path | None = None) -> None:
        g = model.graph
        self.model = model
        self.graph = g
        self.weights_dir = weights_dir
        self.nodes = list(g.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        self.producer: dict[str, int] = {}
        self.uses: dict[str, list[Use]] = defaultdict(list)
        self.subgraph_reads: dict[int, set[str]] = {}
        for idx, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = idx
            for slot, i in enumerate(n.input):
                if i:
                    self.uses[i].append(Use(idx, slot))
            # Tensors read inside subgraphs (If/Loop bodies) count as uses of the node.
            for sub in subgraphs(n):
                outer = outer_names(sub)
                self.subgraph_reads.setdefault(idx, set()).update(outer)
                for name in sorted(outer):
                    self.uses[name].append(Use(idx, -1))
        self.elem_type: dict[str, int] = {}
        self.shape: dict[str, tuple[int | None, ...] | None] = {}
        for vi in [*g.input, *g.output, *g.value_info]:
            t = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and t.elem_type:
                self.elem_type[vi.name] = t.elem_type
                self.shape[vi.name] = (
                    tuple(
                        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                        for d in t.shape.dim
                    )
                    if t.HasField("shape")
                    else None
                )
        for name, init in self.initializers.items():
            self.elem_type[name] = init.data_type
            self.shape[name] = tuple(init.dims)
        for n in self.nodes:
            if n.op_type == "Constant" and n.output:
                for a in n.attribute:
                    if a.name == "value":
                        self.elem_type.setdefault(n.output[0], a.t.data_type)
        self._constant: dict[str, bool] = {}
        self.data = self._data_tensors()

    def node_name(self, idx: int) -> str:
        n = self.nodes[idx]
        return n.name or f"{n.op_type}_{idx}"

    def is_float(self, tensor: str) -> bool:
        return self.elem_type.get(tensor) in FLOAT_TYPES

    def is_constant(self, tensor: str) -> bool:
        """An initializer, a Constant node's output, or a chain of data-movement ops
        (Identity, Cast, Transpose, Reshape, …) over constants."""
        if tensor in self._constant:
            return self._constant[tensor]
        result = False
        if tensor in self.initializers:
            result = True
        else:
            p = self.producer.get(tensor)
            if p is not None:
                n = self.nodes[p]
                if n.op_type == "Constant":
                    result = True
                elif n.op_type in CONSTANT_CHAIN_OPS and n.input and n.input[0]:
                    result = all(self.is_constant(i) for i in n.input if i)
        self._constant[tensor] = result
        return result

    def constant_value(self, tensor: str) -> npt.NDArray[Any] | None:
        """The value of a constant (see ``is_constant``), computed through its chain;
        external data is read from disk on each call, so no weight stays in memory."""
        if tensor in self.initializers:
            return tensor_value(self.initializers[tensor], self.weights_dir)
        p = self.producer.get(tensor)
        if p is None:
            return None
        n = self.nodes[p]
        if n.op_type == "Constant":
            return constant_attr_value(n)
        if n.op_type not in CONSTANT_CHAIN_OPS or not self.is_constant(tensor):
            return None
        args = [self.constant_value(i) if i else None for i in n.input]
        x = args[0]
        if x is None:
            return None
        return _apply_chain_op(n, x, args[1:])

    def constant_source(self, tensor: str) -> str:
        """The tensor a constant chain starts from (the stored weight)."""
        while tensor not in self.initializers:
            p = self.producer.get(tensor)
            if p is None or self.nodes[p].op_type not in CONSTANT_CHAIN_OPS:
                break
            tensor = self.nodes[p].input[0]
        return tensor

    def rank(self, tensor: str) -> int | None:
        """The tensor's rank where shape inference or a constant's value gives it."""
        shape = self.shape.get(tensor)
        if shape is not None:
            return len(shape)
        v = self.constant_value(tensor)
        return None if v is None else v.ndim

    def consumers(self, tensor: str) -> list[Use]:
        return self.uses.get(tensor, [])

    def is_data(self, tensor: str) -> bool:
        """A float tensor that carries the model's data."""
        return tensor in self.data and self.is_float(tensor)

    def _data_tensors(self) -> set[str]:
        """Tensors computed from a signal input (float, or 8/16-bit integer) or an
        embedding lookup (a float table read at run-time indices), in graph order.
        Only float ones are observed; an integer one (uint8 pixels) makes the float
        tensors computed from it data too."""
        data: set[str] = {
            i for i in self.inputs if self.is_float(i) or self.elem_type.get(i) in SIGNAL_INT_TYPES
        }
        for idx, n in enumerate(self.nodes):
            if n.op_type == "Constant":
                continue
            feeds = [i for i in n.input if i] + sorted(self.subgraph_reads.get(idx, ()))
            carries = any(i in data for i in feeds)
            if not carries and n.op_type in LOOKUP_OPS and len(n.input) > 1:
                table, index = n.input[0], n.input[1]
                carries = (
                    self.is_float(table) and self.is_constant(table) and not self.is_constant(index)
                )
            if carries:
                data.update(
                    o
                    for o in n.output
                    if o and (self.is_float(o) or self.elem_type.get(o) in SIGNAL_INT_TYPES)
                )
        return data

    def activations(self) -> list[str]:
        """Float tensors that carry the model's data (see ``is_data``), graph inputs first
        then in node (topological) order."""
        seen: set[str] = set()
        out: list[str] = []
        for name in self.inputs:
            if self.is_data(name) and name not in seen:
                seen.add(name)
                out.append(name)
        for n in self.nodes:
            for o in n.output:
                if o and o not in seen and self.is_data(o):
                    seen.add(o)
                    out.append(o)
        return out


def _apply_chain_op(
    n: onnx.NodeProto, x: npt.NDArray[Any], rest: list[npt.NDArray[Any] | None]
) -> npt.NDArray[Any] | None:
    op = n.op_type
    if op in ("Identity", "Dropout"):
        return x
    if op == "Cast":
        to = int(get_attr(n, "to", onnx.TensorProto.FLOAT))
        return x.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
    if op == "Transpose":
        perm = get_attr(n, "perm")
        return np.transpose(x, perm if perm is None else list(perm))
    if op == "Flatten":
        axis = int(get_attr(n, "axis", 1))
        axis = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
    if op == "Reshape":
        shape = rest[0] if rest else None
        if shape is None:
            return None
        dims = [int(d) for d in shape.reshape(-1)]
        if not get_attr(n, "allowzero", 0):
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)
    if op in ("Squeeze", "Unsqueeze"):
        axes_v = get_attr(n, "axes")
        if axes_v is None and rest and rest[0] is not None:
            axes_v = [int(a) for a in rest[0].reshape(-1)]
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes_v)) if axes_v else np.squeeze(x)
        if axes_v is None:
            return None
        rank = x.ndim + len(axes_v)
        out = x
        for a in sorted(a + rank if a < 0 else a for a in axes_v):
            out = np.expand_dims(out, a)
        return out
    return None


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node holds as attributes (If branches, Loop and Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def all_nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of a graph and of the graphs nested in its nodes."""
    for n in g.node:
        yield n
        for sub in subgraphs(n):
            yield from all_nodes(sub)


def outer_names(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define itself."""
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: set[str] = set()
    for n in g.node:
        for i in n.input:
            if i and i not in defined:
                used.add(i)
        for sub in subgraphs(n):
            used |= outer_names(sub) - defined
        defined.update(o for o in n.output if o)
    return used


def get_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def opset_version(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def without_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its initializers and shape annotations: cheap, however
    many GBs of weights the model holds."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip={"graph"})
    _copy_fields(model.graph, out.graph, skip={"initializer", "value_info"})
    return out


def _copy_fields(src: Any, dst: Any, skip: set[str]) -> None:
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker`` on the graph: weights are checked by the runtime that loads them
    (and may live in external files anywhere, or exceed what protobuf serialises), so
    the checker sees scalar stand-ins for every tensor of 1 KB or more.
    Raises ``onnx.checker.ValidationError``."""
    target = without_tensors(model)
    for t in model.graph.initializer:
        if is_external(t) or t.ByteSize() >= 1024:
            zero = np.zeros(1, onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
            target.graph.initializer.append(
                onnx.helper.make_tensor(t.name, t.data_type, [], zero.tobytes(), raw=True)
            )
        else:
            target.graph.initializer.append(t)
    onnx.checker.check_model(target)


def array_to_initializer(arr: npt.NDArray[Any], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)
