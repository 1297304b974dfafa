"""One quantization job in its own process, for benchmarks/common.run_watched.

    worker.py quantship MODEL CALIB OUT METHOD SAMPLES [BACKEND]
    worker.py ort MODEL CALIB OUT METHOD ACTIVATION SAMPLES [OPTIONS]
    worker.py nncf MODEL CALIB OUT SAMPLES [PRESET]
    worker.py nncf_ac MODEL CALIB HELD OUT SAMPLES MAX_DROP

OPTIONS for ort: comma-separated ``pre`` (``quant_pre_process`` first, as ORT's docs
recommend), ``trt`` (ORT's documented TensorRT options: ``ActivationSymmetric``,
``WeightSymmetric``, ``DedicatedQDQPair``, ``QDQOpTypePerChannelSupportToAxis``).

Every job times its whole call as its user would make it: model in, quantized model
written (quantship: load, prepare, calibrate, plan, write; ORT: ``quantize_static``,
after ``quant_pre_process`` when asked; NNCF: ``convert_model``, ``quantize``,
``save_model``). Prints one JSON line: the times and the process's own peak resident
memory (``VmHWM``: ``ru_maxrss`` would carry over the parent's from before ``exec``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _peak_mb() -> float:
    """This process's own peak resident memory, in MB (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def quantship_job(
    model: str, calib: str, out: str, method: str, samples: int, backend_name: str = "onnxruntime"
) -> dict[str, Any]:
    from quantship.backends.base import PlanOptions
    from quantship.backends.onnxruntime import OnnxRuntimeBackend
    from quantship.calibration.methods import MethodSpec
    from quantship.calibration.runner import calibrate
    from quantship.exporter.onnx_file import save_model
    from quantship.exporter.qdq import write_qdq
    from quantship.exporter.source import load_float_model

    t0 = time.perf_counter()
    fm, data, _ = load_float_model(model, calib, input_shapes=None, images=None, weights=None)
    assert data is not None
    t1 = time.perf_counter()
    spec = MethodSpec(method)  # type: ignore[arg-type]
    table = calibrate(fm, data, samples=samples, histograms=spec.needs_histogram)
    t2 = time.perf_counter()
    if backend_name == "openvino":
        from quantship.backends.openvino import OpenVINOBackend

        ovb = OpenVINOBackend()
        qdq = write_qdq(fm, ovb.plan(fm, table, PlanOptions(method=spec)))
        art = ovb.compile(qdq, Path(out).parent / Path(out).stem, fm)
        Path(out).with_suffix(".path").write_text(str(art.path))
    else:
        backend = OnnxRuntimeBackend()
        save_model(write_qdq(fm, backend.plan(fm, table, PlanOptions(method=spec))), Path(out))
    t3 = time.perf_counter()
    return {
        "load_s": t1 - t0,
        "calib_s": t2 - t1,
        "quantize_s": t3 - t0,  # the whole call, as the peers' figures are
        "samples": table.samples,
    }


