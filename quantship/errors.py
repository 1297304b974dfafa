"""The one error root. A ``QuantshipError`` is a user-facing problem: the CLI prints
its message as one line and exits with code 2. Messages say what was asked for and
what exists, so the user can fix the call without reading a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QuantshipError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    exit_code = 2


class ModelError(QuantshipError):
    """The model file is missing, corrupt, or cannot be prepared for quantization."""


class DataError(QuantshipError):
    """Calibration or evaluation data is missing, malformed, or does not fit the model."""


class BackendError(QuantshipError):
    """An unknown backend, a runtime that is not installed, or a backend that failed."""


class OutputError(QuantshipError):
    """The output location cannot be written as asked."""


def closest(name: str, options: Iterable[str], n: int = 3) -> str:
    """A short 'did you mean' phrase for an unknown name, or the list of what exists."""
    opts = sorted(set(options))
    near = difflib.get_close_matches(name, opts, n=n, cutoff=0.5)
    if near:
        return "did you mean " + ", ".join(repr(x) for x in near) + "?"
    shown = ", ".join(repr(x) for x in opts[:10])
    more = f" (and {len(opts) - 10} more)" if len(opts) > 10 else ""
    return f"available: {shown}{more}" if opts else "none exist"


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """ "; did you mean 'x'?" when ``name`` is close to one of ``options``, else "": for a
    message that lists the options already."""
    hint = closest(name, options)
    return f"; {hint}" if hint.startswith("did you mean") else ""
