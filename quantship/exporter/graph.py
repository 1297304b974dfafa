"""Small read-only views of an ONNX graph, used by the loader, the planners and the
QDQ writer. Nothing here mutates a model."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Use:
    """One consumer of a tensor: a node (by index in graph.node) and which input slot."""

    node: int
    slot: int


class GraphView:
    """Indexes of a graph: who produces and who consumes each tensor, initializers, and
    the element types known after shape inference."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model = model
        self.graph = g
        self.nodes = list(g.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        self.producer: dict[str, int] = {}
        self.uses: dict[str, list[Use]] = defaultdict(list)
        for idx, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = idx
            for slot, i in enumerate(n.input):
                if i:
                    self.uses[i].append(Use(idx, slot))
            # Tensors read inside subgraphs (If/Loop bodies) count as uses of the node.
            for attr in n.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    for name in _outer_names(attr.g):
                        self.uses[name].append(Use(idx, -1))
        self.elem_type: dict[str, int] = {}
        self.shape: dict[str, tuple[int | None, ...] | None] = {}
        for vi in [*g.input, *g.output, *g.value_info]:
            t = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and t.elem_type:
                self.elem_type[vi.name] = t.elem_type
                self.shape[vi.name] = (
                    tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
                    if t.HasField("shape")
                    else None
                )
        for name, init in self.initializers.items():
            self.elem_type[name] = init.data_type
            self.shape[name] = tuple(init.dims)

    def node_name(self, idx: int) -> str:
        n = self.nodes[idx]
        return n.name or f"{n.op_type}_{idx}"

    def is_float(self, tensor: str) -> bool:
        return self.elem_type.get(tensor) in FLOAT_TYPES

    def is_constant(self, tensor: str) -> bool:
        """An initializer, or the output of a Constant node."""
        if tensor in self.initializers:
            return True
        p = self.producer.get(tensor)
        return p is not None and self.nodes[p].op_type == "Constant"

    def constant_value(self, tensor: str) -> npt.NDArray[Any] | None:
        if tensor in self.initializers:
            return numpy_helper.to_array(self.initializers[tensor])
        p = self.producer.get(tensor)
        if p is not None and self.nodes[p].op_type == "Constant":
            for a in self.nodes[p].attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def consumers(self, tensor: str) -> list[Use]:
        return self.uses.get(tensor, [])

    def activations(self) -> list[str]:
        """Float tensors computed at run time: graph inputs and node outputs that do not
        come from constants, in a deterministic (topological) order."""
        seen: set[str] = set()
        out: list[str] = []
        for name in self.inputs:
            if self.is_float(name) and name not in seen:
                seen.add(name)
                out.append(name)
        for n in self.nodes:
            if n.op_type == "Constant":
                continue
            for o in n.output:
                if o and o not in seen and self.is_float(o):
                    seen.add(o)
                    out.append(o)
        return out


def _outer_names(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define itself."""
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: set[str] = set()
    for n in g.node:
        for i in n.input:
            if i and i not in defined:
                used.add(i)
        for attr in n.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used |= _outer_names(attr.g) - defined
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


def array_to_initializer(arr: npt.NDArray[Any], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)