class _Reader:
    """ONNX Runtime's CalibrationDataReader over the same memory-mapped .npz."""

    def __init__(self, calib: str, name: str, samples: int) -> None:
        from quantship.calibration.data import stored_npz

        arr = next(iter(stored_npz(Path(calib)).values()))
        self.it: Iterator[dict[str, np.ndarray]] = (
            {name: np.ascontiguousarray(arr[i : i + 1])} for i in range(min(samples, len(arr)))
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def ort_job(
    model: str, calib: str, out: str, method: str, act: str, samples: int, options: str = ""
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    opts = set(filter(None, options.split(",")))
    name = onnx.load(model, load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.r = _Reader(calib, name, samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self.r.get_next()

    extra: dict[str, Any] = {}
    if "trt" in opts:
        # ORT's documented settings for a TensorRT-ready QDQ model.
        extra.update(
            ActivationSymmetric=True,
            WeightSymmetric=True,
            DedicatedQDQPair=True,
            QDQOpTypePerChannelSupportToAxis={"MatMul": 1},
        )
    t0 = time.perf_counter()
    if "pre" in opts:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = str(Path(out).with_suffix(".pre.onnx"))
        quant_pre_process(model, pre)
        model = pre
    quantize_static(
        model,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Entropy
        if method == "entropy"
        else CalibrationMethod.MinMax,
        extra_options=extra,
    )
    return {"quantize_s": time.perf_counter() - t0}


def nncf_job(
    model: str, calib: str, out: str, samples: int, preset: str = "default"
) -> dict[str, Any]:
    """NNCF's post-training quantization of the OpenVINO model, at its default preset
    (symmetric activations; FastBiasCorrection on), ``mixed`` (asymmetric activations),
    ``no-bc`` (bias correction off) or ``transformer`` (``model_type=TRANSFORMER``, which
    turns SmoothQuant on)."""
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    ov_model = ov.convert_model(model)
    name = ov_model.inputs[0].get_any_name()

    class Lazy:
        """Re-iterable (NNCF may pass over the data more than once), read from disk."""

        def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
            reader = _Reader(calib, name, samples)
            while (feed := reader.get_next()) is not None:
                yield feed

        def __len__(self) -> int:
            return samples

    kwargs: dict[str, Any] = {}
    if preset == "mixed":
        kwargs["preset"] = nncf.QuantizationPreset.MIXED
    elif preset == "no-bc":
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(disable_bias_correction=True)
    elif preset == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    q = nncf.quantize(ov_model, nncf.Dataset(Lazy()), subset_size=samples, **kwargs)
    ov.save_model(q, out, compress_to_fp16=False)
    return {"quantize_s": time.perf_counter() - t0}


def nncf_ac_job(
    model: str, calib: str, held: str, out: str, samples: int, max_drop: float
) -> dict[str, Any]:
    """NNCF's quantize_with_accuracy_control on the OpenVINO model, with the same
    measure as quantship's guard: validation metric = mean cosine to the float outputs
    (the float model scores 1.0), absolute drop."""
    import nncf
    import openvino as ov

    t0 = time.perf_counter()
    ov_model = ov.convert_model(model)
    name = ov_model.inputs[0].get_any_name()
    core = ov.Core()
    ref_c = core.compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    held_items = list(_Lazy(held, name, 1000))
    ref = [[np.array(v) for v in ref_c(f).values()] for f in held_items]

    def validate(compiled: Any, data: Any) -> float:
        cos = []
        for f, r in zip(data, ref, strict=True):
            outs = [np.array(v) for v in compiled(f).values()]
            for a, b in zip(outs, r, strict=True):
                a, b = a.ravel(), b.ravel()
                cos.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)))
        return float(np.mean(cos))

    q = nncf.quantize_with_accuracy_control(
        ov_model,
        nncf.Dataset(_Lazy(calib, name, samples)),
        nncf.Dataset(held_items),
        validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=samples,
    )
    ov.save_model(q, out, compress_to_fp16=False)
    return {"quantize_s": time.perf_counter() - t0}


class _Lazy:
    def __init__(self, path: str, name: str, samples: int) -> None:
        self.path, self.name, self.samples = path, name, samples

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        reader = _Reader(self.path, self.name, self.samples)
        while (feed := reader.get_next()) is not None:
            yield feed

    def __len__(self) -> int:
        return self.samples


def main(argv: list[str]) -> int:
    job = argv[0]
    if job == "quantship":
        rep = quantship_job(argv[1], argv[2], argv[3], argv[4], int(argv[5]), *argv[6:7])
    elif job == "nncf_ac":
        rep = nncf_ac_job(argv[1], argv[2], argv[3], argv[4], int(argv[5]), float(argv[6]))
    elif job == "nncf":
        rep = nncf_job(argv[1], argv[2], argv[3], int(argv[4]), *argv[5:6])
    elif job == "ort":
        rep = ort_job(argv[1], argv[2], argv[3], argv[4], argv[5], int(argv[6]), *argv[7:8])
    else:
        raise SystemExit(f"unknown job {job!r}")
    rep["peak_rss_mb"] = _peak_mb()
    print(json.dumps(rep), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
