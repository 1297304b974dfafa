"""``--config FILE`` for ``export`` and ``bench``: a TOML file whose ``[export]`` (or
``[bench]``) table sets any of the command's options, named as its flags are (``held-out``
or ``held_out``). Flags given on the command line override the file. A key the command
does not have is an error naming the closest one, never a setting silently ignored;
each value is checked as the flag's would be. Relative paths are relative to the file.
``export``'s file may hold a ``[distill]`` table too (``pipeline_config.py``): the
student is distilled first, then exported.

    [export]
    model = "model.onnx"
    calib = "calib.npz"
    backend = "onnxruntime,openvino"
    keep-float = ["head/Gemm"]
    bench = false            # the inverse of --no-bench
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantship.errors import QuantshipError, closest

# The tables a file may hold; each command reads its own (export also [distill]), so
# that one file can serve both.
TABLES = {"export": ("export", "distill"), "bench": ("bench",)}
KNOWN = ("export", "distill", "bench")
# Options whose values are paths: resolved against the file's folder.
PATHS = {
    "model", "calib", "out", "held_out", "calib_cache", "tokenizer", "weights", "target",
    "data", "json", "plot", "compare",
}  # fmt: skip
# Keys spelt as the API spells them, and the flag each sets.
INVERSE = {"bench": "no_bench"}


def read_table(path: Path, command: str) -> dict[str, Any]:
    """The whole file, checked: only the tables ``command`` reads."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuantshipError(f"config '{path}' not found") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise QuantshipError(f"config '{path}' is not valid TOML ({e})") from None
    unknown = sorted(set(doc) - set(KNOWN))
    if unknown:
        raise QuantshipError(
            f"'{path}': unknown table(s) {unknown}; the tables are "
            + ", ".join(f"[{t}]" for t in KNOWN)
        )
    for t in TABLES[command]:
        if t in doc and not isinstance(doc[t], dict):
            raise QuantshipError(f"'{path}': [{t}] must be a table")
    return doc


def defaults_from(
    parser: argparse.ArgumentParser, table: dict[str, Any], path: Path, name: str
) -> dict[str, Any]:
    """Argparse defaults for ``parser`` from one table of the file, each value checked
    and converted as its flag's would be."""
    actions = {
        a.dest: a
        for a in parser._actions
        if a.dest not in ("help", "config", "replay") and a.help != argparse.SUPPRESS
    }  # an old flag name kept for a release shares its new flag's dest: the new one counts
    out: dict[str, Any] = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        invert = dest in INVERSE
        dest = INVERSE.get(dest, dest)
        action = actions.get(dest)
        if action is None:
            known = [a.replace("_", "-") for a in actions] + list(INVERSE)
            raise QuantshipError(
                f"'{path}': unknown key {key!r} in [{name}]; {closest(key.replace('_', '-'), known)}"
            )
        out[dest] = _value(action, value, invert, path, name, key)
    return out


def _value(
    action: argparse.Action, value: Any, invert: bool, path: Path, name: str, key: str
) -> Any:
    where = f"'{path}': [{name}] {key}"
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise QuantshipError(f"{where} must be true or false, got {value!r}")
        return not value if invert else value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")
    items: Sequence[Any] = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not many:
        # a comma-separated option (--backend a,b; --mean 0.485,0.456,0.406) may be
        # written as a TOML list
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise QuantshipError(f"{where} takes one value, got {value!r}")
        items = [",".join(map(str, value))]
    converted = [_one(action, v, path, where) for v in items]
    return converted if many else converted[0]


def _one(action: argparse.Action, v: Any, path: Path, where: str) -> Any:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise QuantshipError(f"{where}: {v!r} is not a value this option takes")
    text = str(v)
    if action.dest in PATHS and isinstance(v, str) and not _is_spec(v):
        text = str(path.parent / v) if not Path(v).is_absolute() else v
    if action.type is not None:
        try:
            conv: Any = action.type(text)  # type: ignore[operator]
        except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
            raise QuantshipError(f"{where}: {e}") from None
    else:
        conv = text
    if action.choices is not None and conv not in action.choices:
        raise QuantshipError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")
    return conv


def _is_spec(v: str) -> bool:
    from quantship.specs import is_callable_spec

    return is_callable_spec(v) and not Path(v).exists()
