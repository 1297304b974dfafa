"""``package.module:function`` references, as the CLI takes them for data sources,
model factories, metrics and datasets. Callers word their own errors."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any


def is_callable_spec(text: str) -> bool:
    """``a.b:c`` with identifiers only, and no path separator."""
    if ":" not in text or "/" in text or "\\" in text:
        return False
    mod, _, fn = text.partition(":")
    return bool(mod) and all(p.isidentifier() for p in mod.split(".")) and fn.isidentifier()


def is_reference(text: str) -> bool:
    """``text`` names a function (``a.b:c``) rather than a file that exists there."""
    return is_callable_spec(text) and not Path(text).exists()


def resolve(spec: str) -> tuple[str, str, Any]:
    """(module name, attribute name, the attribute or None). The working directory is
    importable, as for ``python -m``. Import errors propagate to the caller."""
    mod_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    module = importlib.import_module(mod_name)
    return mod_name, attr, getattr(module, attr, None)
