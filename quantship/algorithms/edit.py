"""A pre-quantization step's changes to a float model: new values for some of its
initializers, new initializers and replaced nodes, applied to a copy (the input model
is not touched)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from quantship.exporter.graph import GraphView
from quantship.exporter.load import FloatModel


class ModelEdit:
    def __init__(self, fm: FloatModel) -> None:
        self.fm = fm
        self.view: GraphView = fm.view()
        self.values: dict[str, npt.NDArray[Any]] = {}  # changed or new initializers
        self._read: dict[str, npt.NDArray[Any]] = {}
        self.nodes: dict[int, onnx.NodeProto] = {}
        self.added: list[str] = []  # new initializers, in the order made
        self.inserted: list[tuple[int, onnx.NodeProto]] = []  # new nodes, before node idx
        self.value_info: list[onnx.ValueInfoProto] = []  # of the new nodes' outputs

    def node(self, idx: int) -> onnx.NodeProto:
        """The node as edited so far."""
        node: onnx.NodeProto = self.nodes.get(idx, self.view.nodes[idx])
        return node

    def weight(self, node: onnx.NodeProto, slot: int) -> str | None:
        """The initializer a node reads at ``slot``, if only this node reads it (so
        changing it changes nothing else)."""
        if slot >= len(node.input) or not node.input[slot]:
            return None
        name = str(node.input[slot])
        if name in self.added:
            return name
        if name not in self.view.initializers or len(self.view.consumers(name)) != 1:
            return None
        return name

    def own(self, idx: int, slot: int) -> str | None:
        """The initializer node ``idx`` reads at ``slot``, made its own first where other
        nodes read it too (clean-up merges equal constants, such as zero biases of one
        size); None where that input is not an initializer."""
        node = self.node(idx)
        name = self.weight(node, slot)
        if name is not None:
            return name
        if slot >= len(node.input) or node.input[slot] not in self.view.initializers:
            return None
        return self.set_input(idx, slot, f"{node.input[slot]}.{idx}", self.value(node.input[slot]))

    def value(self, name: str) -> npt.NDArray[Any]:
        """The current value (float32) of an initializer, as changed so far."""
        if name in self.values:
            return self.values[name]
        if name not in self._read:
            v = self.view.constant_value(name)
            assert v is not None, name
            self._read[name] = np.array(v, dtype=np.float32)
        return self._read[name]

    def set(self, name: str, value: npt.NDArray[Any]) -> None:
        self.values[name] = np.ascontiguousarray(value, dtype=np.float32)

    def set_input(self, idx: int, slot: int, name: str, value: npt.NDArray[Any]) -> str:
        """A new initializer (named ``name``, made unique) read by node ``idx`` at
        ``slot``; the slot is appended where the node has fewer inputs."""
        taken = {*self.view.initializers, *self.view.producer, *self.added}
        unique, k = name, 1
        while unique in taken:
            unique, k = f"{name}_{k}", k + 1
        self.added.append(unique)
        self.set(unique, value)
        new = onnx.NodeProto()
        new.CopyFrom(self.node(idx))
        while len(new.input) <= slot:
            new.input.append("")
        new.input[slot] = unique
        self.nodes[idx] = new
        return unique

    def replace_node(self, idx: int, node: onnx.NodeProto) -> None:
        self.nodes[idx] = node

    def unique_name(self, name: str) -> str:
        """``name``, or ``name_k``: no tensor or node of the model has it."""
        taken = {*self.view.initializers, *self.view.producer, *self.added,
                 *(o for _, n in self.inserted for o in (*n.output, n.name)),
                 *(n.name for n in self.view.nodes)}  # fmt: skip
        unique, k = name, 1
        while unique in taken:
            unique, k = f"{name}_{k}", k + 1
        return unique

    def insert_mul(self, tensor: str, before: int, factor: npt.NDArray[Any], name: str) -> str:
        """A new ``Mul(tensor, factor)`` node placed before node ``before`` (which
        must come after ``tensor``'s producer); returns its output's name."""
        const = self.unique_name(f"{name}.factor")
        self.added.append(const)
        self.set(const, factor)
        out = self.unique_name(f"{name}_output_0")
        node = helper.make_node("Mul", [tensor, const], [out], name=self.unique_name(name))
        self.inserted.append((before, node))
        # Its type and shape are the tensor's (``factor`` broadcasts over the last axis).
        known = {
            v.name: v
            for v in (
                *self.fm.proto.graph.value_info,
                *self.fm.proto.graph.input,
                *self.fm.proto.graph.output,
            )
        }
        info = onnx.ValueInfoProto()
        if tensor in known:
            info.CopyFrom(known[tensor])
        else:
            info.CopyFrom(
                helper.make_tensor_value_info(
                    tensor, self.view.elem_type.get(tensor, onnx.TensorProto.FLOAT), None
                )
            )
        info.name = out
        self.value_info.append(info)
        return out

    def set_node_input(self, idx: int, slot: int, tensor: str) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(self.node(idx))
        new.input[slot] = tensor
        self.nodes[idx] = new

    def apply(self, note: str) -> FloatModel:
        """A copy of the model with the changes; an unchanged model as it is."""
        if not (self.values or self.nodes or self.inserted):
            return self.fm
        proto = onnx.ModelProto()
        proto.CopyFrom(self.fm.proto)
        g = proto.graph
        for t in g.initializer:
            if t.name in self.values:
                t.CopyFrom(numpy_helper.from_array(self.values[t.name], t.name))
        g.initializer.extend(numpy_helper.from_array(self.values[n], n) for n in self.added)
        for idx, node in self.nodes.items():
            g.node[idx].CopyFrom(node)
        if self.inserted:
            before: dict[int, list[onnx.NodeProto]] = {}
            for idx, node in self.inserted:
                before.setdefault(idx, []).append(node)
            nodes = [n for i, old in enumerate(g.node) for n in (*before.get(i, []), old)]
            del g.node[:]
            g.node.extend(nodes)
            g.value_info.extend(self.value_info)
        return dataclasses.replace(self.fm, proto=proto, notes=(*self.fm.notes, note))


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (intermediate tensors to compare)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names if t not in have)
    return m
