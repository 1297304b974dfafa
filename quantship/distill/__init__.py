"""Teacher → student distillation and quantization-aware distillation (torch only,
imported lazily).

This subpackage shares its name with the API's ``quantship.distill()``: once it is
imported, Python binds ``quantship.distill`` to it, so it is made callable as that
function (``quantship.distill(teacher, student, data, out, ...)`` works either way).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _Package(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from quantship.api import distill

        return distill(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
