"""``--config FILE`` for ``export`` and ``bench``: a TOML file whose ``[export]`` (or
``[bench]``) table sets any of the command's options, named as its flags are (``held-out``
or ``held_out``). Flags given on the command line override the file. A key the command
does not have is an error naming the closest one, never a setting silently ignored;
each value is checked as the flag's would be. Relative paths are relative to the file.
``export``'s file may hold a ``[distill]`` table too (``pipeline_config.py``): the
student is distilled first, then exported. ``export --replay manifest.json`` repeats the
export a manifest records (its ``configuration``).

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
from quantship.specs import is_reference

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


def replay(args: argparse.Namespace, export: argparse.ArgumentParser, ui: Any) -> int:
    """``export --replay build/manifest.json [--out DIR]``: the recorded export again.
    ``export``: the export command's parser, whose defaults every other option must keep."""
    import json
    import sys

    from quantship import api
    from quantship.calibration.images import ImageOptions

    path = Path(args.replay)
    others = sorted(
        a.option_strings[0] if a.option_strings else a.dest
        for a in export._actions
        if a.dest not in ("help", "replay", "out", "quiet", "deprecations")
        and a.help != argparse.SUPPRESS
        and getattr(args, a.dest, a.default) != a.default
    )
    if others:
        raise QuantshipError(
            f"--replay repeats the recorded export as it was: only --out may be given beside "
            f"it, not {', '.join(others)}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QuantshipError(f"--replay: '{path}' not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise QuantshipError(f"--replay: '{path}' is not readable JSON ({e})") from None
    conf = manifest.get("configuration") if isinstance(manifest, dict) else None
    if not isinstance(conf, dict):
        raise QuantshipError(
            f"--replay: '{path}' records no configuration (a manifest of an older quantship?)"
        )
    objects = sorted(k for k, v in conf.items() if isinstance(v, dict) and "object" in v)
    if objects:
        raise QuantshipError(
            f"--replay: that export was given Python objects ({', '.join(objects)}) through "
            "the API; only paths and values can be replayed"
        )
    kwargs = {k: v for k, v in conf.items() if k not in ("model", "calib", "out", "transform")}
    if kwargs.get("images") is not None:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in kwargs["images"].items()
        }
        kwargs["images"] = ImageOptions(**fields)
    if kwargs.get("input_shapes") is not None:
        kwargs["input_shapes"] = {k: tuple(v) for k, v in kwargs["input_shapes"].items()}
    out = args.out if args.out is not None else path.parent  # the folder it describes
    ui.note(f"replaying the export recorded in {path} into {out}")
    result = api.export(conf["model"], conf["calib"], out, ui=ui, **kwargs)
    was, now = manifest, result.manifest
    for what, a, b in (
        ("the model", was["input_model"]["sha256"], now["input_model"]["sha256"]),
        ("the calibration data", was["calibration"]["data_sha256"], now["calibration"]["data_sha256"]),
    ):  # fmt: skip
        if a != b:
            print(f"quantship: note: {what} changed since the recorded run (sha256 {a[:12]}… "
                  f"then, {b[:12]}… now): this replay is not the same run", file=sys.stderr)  # fmt: skip
    for failure in result.failures:
        print(f"quantship: error: {failure}", file=sys.stderr)
    return 2 if result.failures else 0


def apply_config(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``export``/``bench --config FILE``: the file's table becomes the command's
    defaults, so that flags on the command line override it. Returns the file's
    ``[distill]`` table (export), if any, and its repeatable options: argparse appends
    a repeated flag to its default, and a flag given should replace the file's list."""
    from quantship.cli_parser import subcommands

    if not argv or argv[0] not in TABLES:
        return None, {}
    value = None
    for i, a in enumerate(argv):
        flag, eq, rest = a.partition("=")
        # argparse takes an unambiguous prefix of a flag (--conf); so does this
        if len(flag) >= 4 and "--config".startswith(flag):
            if eq:
                value = rest
            elif i + 1 < len(argv):
                value = argv[i + 1]
    if value is None:
        return None, {}
    path = Path(value)
    command = subcommands(parser)[argv[0]]
    doc = read_table(path, argv[0])
    values = defaults_from(command, doc.get(argv[0], {}), path, argv[0])
    appended = {a.dest for a in command._actions if isinstance(a, argparse._AppendAction)}
    lists = {k: v for k, v in values.items() if k in appended}
    command.set_defaults(**{k: v for k, v in values.items() if k not in appended})
    distill = doc.get("distill")
    return (distill if isinstance(distill, dict) else None), lists


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
    if action.dest in PATHS and isinstance(v, str) and not is_reference(v):
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
