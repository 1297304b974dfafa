"""Plan variants: the choices a backend's runtime kernels distinguish, each a backend
instance whose rules differ from the shipped rule table in one named way. The plan
search (``export --plan search``) builds and measures each on the target and keeps
the fastest within the fidelity budget; ``--plan NAME`` picks one by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantship.backends.base import Backend

RULES = "rules"  # the shipped rule table, always the first variant


@dataclass(frozen=True)
class PlanVariant:
    """``name`` (short, for ``--plan``), ``what`` it changes (one line), the backend
    instance that plans it, and nodes it keeps float besides the user's (a variant the
    search derives from a measured profile)."""

    name: str
    what: str
    backend: Backend
    float_nodes: frozenset[str] = frozenset()
