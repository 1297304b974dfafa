"""Apply a ``QuantPlan`` to a ``FloatModel``: the INT8 model in QDQ form.

Activations get QuantizeLinear → DequantizeLinear pairs; weights and biases are stored
as int8/int32 initializers behind a DequantizeLinear (so the file holds a quarter of
the float weight bytes). Names derive from the tensor names, so the same plan always
yields the same bytes.

Size matters to the people deploying this: all-zero zero-points are shared between
tensors of one shape (a MobileNetV2 has 17k channels), and the exporter's per-node
debug annotations (PyTorch stack traces, ~2 KB a node) are not copied into the
artifact. Zero-points stay explicit: ORT's Gemm fusion needs them.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quantship.backends.base import ConstantQuant, QuantPlan, Use
from quantship.calibration.qparams import QuantParams, quantize
from quantship.errors import ModelError
from quantship.exporter.fold import remove_dead_nodes
from quantship.exporter.graph import GraphView, check_model
from quantship.exporter.load import MIN_OPSET, FloatModel

Rewire = Callable[[tuple[Use, ...], str], None]


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


class _Params:
    """Scale and zero-point initializers; all-zero per-channel zero-points are shared."""

    def __init__(self, names: _Names) -> None:
        self.names = names
        self.inits: list[onnx.TensorProto] = []
        self._zeros: dict[tuple[str, tuple[int, ...], int | None], str] = {}

    def add(self, base: str, p: QuantParams) -> tuple[str, str]:
        scale_arr = np.asarray(p.scale, dtype=np.float32)
        scale = numpy_helper.from_array(scale_arr, self.names.fresh(f"{base}.scale"))
        self.inits.append(scale)
        zp = np.asarray(p.zero_point)
        if zp.ndim == 1 and not zp.any():
            # Shared only between DequantizeLinear nodes of one axis: OpenVINO's ONNX
            # frontend reshapes a zero point for its consumer's axis, and one shared by
            # consumers of two axes (a MatMul's weights, axis 1, and a Gemm's, axis 0)
            # stays a Subtract on every weight, which keeps those layers out of its INT8
            # kernels (on the digits BERT 5 of 26 FullyConnected layers ran INT8, 26 of
            # 26 with the zero points apart).
            key = (zp.dtype.name, zp.shape, p.axis)
            if key not in self._zeros:
                name = self.names.fresh(f"zeros.{zp.dtype.name}.{zp.size}.axis{p.axis}")
                self.inits.append(numpy_helper.from_array(zp, name))
                self._zeros[key] = name
            return scale.name, self._zeros[key]
        init = numpy_helper.from_array(zp, self.names.fresh(f"{base}.zero_point"))
        self.inits.append(init)
        return scale.name, init.name


def _dq_node(
    names: _Names, base: str, q: str, scale: str, zp: str, axis: int | None
) -> onnx.NodeProto:
    node = helper.make_node(
        "DequantizeLinear",
        [q, scale, zp],
        [names.fresh(f"{base}.dq")],
        name=names.fresh(f"{base}.DequantizeLinear"),
    )
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def _attach(
    names: _Names,
    base: str,
    q: str,
    scale: str,
    zp: str,
    axis: int | None,
    uses: tuple[Use, ...],
    dedicated: bool,
    new_nodes: list[onnx.NodeProto],
    rewire: Rewire,
) -> None:
    """DequantizeLinear node(s) reading ``q``: one per use (TensorRT's rule: a QDQ
    pair is never shared between consumers) or one for all."""
    groups = [(u,) for u in uses] if dedicated else [uses]
    for g in groups:
        dq = _dq_node(names, base, q, scale, zp, axis)
        new_nodes.append(dq)
        rewire(g, dq.output[0])


def write_qdq(model: FloatModel, plan: QuantPlan) -> onnx.ModelProto:
    """The plan applied to a copy of the float model; validated by ``onnx.checker``."""
    m = onnx.ModelProto()
    m.CopyFrom(model.proto)
    view = GraphView(m, model.weights_dir)
    names = _Names(m)
    nodes = list(m.graph.node)
    for n in nodes:
        n.doc_string = ""
        del n.metadata_props[:]
    new_nodes: list[onnx.NodeProto] = []
    # Integer weights go into the model as they are made: a model of GBs is held once.
    new_inits = m.graph.initializer
    params = _Params(names)

    def rewire(uses: tuple[Use, ...], name: str) -> None:
        for u in uses:
            nodes[u.node].input[u.slot] = name

    for a in plan.activations:
        scale, zp = params.add(a.tensor, a.params)
        q_out = names.fresh(f"{a.tensor}.q")
        source = a.tensor
        if a.graph_output:
            # The model output keeps its name and becomes the dequantized value, so its
            # producer fuses with the Q into an integer kernel like any other.
            source = names.fresh(f"{a.tensor}.float")
            outs = nodes[view.producer[a.tensor]].output
            outs[list(outs).index(a.tensor)] = source
            read_dq = {(x.node, x.slot) for x in a.uses}
            for u in view.consumers(a.tensor):
                if u.slot >= 0 and (u.node, u.slot) not in read_dq:
                    nodes[u.node].input[u.slot] = source
            dq_name = names.fresh(f"{a.tensor}.DequantizeLinear")
            new_nodes.append(
                helper.make_node("DequantizeLinear", [q_out, scale, zp], [a.tensor], name=dq_name)
            )
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear",
                [source, scale, zp],
                [q_out],
                name=names.fresh(f"{a.tensor}.QuantizeLinear"),
            )
        )
        _attach(
            names, a.tensor, q_out, scale, zp, None, a.uses, plan.dedicated_dq, new_nodes, rewire
        )

    # One integer copy per (constant, params); its DQ shared or dedicated per use.
    groups: dict[tuple[str, int], list[ConstantQuant]] = defaultdict(list)
    for c in plan.constants:
        groups[(c.tensor, hash(c.params))].append(c)
    for (tensor, _), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0].uses[0].node)):
        value = view.constant_value(tensor)
        if value is None:
            raise ModelError(f"plan quantizes {tensor!r}, which is not a constant of the model")
        p = cs[0].params
        q_init = numpy_helper.from_array(quantize(value, p), names.fresh(f"{tensor}.{p.dtype}"))
        new_inits.append(q_init)
        scale, zp = params.add(tensor, p)
        uses = tuple(u for c in cs for u in c.uses)
        _attach(
            names,
            tensor,
            q_init.name,
            scale,
            zp,
            p.axis,
            uses,
            plan.dedicated_dq,
            new_nodes,
            rewire,
        )

    new_inits.extend(params.inits)
    constants = {t.name for t in m.graph.initializer}
    ordered = _toposort(nodes + new_nodes, view.inputs, constants, len(nodes))
    del m.graph.node[:]
    m.graph.node.extend(ordered)
    # A weight's Cast/Transpose chain is dead once its consumer reads the int8 copy.
    remove_dead_nodes(m)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < MIN_OPSET:
            o.version = MIN_OPSET
    try:
        check_model(m)
    except onnx.checker.ValidationError as e:
        raise ModelError(
            f"the quantized model fails ONNX validation: {str(e).splitlines()[0]}"
        ) from None
    return m


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
