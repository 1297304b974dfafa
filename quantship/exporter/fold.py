"""Graph edits the clean-up library cannot do for us: folding BatchNormalization into
the Conv before it when the Conv's weights live in external data (hidden from the
library, see ``exporter/prepare.py``), and removing what the QDQ writer leaves unused.

Folding matters for INT8, not only for speed: quantizing a Conv's weights before its
BatchNormalization would use per-channel ranges of the *unscaled* weights, and a QDQ
pair between Conv and BN blocks ONNX Runtime's QLinearConv fusion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quantship.exporter.graph import GraphView, get_attr, outer_names, subgraphs


def fold_batchnorm(model: onnx.ModelProto, weights_dir: Path | None = None) -> int:
    """Fold every Conv → BatchNormalization pair (BN the Conv output's only consumer,
    constant parameters, inference mode) into the Conv. Returns how many were folded."""
    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return 0
    view = GraphView(model, weights_dir)
    g = model.graph
    remove: set[int] = set()
    new_inits: list[onnx.TensorProto] = []
    folded = 0
    for bn_idx, bn in enumerate(view.nodes):
        if bn.op_type != "BatchNormalization" or any(bn.output[1:]):
            continue
        if get_attr(bn, "training_mode", 0):
            continue
        x = bn.input[0]
        conv_idx = view.producer.get(x)
        if conv_idx is None or conv_idx in remove:
            continue
        conv = view.nodes[conv_idx]
        if conv.op_type != "Conv" or len(view.consumers(x)) != 1 or x in view.outputs:
            continue
        params = [view.constant_value(n) for n in bn.input[1:5]]
        w = view.constant_value(conv.input[1])
        if w is None or any(p is None for p in params):
            continue
        gamma, beta, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        eps = float(get_attr(bn, "epsilon", 1e-5))
        factor = gamma / np.sqrt(var + eps)
        cout = w.shape[0]
        if factor.shape != (cout,):
            continue
        b = (
            view.constant_value(conv.input[2])
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(cout)
        )
        if b is None:
            continue
        w_new = (w.astype(np.float64) * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        b_new = ((np.asarray(b, np.float64) - mean) * factor + beta).astype(w.dtype)
        base = conv.name or conv.output[0]
        w_name, b_name = f"{base}.weight_bnfolded", f"{base}.bias_bnfolded"
        new_inits += [
            numpy_helper.from_array(w_new, w_name),
            numpy_helper.from_array(b_new, b_name),
        ]
        x_in = conv.input[0]
        del conv.input[:]
        conv.input.extend([x_in, w_name, b_name])
        conv.output[0] = bn.output[0]
        remove.add(bn_idx)
        folded += 1
    if folded:
        kept = [n for i, n in enumerate(view.nodes) if i not in remove]
        del g.node[:]
        g.node.extend(kept)
        g.initializer.extend(new_inits)
        remove_unused_initializers(model)
    return folded


def remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes none of whose outputs is read (a weight's Cast or Transpose once the
    QDQ writer reads an integer copy instead), then unused initializers. Returns how
    many nodes were removed."""
    g = model.graph
    live = {o.name for o in g.output}
    keep: list[bool] = [False] * len(g.node)
    for idx in range(len(g.node) - 1, -1, -1):  # topological order, walked backwards
        n = g.node[idx]
        if any(o in live for o in n.output if o):
            keep[idx] = True
            live.update(i for i in n.input if i)
            for sub in subgraphs(n):
                live.update(outer_names(sub))
    removed = keep.count(False)
    if removed:
        for idx in range(len(g.node) - 1, -1, -1):
            if not keep[idx]:
                del g.node[idx]
    remove_unused_initializers(model)
    return removed


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    view = GraphView(model)
    used = set(view.uses) | set(view.outputs)
    unused = {t.name for t in model.graph.initializer if t.name not in used}
    if not unused:
        return
    inits = model.graph.initializer
    for idx in range(len(inits) - 1, -1, -1):  # in place: initializers may be large
        if inits[idx].name in unused:
            del inits[idx]
    inputs = [i for i in model.graph.input if i.name not in unused]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
