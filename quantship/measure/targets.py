"""What ``bench`` and ``profile`` run: every INT8 artifact of an export folder beside
the float model at each precision each runtime has here (every file checked against
the manifest's sha256 first), or one ONNX model in one or more runtimes; and the
inputs to feed them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from quantship.backends import registry
from quantship.backends.base import Artifact, Backend
from quantship.calibration.sources import open_data
from quantship.calibration.text import TextOptions
from quantship.errors import BackendError, QuantshipError, did_you_mean
from quantship.measure.run import Candidate, artifact_candidates, float_candidates, make_feeds
from quantship.measure.verdict import Budget
from quantship.types import Feed, InputSpec
from quantship.ui import UI


@dataclass
class Targets:
    """The candidates, their inputs, and what the export recorded about them."""

    title: str
    inputs: list[InputSpec]
    examples: dict[str, tuple[int, ...]]
    candidates: list[Candidate]
    budget: Budget = field(default_factory=Budget)
    recorded: dict[str, float] = field(default_factory=dict)  # cosine to fp32 per key
    sample: Feed | None = None
    # Every file timed → its sha256, checked against the manifest before any timing (a
    # model file's computed here).
    hashes: dict[str, str] = field(default_factory=dict)

    def shapes(self, batch: int = 1, length: int | None = None) -> dict[str, list[int]]:
        feeds = make_feeds(self.inputs, batch, self.sample, examples=self.examples, length=length)
        return {k: list(v.shape) for k, v in feeds.items()}


def find_targets(
    target: str | Path,
    backends: str | Sequence[str] | None,
    *,
    data: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    tokenizer: str | Path | None = None,
    what: str = "latency",
    ui: UI,
) -> Targets:
    from quantship.exporter.manifest import (
        artifacts_in,
        float_artifact,
        read_manifest,
        verify_files,
    )

    path = Path(target)
    if path.is_dir():
        manifest = read_manifest(path, "an export output folder or an .onnx model")
        hashes = verify_files(path, manifest)
        inputs = [
            InputSpec(i["name"], tuple(i["shape"]), i["dtype"])
            for i in manifest["float_model"]["inputs"]
        ]
        examples: dict[str, tuple[int, ...]] = {
            i["name"]: tuple(i["example_shape"])
            for i in manifest["float_model"]["inputs"]
            if "example_shape" in i
        }
        wanted = None
        if backends is not None:
            spec = backends if isinstance(backends, str) else ",".join(backends)
            wanted = {b.name for b in registry.parse(spec)}
        pairs: list[tuple[Artifact, Backend]] = []
        for a in artifacts_in(path, manifest):
            if wanted is not None and a.backend not in wanted:
                continue
            b = registry.get(a.backend)
            reason = b.available()
            if reason is not None:
                ui.note(f"skipping {a.backend}: {reason}")
                continue
            pairs.append((a, b))
        runtimes = [b for _, b in pairs]
        default = registry.get(registry.DEFAULT)
        if default.name not in {b.name for b in runtimes} and default.available() is None:
            runtimes.insert(0, default)
        cands = float_candidates(float_artifact(path, manifest), runtimes)
        cands += artifact_candidates(pairs)
        found = Targets(f"{what}: {path}", inputs, examples, cands, hashes=hashes)
        v = manifest.get("verdict") or {}
        if "min_cosine" in v:  # the budget the export was judged by
            found.budget = Budget(float(v["min_cosine"]), str(v.get("budget", "")))
        for entry in [*manifest.get("baselines", []), *manifest["artifacts"]]:
            cos = (entry.get("fidelity") or {}).get("cosine")
            if entry.get("key") and cos is not None:
                found.recorded[entry["key"]] = float(cos)
    else:
        model_inputs = _model_inputs(path)
        chosen, missing = registry.available(backends or registry.DEFAULT)
        for m in missing:
            ui.note(f"error: {m}")
        art = Artifact("", "onnx", path.parent, (path.name,), precision="float")
        cands = float_candidates(art, chosen)
        if _has_qdq(path):  # an INT8 model (QAD's student.int8.onnx): not a float one
            cands = [dataclasses.replace(c, label=f"{c.label}, QDQ INT8 model") for c in cands]
        if not cands:
            raise BackendError(
                f"none of {', '.join(b.name for b in chosen)} can run a float model on this machine"
            )
        from quantship.exporter.output import sha256_file

        found = Targets(f"{what}: {path.name}", model_inputs, {}, cands,
                        hashes={path.name: sha256_file(path)})  # fmt: skip
    for name, shape in (input_shapes or {}).items():
        found.examples[name] = _checked_shape(found.inputs, name, shape)
    if data is not None:
        tokens = TextOptions(Path(tokenizer)) if tokenizer is not None else None
        found.sample = open_data(data, found.inputs, role="benchmark", tokens=tokens).first()
    return found


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}  # fmt: skip


def _has_qdq(path: Path) -> bool:
    """Whether a model file holds QuantizeLinear/DequantizeLinear nodes (read where onnx
    is installed; a runtime-only install labels it as the file it is)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        return False
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # an unreadable model: the runtime that loads it says why
        return False
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _model_inputs(path: Path) -> list[InputSpec]:
    """A model file's inputs: read with onnx where the export side is installed, else
    by the runtime there is (a runtime-only install on a target machine)."""
    import importlib.util

    if importlib.util.find_spec("onnx") is not None:
        from quantship.exporter.load import load_model

        return list(load_model(path).inputs)
    if not path.is_file():
        raise QuantshipError(f"{path}: no such model file or export folder")
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        try:
            s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise QuantshipError(
                f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0]}"
            ) from None
        out = []
        for i in s.get_inputs():
            if i.type not in _ORT_TYPES:
                raise QuantshipError(
                    f"{path}: input {i.name!r} is {i.type}, which bench cannot feed"
                )
            shape = tuple(d if isinstance(d, int) else None for d in i.shape)
            out.append(InputSpec(i.name, shape, _ORT_TYPES[i.type]))
        return out
    from quantship.backends.openvino_session import openvino_module

    try:
        model = openvino_module().Core().read_model(str(path))
    except Exception as e:
        raise QuantshipError(f"{path}: OpenVINO cannot read it: {str(e).splitlines()[0]}") from None
    specs = []
    for port in model.inputs:
        dims = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        specs.append(InputSpec(port.get_any_name(), dims, port.get_element_type().to_dtype().name))
    return specs


def _checked_shape(
    inputs: Sequence[InputSpec], name: str, shape: tuple[int, ...]
) -> tuple[int, ...]:
    """An ``--input-shape``: it names an input, has its rank, and agrees with its fixed
    dimensions (the batch comes from ``--batch``)."""
    spec = next((i for i in inputs if i.name == name), None)
    if spec is None:
        names = [i.name for i in inputs]
        raise QuantshipError(
            f"--input-shape names {name!r}; the model's inputs are: {', '.join(names)}"
            + did_you_mean(name, names)
        )
    if len(shape) != len(spec.shape):
        raise QuantshipError(
            f"--input-shape {name}={'x'.join(map(str, shape))} has rank {len(shape)}; "
            f"the input is {spec.shape_str()}"
        )
    for axis, (want, have) in enumerate(zip(shape, spec.shape, strict=True)):
        if axis and have is not None and have != want:
            raise QuantshipError(
                f"--input-shape {name}={'x'.join(map(str, shape))}: dimension {axis} of "
                f"{spec.shape_str()} is fixed at {have}"
            )
    return shape
