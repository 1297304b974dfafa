"""An attention block's two activation-by-activation products, around its Softmax: the
scores ``Q·Kᵀ`` (then scaling, masking, casts, then Softmax) and the context ``P·V``.
The accuracy guard keeps them together as one region; OpenVINO's plan leaves them float
(``not_attention_product``)."""

from __future__ import annotations

import weakref

import onnx

from quantship.exporter.graph import GraphView

# Between a Softmax and the products around it: scaling, masking, casts.
PATH = frozenset({"Div", "Mul", "Add", "Sub", "Where", "Cast", "Dropout", "Identity"})
_PASS = frozenset({"Cast", "Dropout", "Identity"})


def is_runtime_product(view: GraphView, node: onnx.NodeProto) -> bool:
    return node.op_type == "MatMul" and not any(view.is_constant(x) for x in node.input)


def score_product(view: GraphView, softmax: int) -> int | None:
    """The product whose result the Softmax normalises (through ``PATH`` ops), or None."""
    idx = softmax
    for _ in range(6):
        node = view.nodes[idx]
        data = [x for x in node.input if not view.is_constant(x)]
        up = view.producer.get(data[0]) if data else None
        if up is None:
            return None
        idx = up
        p = view.nodes[idx]
        if is_runtime_product(view, p):
            return idx
        if p.op_type not in PATH:
            return None
    return None


def context_product(view: GraphView, softmax: int) -> int | None:
    """The product that reads the Softmax's output (through casts, and the NaN guard
    newer Hugging Face exports put there: ``Where(IsNaN(p), 0, p)``), or None."""
    t = view.nodes[softmax].output[0]
    for _ in range(4):
        uses = [u for u in view.consumers(t) if view.nodes[u.node].op_type != "IsNaN"]
        if len(uses) != 1:
            return None
        node = view.nodes[uses[0].node]
        if is_runtime_product(view, node):
            return int(uses[0].node)
        guard = node.op_type == "Where" and uses[0].slot in (1, 2)
        if node.op_type not in _PASS and not guard:
            return None
        t = node.output[0]
    return None


def _around(view: GraphView) -> list[tuple[int | None, int | None]]:
    """Per Softmax, its score and context products (node indices, None where absent)."""
    return [(score_product(view, i), context_product(view, i))
            for i, n in enumerate(view.nodes) if n.op_type == "Softmax"]  # fmt: skip


def attention_products(view: GraphView) -> list[tuple[int, ...]]:
    """Per Softmax that has them, its score and context products (node indices)."""
    pairs = [tuple(m for m in pair if m is not None) for pair in _around(view)]
    return [p for p in pairs if p]


# Per graph view, each product's output name → which of the two it is.
_PRODUCTS: weakref.WeakKeyDictionary[GraphView, dict[str, str]] = weakref.WeakKeyDictionary()


def _products(view: GraphView) -> dict[str, str]:
    got = _PRODUCTS.get(view)
    if got is None:
        got = {}
        for pair in _around(view):
            for kind, m in zip(("scores", "context"), pair, strict=True):
                if m is not None and view.nodes[m].output:
                    got[view.nodes[m].output[0]] = kind
        _PRODUCTS[view] = got
    return got


def product_kind(view: GraphView, node: onnx.NodeProto) -> str | None:
    """'scores' or 'context' where ``node`` is one of an attention block's products."""
    return _products(view).get(node.output[0]) if node.output else None


def not_attention_product(node: onnx.NodeProto, view: GraphView) -> str | None:
    """A rule check: None, or why ``node`` stays float because it is one of an attention
    block's products (the pairs of ``attention_products``, which the guard keeps as one
    region). OpenVINO fuses MatMul → scale/mask → Softmax → MatMul into one
    ScaledDotProductAttention kernel only when no FakeQuantize sits inside the block;
    with them it runs the block as separate, slower layers. Measured on the PP-OCR-style
    recogniser (benchmarks/ocr_ctc.py; AVX-512 VNNI, no AMX, 2 threads, 20 interleaved
    rounds, two runs): the INT8 model with these products float was 1.06-1.16x the bf16
    float model's speed, with them quantized 0.99-1.00x, at the same 1 - cosine (2.15e-3
    vs 2.16e-3); NNCF, which quantizes after OpenVINO has fused the block, 1.10-1.11x."""
    kind = product_kind(view, node)
    if kind is None:
        return None
    return f"an attention block's {kind} product (kept whole for OpenVINO's attention fusion)"
