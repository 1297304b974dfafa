"""Apply a ``QuantPlan`` to a ``FloatModel``: the INT8 model in QDQ form.

Activations get QuantizeLinear → DequantizeLinear pairs; weights and biases are stored
as int8/int32 initializers behind a DequantizeLinear (so the file holds a quarter of
the float weight bytes). Names derive from the tensor names, so the same plan always
yields the same bytes.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantship.backends.base import ActivationQuant, ConstantQuant, QuantPlan, Use
from quantship.calibration.qparams import QuantParams, quantize
from quantship.errors import ModelError
from quantship.exporter.fold import remove_unused_initializers
from quantship.exporter.graph import GraphView
from quantship.exporter.load import MIN_OPSET, FloatModel


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.used: set[str] = {t.name for t in g.initializer} | {i.name for i in g.input}
        for n in g.node:
            self.used.update(n.input)
            self.used.update(n.output)
            if n.name:
                self.used.add(n.name)

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name


def _params_inits(
    names: _Names, base: str, p: QuantParams
) -> tuple[onnx.TensorProto, onnx.TensorProto]:
    scale = numpy_helper.from_array(
        np.asarray(p.scale, dtype=np.float32), names.fresh(f"{base}_scale")
    )
    zp = numpy_helper.from_array(np.asarray(p.zero_point), names.fresh(f"{base}_zero_point"))
    return scale, zp


def _dq_node(
    names: _Names, base: str, q: str, scale: str, zp: str, axis: int | None
) -> onnx.NodeProto:
    out = names.fresh(f"{base}_dequantized")
    node = helper.make_node(
        "DequantizeLinear", [q, scale, zp], [out], name=names.fresh(f"{base}_DequantizeLinear")
    )
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def write_qdq(model: FloatModel, plan: QuantPlan) -> onnx.ModelProto:
    """The plan applied to a copy of the float model; validated by ``onnx.checker``."""
    m = onnx.ModelProto()
    m.CopyFrom(model.proto)
    view = GraphView(m)
    names = _Names(m)
    nodes = list(m.graph.node)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []

    def rewire(uses: tuple[Use, ...], name: str) -> None:
        for u in uses:
            nodes[u.node].input[u.slot] = name

    for a in plan.activations:
        _add_activation(a, names, plan.dedicated_dq, new_nodes, new_inits, rewire)

    # One integer copy per (constant, params); one DQ per copy, or per use if dedicated.
    groups: dict[tuple[str, int], list[ConstantQuant]] = defaultdict(list)
    for c in plan.constants:
        groups[(c.tensor, hash(c.params))].append(c)
    for (tensor, _), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0].uses[0].node)):
        value = view.constant_value(tensor)
        if value is None:
            raise ModelError(f"plan quantizes {tensor!r}, which is not a constant of the model")
        p = cs[0].params
        q_init = numpy_helper.from_array(quantize(value, p), names.fresh(f"{tensor}_quantized"))
        scale, zp = _params_inits(names, tensor, p)
        new_inits += [q_init, scale, zp]
        uses = tuple(u for c in cs for u in c.uses)
        if plan.dedicated_dq:
            for u in uses:
                dq = _dq_node(names, tensor, q_init.name, scale.name, zp.name, p.axis)
                new_nodes.append(dq)
                rewire((u,), dq.output[0])
        else:
            dq = _dq_node(names, tensor, q_init.name, scale.name, zp.name, p.axis)
            new_nodes.append(dq)
            rewire(uses, dq.output[0])

    constants = {t.name for t in m.graph.initializer} | {t.name for t in new_inits}
    ordered = _toposort(nodes + new_nodes, view.inputs, constants, len(nodes))
    del m.graph.node[:]
    m.graph.node.extend(ordered)
    m.graph.initializer.extend(new_inits)
    remove_unused_initializers(m)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < MIN_OPSET:
            o.version = MIN_OPSET
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError as e:
        raise ModelError(
            f"the quantized model fails ONNX validation: {str(e).splitlines()[0]}"
        ) from None
    return m


def _add_activation(
    a: ActivationQuant,
    names: _Names,
    dedicated: bool,
    new_nodes: list[onnx.NodeProto],
    new_inits: list[onnx.TensorProto],
    rewire: object,
) -> None:
    scale, zp = _params_inits(names, a.tensor, a.params)
    new_inits += [scale, zp]
    q_out = names.fresh(f"{a.tensor}_quantized")
    new_nodes.append(
        helper.make_node(
            "QuantizeLinear",
            [a.tensor, scale.name, zp.name],
            [q_out],
            name=names.fresh(f"{a.tensor}_QuantizeLinear"),
        )
    )
    assert callable(rewire)
    if dedicated:
        for u in a.uses:
            dq = _dq_node(names, a.tensor, q_out, scale.name, zp.name, None)
            new_nodes.append(dq)
            rewire((u,), dq.output[0])
    else:
        dq = _dq_node(names, a.tensor, q_out, scale.name, zp.name, None)
        new_nodes.append(dq)
        rewire(a.uses, dq.output[0])


def _toposort(
    nodes: list[onnx.NodeProto], inputs: list[str], constants: set[str], n_orig: int
) -> list[onnx.NodeProto]:
    """Kahn's algorithm with a deterministic priority: original nodes keep their order and
    each inserted node comes right after the node producing its input (weight DQs, which
    read only initializers, come first)."""
    available = set(inputs) | constants | {""}
    producer_of: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producer_of[o] = i
    key: dict[int, tuple[int, ...]] = {}
    for i, n in enumerate(nodes):
        if i < n_orig:
            key[i] = (i,)
        else:
            parents = [
                key[producer_of[x]] for x in n.input if x in producer_of and producer_of[x] in key
            ]
            key[i] = (*max(parents, default=(-1,)), i)
    waiting: dict[int, set[str]] = {}
    readers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        need = {x for x in n.input if x not in available and x in producer_of}
        waiting[i] = need
        for x in need:
            readers[x].append(i)
    ready = [(key[i], i) for i, need in waiting.items() if not need]
    heapq.heapify(ready)
    out: list[onnx.NodeProto] = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(nodes[i])
        for o in nodes[i].output:
            for r in readers.get(o, []):
                waiting[r].discard(o)
                if not waiting[r]:
                    heapq.heappush(ready, (key[r], r))
    if len(out) != len(nodes):
        raise ModelError("the quantized graph has a cycle; this is a quantship bug")
    return out
