"""A PyTorch model to ONNX: ``package.module:factory`` (+ optional state dict) or a
``torch.export`` ``.pt2`` file. torch is imported here only, on this path only."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from quantship.errors import ModelError, QuantshipError
from quantship.specs import is_callable_spec, resolve

EXPORT_OPSET = 18


def is_torch_spec(spec: str) -> bool:
    return spec.endswith(".pt2") or is_callable_spec(spec)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise QuantshipError(
            "loading a PyTorch model needs torch: pip install torch==2.13.0 'quantship[torch]'"
        ) from None
    return torch


def load_factory(spec: str, what: str = "model") -> Any:
    """Call ``package.module:factory`` and return the nn.Module it builds."""
    torch = _torch()
    mod_name, _, fn_name = spec.partition(":")
    try:
        _, _, factory = resolve(spec)
    except Exception as e:
        raise ModelError(
            f"{what} '{spec}': cannot import {mod_name!r} ({type(e).__name__}: {e})"
        ) from None
    if factory is None or not callable(factory):
        raise ModelError(f"{what} '{spec}': module {mod_name!r} has no callable {fn_name!r}")
    try:
        net = factory()
    except Exception as e:
        raise ModelError(f"{what} '{spec}': the factory failed ({type(e).__name__}: {e})") from None
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"{what} '{spec}' returned {type(net).__name__}, not a torch.nn.Module")
    return net


def load_weights(net: Any, weights: Path, what: str = "model") -> None:
    torch = _torch()
    if not weights.exists():
        raise ModelError(f"weights file '{weights}' not found")
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"weights '{weights}' cannot be read ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except Exception as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"weights '{weights}' do not fit the {what}: {first}") from None


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """The exporter logs its progress and warns about optional torchvision ops; the
    user asked for an INT8 model, not for that."""
    names = [
        "torch.onnx",
        "torch.onnx._internal.exporter._registration",
        "torch.export",
        "torch._dynamo",
    ]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def export_module(
    net: Any,
    shapes: dict[str, tuple[int, ...]],
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> onnx.ModelProto:
    """Export an nn.Module (eval mode) with a dynamic batch axis on every input."""
    torch = _torch()
    is_program = isinstance(net, torch.export.ExportedProgram)
    if not is_program:
        net = net.eval()
    names = input_names or list(shapes)
    args = tuple(torch.zeros(shapes[n]) for n in names)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn = {n: {0: batch} for n in names}
    buf = io.BytesIO()
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), _quiet_torch_logs(), torch.no_grad():
            program = torch.onnx.export(
                net,
                args,
                None,
                input_names=names,
                output_names=output_names,
                # a torch.export program carries its own dynamic dimensions
                dynamic_shapes=None if is_program else tuple(dyn[n] for n in names),
                opset_version=EXPORT_OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            program.save(buf)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"exporting the PyTorch model to ONNX failed: {first}") from None
    return onnx.load_model_from_string(buf.getvalue())


def export_spec(
    spec: str,
    weights: Path | None,
    shapes: dict[str, tuple[int, ...]],
) -> onnx.ModelProto:
    """``package.module:factory`` or a ``.pt2`` file, exported to ONNX."""
    torch = _torch()
    if spec.endswith(".pt2"):
        path = Path(spec)
        if not path.exists():
            raise ModelError(f"model file '{path}' not found")
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise ModelError(
                f"'{path}' is not a torch.export program ({type(e).__name__}: {e})"
            ) from None
        net = program
    else:
        net = load_factory(spec)
        if weights is not None:
            load_weights(net, weights)
    return export_module(net, shapes)
