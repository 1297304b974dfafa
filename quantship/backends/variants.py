"""Plan variants: the choices a backend's runtime kernels distinguish, each a backend
instance whose rules differ from the shipped rule table in one named way. The plan
search (``export --plan search``) builds and measures each on the target and keeps
the fastest within the fidelity budget; ``--plan NAME`` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantship.backends.base import Backend, PlanOptions
    from quantship.exporter.load import FloatModel

RULES = "rules"  # the shipped rule table, always the first variant
ALL = frozenset({"*"})  # every node (``PlanOptions.symmetric_inputs``)


@dataclass(frozen=True)
class PlanVariant:
    """``name`` (short, for ``--plan``), ``what`` it changes (one line), the backend
    instance that plans it, and what it adds to the user's plan options: nodes kept
    float, op types kept float, nodes whose activation inputs are int8 symmetric, nodes
    quantized by the rules' optional ops (``ALL``: every node). A variant expressed
    through the options on the rule table's own backend can be applied region by
    region (the search's profile-guided plan does)."""

    name: str
    what: str
    backend: Backend
    float_nodes: frozenset[str] = frozenset()
    symmetric_inputs: frozenset[str] = frozenset()
    int8_nodes: frozenset[str] = frozenset()
    float_ops: frozenset[str] = frozenset()

    def options(self, base: PlanOptions, model: FloatModel) -> PlanOptions:
        by_op: frozenset[str] = frozenset()
        if self.float_ops:
            view = model.view()
            by_op = frozenset(
                view.node_name(i) for i, n in enumerate(view.nodes) if n.op_type in self.float_ops
            )
        return replace(
            base,
            float_nodes=base.float_nodes | self.float_nodes | by_op,
            symmetric_inputs=base.symmetric_inputs | self.symmetric_inputs,
            int8_nodes=base.int8_nodes | self.int8_nodes,
        )
