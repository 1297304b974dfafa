"""Writing results safely: hashing, and output folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from quantship.errors import OutputError

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Deterministic JSON (sorted keys, fixed separators), written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise): between
    backends, the last one's INT8 model of a large network is otherwise still counted
    against the machine while the next one is built."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def public(path: Path, directory: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` (private: 0600/0700) the mode any
    other file the user writes gets, so a teammate or a container running as another
    user can read the results."""
    path.chmod((0o777 if directory else 0o666) & ~umask())


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        public(Path(tmp))
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(out: Path) -> None:
    """Refuse up front, before any work, to replace a folder that quantship did not make."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path '{out}' exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(
            f"output folder '{out}' exists, is not empty and holds no {MANIFEST} "
            "(not a quantship output); choose another --out or empty it"
        )


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh folder beside ``out``; when the block completes, it replaces ``out``.

    If the block raises (bad input, Ctrl-C, a failing backend) the staging folder is
    deleted and ``out`` is untouched, so a failed run never leaves a half-written
    artifact nor damages an earlier run's results. The swap is two renames on the
    same file system.
    """
    check_output_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    public(stage, directory=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    try:
        stage.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
