"""The ``[distill]`` table of ``quantship export --config pipeline.toml``: a student is
distilled first, then the ``[export]`` table (``config_file.py``) exports it.

    [distill]                      # optional: train a student first, then export it
    teacher = "mypkg.models:resnet_big"
    teacher_weights = "teacher.pt"
    student = "mypkg.models:resnet_small"
    train = "train.npz"
    val = "val.npz"
    epochs = 20
    temperature = 4.0
    alpha = 0.7
    qat = true                     # optional: also student.int8.onnx by quantization-aware
    backend = "onnxruntime"        # distillation for this backend (qat_epochs, qat_scales,
    out = "student"                # qat_lr, calib, method as the CLI's --qat options)

    [export]                       # any of export's options; no model: the student's
    calib = "calib.npz"
    backend = "onnxruntime,openvino"
    out = "build"

Keys are checked: a misspelt key is an error that names the known ones, not a setting
silently ignored. Relative paths are relative to the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantship.errors import QuantshipError, closest
from quantship.specs import is_reference
from quantship.ui import SILENT, UI

DISTILL_KEYS = {
    "teacher": str,
    "teacher_weights": str,
    "student_weights": str,
    "student": str,
    "train": str,
    "data": str,  # the older name of train
    "val": str,
    "unlabelled": str,
    "epochs": int,
    "temperature": float,
    "alpha": float,
    "lr": float,
    "batch": int,
    "batch_size": int,  # the older name of batch
    "seed": int,
    "patience": int,
    "schedule": str,
    "qat": bool,
    "backend": str,
    "calib": str,
    "method": str,
    "qat_epochs": int,
    "qat_scales": str,
    "qat_lr": float,
    "algorithms": str,
    "out": str,
}
PATH_KEYS = {
    "train",
    "teacher_weights",
    "student_weights",
    "data",
    "val",
    "unlabelled",
    "out",
    "model",
    "calib",
    "held_out",
    "calib_cache",
    "weights",
}


def _section(
    doc: dict[str, Any], name: str, keys: dict[str, type], base: Path, src: Path
) -> dict[str, Any]:
    raw = doc.get(name, {})
    if not isinstance(raw, dict):
        raise QuantshipError(f"'{src}': [{name}] must be a table")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in keys:
            raise QuantshipError(f"'{src}': unknown key {k!r} in [{name}]; {closest(k, keys)}")
        want = keys[k]
        if k in ("lr", "qat_lr") and v == "auto":  # the learning-rate sweep
            out[k] = v
            continue
        ok = isinstance(v, want) or (
            want is float and isinstance(v, int) and not isinstance(v, bool)
        )
        if not ok or (want is int and isinstance(v, bool)):
            raise QuantshipError(f"'{src}': [{name}] {k} must be {want.__name__}, got {v!r}")
        if k in PATH_KEYS and isinstance(v, str) and not is_reference(v):
            v = str((base / v).resolve()) if not Path(v).is_absolute() else v
        out[k] = float(v) if want is float else v
    return out


def distill_first(table: dict[str, Any], path: Path, ui: UI = SILENT) -> Path:
    """Run the file's ``[distill]`` table; the student's ONNX model, for export."""
    from quantship import api

    dst = _section({"distill": table}, "distill", DISTILL_KEYS, path.parent, path)
    for old, new in (("data", "train"), ("batch_size", "batch")):
        if old in dst:
            if new in dst:
                raise QuantshipError(f"'{path}': [distill] gives {new} and {old}; {new} alone")
            dst[new] = dst.pop(old)
    for k in ("teacher", "student", "train", "out"):
        if k not in dst:
            raise QuantshipError(f"'{path}': [distill] needs {k}")
    if "batch" in dst:
        dst["batch_size"] = dst.pop("batch")
    api.distill(
        dst["teacher"],
        dst["student"],
        dst["train"],
        dst["out"],
        val=dst.get("val"),
        unlabelled=dst.get("unlabelled"),
        teacher_weights=dst.get("teacher_weights"),
        student_weights=dst.get("student_weights"),
        **{k: v for k, v in dst.items() if k in PASSED},
        ui=ui,
    )
    return Path(dst["out"]) / "student.onnx"


# [distill] keys handed to api.distill as keyword arguments of the same name
PASSED = frozenset(
    {"epochs", "temperature", "alpha", "lr", "batch_size", "seed", "patience", "schedule",
     "qat", "backend", "calib", "method", "qat_epochs", "qat_scales", "qat_lr", "algorithms"}
)  # fmt: skip
