"""``manifest.json``: what an export was made from and what it made.

Inputs' hashes, versions, the method and settings, and every artifact with its
backend, relative path, format, sha256 and figures. ``bench`` reads it to find the
float model and the artifacts, so an output folder copied to a target machine is
self-contained.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from quantship import __version__
from quantship.backends.base import Artifact
from quantship.errors import QuantshipError
from quantship.exporter.output import MANIFEST, sha256_file

FORMAT = "quantship-manifest/1"


def versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {"quantship": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "onnx", *extra):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def artifact_entry(a: Artifact, figures: dict[str, Any]) -> dict[str, Any]:
    files = [
        {"path": f, "sha256": sha256_file(a.root / f), "bytes": (a.root / f).stat().st_size}
        for f in a.files
    ]
    return {
        "backend": a.backend,
        "format": a.format,
        "precision": a.precision,
        "path": a.files[0],
        "sha256": files[0]["sha256"],
        "size_bytes": a.size_bytes(),
        "files": files,
        "metadata": dict(a.metadata),
        "notes": list(a.notes),
        **figures,
    }


def read_manifest(folder: Path, what: str = "an export output folder") -> dict[str, Any]:
    """The manifest of an export folder; ``what``: what the command accepts instead, for
    the hint when ``folder`` is not one."""
    path = folder / MANIFEST
    if not path.is_file():
        raise QuantshipError(f"'{folder}' holds no {MANIFEST}; pass {what}")
    try:
        d: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise QuantshipError(f"'{path}' is not readable JSON ({e})") from None
    if d.get("format") != FORMAT:
        raise QuantshipError(f"'{path}' is not a quantship manifest (format {FORMAT!r} expected)")
    return d


def artifacts_in(folder: Path, manifest: dict[str, Any]) -> list[Artifact]:
    """The artifacts a manifest lists, checked to exist (hashes are checked by bench)."""
    out = []
    for e in manifest.get("artifacts", []):
        files = tuple(f["path"] for f in e.get("files", [{"path": e["path"]}]))
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise QuantshipError(
                f"'{folder}': artifact {e['backend']} lists {missing[0]}, which does not exist"
            )
        out.append(
            Artifact(
                backend=e["backend"],
                format=e["format"],
                root=folder,
                files=files,
                precision=e.get("precision", "int8"),
                metadata=e.get("metadata", {}),
                notes=tuple(e.get("notes", ())),
            )
        )
    return out


def verify_files(folder: Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Every file the manifest lists (the float model's and each artifact's) must have
    the sha256 recorded for it: a changed or corrupt copy is named, before any timing.
    Returns each file's path (relative to ``folder``) → its verified sha256."""
    verified: dict[str, str] = {}
    entries = [manifest["float_model"], *manifest.get("artifacts", [])]
    for e in entries:
        listed = e.get("files") or [e.get("path")]
        for f in listed:
            if not isinstance(f, dict) or "sha256" not in f or "path" not in f:
                name = f.get("path") if isinstance(f, dict) else f
                raise QuantshipError(
                    f"'{folder / MANIFEST}' lists {name} without a sha256, so the file "
                    "cannot be checked; export again with this version of quantship"
                )
            path = folder / f["path"]
            if not path.is_file():
                raise QuantshipError(f"'{folder}': {f['path']}, listed in {MANIFEST}, is missing")
            if sha256_file(path) != f["sha256"]:
                raise QuantshipError(
                    f"'{path}' does not match the sha256 {MANIFEST} records for it "
                    "(changed or corrupted since the export); export again or restore the file"
                )
            verified[f["path"]] = f["sha256"]
    return verified


def float_artifact(folder: Path, manifest: dict[str, Any]) -> Artifact:
    fl = manifest["float_model"]
    files = tuple(f["path"] if isinstance(f, dict) else f for f in fl.get("files", [fl["path"]]))
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise QuantshipError(
            f"'{folder}': the float model file {missing[0]} listed in {MANIFEST} is missing"
        )
    return Artifact(backend="", format="onnx", root=folder, files=files, precision="float")


def runtime_info() -> dict[str, Any]:
    from quantship.measure.machine import cpu_info

    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        **cpu_info(),
    }
