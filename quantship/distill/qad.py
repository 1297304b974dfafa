"""Quantization-aware distillation (``quantship distill --qat``).

After float distillation, the student is quantized exactly as ``quantship export``
would for one backend (its plan, written as QDQ by ``write_qdq``, from a calibration
table over ``--calib`` or the training data), and that QDQ graph, not a generic
fake-quantized copy of the student, is fine-tuned with the teacher still teaching it
(``qdq_torch.QDQNet``, through the same seeded, resumable, data-parallel loop as float
distillation). The starting point is post-training quantization (PTQ), scored on
validation as epoch 0: the exported model is never worse there than PTQ.

Written beside the float student: ``student.ptq.onnx`` (the PTQ model it started
from) and ``student.int8.onnx`` (after training), both QDQ models for that backend's
plan that ``quantship bench --backend B`` runs; metrics.json gains a ``qat`` section
with the accuracy of the float, PTQ and QAD models measured in that backend's runtime.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantship.backends.registry import DEFAULT as DEFAULT_BACKEND
from quantship.errors import QuantshipError
from quantship.ui import SILENT, UI

QAT_CHECKPOINT = "qat_checkpoint.pt"
QAT_SETUP = "qat_setup.json"  # the quantization setup the QAT checkpoint belongs to
# --qat-lr auto's candidates: fine-tuning from trained weights wants rates well below
# those that train from scratch (LR_CANDIDATES in train.py).
QAT_LR_CANDIDATES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


@dataclass(frozen=True)
class QatOptions:
    backend: str = DEFAULT_BACKEND
    calib: str | Path | None = None
    method: str = "percentile"
    percentile: float = 99.99
    samples: int = 512  # calibration samples taken from the training data without --calib
    epochs: int = 5
    scales: str = "learned"  # "learned" (LSQ) or "frozen" (as calibrated)
    lr: float | None = None  # None: the best of QAT_LR_CANDIDATES on validation
    # export's --algorithms (cle, smoothquant, adaround, bias-correction or a preset):
    # the PTQ model QAD starts from is the one export writes with them.
    algorithms: str | None = None

    def __post_init__(self) -> None:
        if self.scales not in ("learned", "frozen"):
            raise ValueError(f"--qat-scales must be learned or frozen, got {self.scales!r}")
        if self.epochs < 1:
            raise ValueError(f"--qat-epochs must be >= 1, got {self.epochs}")
        if self.samples < 1:
            raise ValueError(f"calibration samples must be >= 1, got {self.samples}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"--qat-lr must be positive (or auto), got {self.lr}")


def _calibration(fm: Any, train: Any, opts: QatOptions) -> tuple[Any, int, str]:
    """The data the ranges come from: ``--calib``, else the first samples of the
    training split (inputs only), and how many to use."""
    from quantship.calibration.data import arrays_data
    from quantship.calibration.sources import open_data

    if opts.calib is not None:
        data = open_data(opts.calib, fm.inputs, role="calibration")
        n = min(data.num_samples or opts.samples, opts.samples)
        return data, n, f"--calib {opts.calib}"
    n = min(len(train), opts.samples)
    xs = np.stack([np.asarray(train[i][0], np.float32) for i in range(n)])
    name = fm.inputs[0].name
    return arrays_data({name: xs}, fm.inputs, "the training data", "calibration"), n, "--data"


def ptq_model(
    student_onnx: Path, x_shape: tuple[int, ...], train: Any, opts: QatOptions, ui: UI
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(backend, prepared float model, QDQ ModelProto, what was done): the student
    quantized as ``export`` would for ``opts.backend``."""
    from quantship.algorithms import BIAS_SAMPLES, Algorithms, before_planning, for_plan
    from quantship.backends import registry
    from quantship.backends.base import PlanOptions
    from quantship.calibration.methods import MethodSpec
    from quantship.calibration.runner import calibrate
    from quantship.exporter import load as loader
    from quantship.exporter.onnx_file import read_onnx
    from quantship.exporter.qdq import write_qdq

    chosen, _ = registry.available(opts.backend)
    if len(chosen) != 1:
        raise QuantshipError(f"--qat trains for one backend; got {opts.backend!r}")
    backend = chosen[0]
    try:
        method = MethodSpec(opts.method, opts.percentile)  # type: ignore[arg-type]
    except ValueError as e:
        raise QuantshipError(str(e)) from None
    src = read_onnx(student_onnx)
    fm = loader.prepare_source(src, None, {loader.raw_inputs(src.proto)[0].name: (1, *x_shape)})
    data, n, where = _calibration(fm, train, opts)
    table = calibrate(fm, data, samples=n, histograms=method.needs_histogram, ui=ui)
    # What INT8 is made from, as export makes it: the model changed by the algorithms.
    algos = Algorithms.parse(opts.algorithms).for_model(fm, True)
    q_fm, table, report = before_planning(fm, table, data, n, algos, ui)
    options = PlanOptions(method=method)
    if algos.names:
        from quantship.guard import held_feeds

        feeds = held_feeds(data, 0, n, BIAS_SAMPLES, q_fm.fixed_batch)
        q_fm, b_report = for_plan(q_fm, table, backend, options, feeds, algos, ui, {})
        report.update(b_report)
    plan = backend.plan(q_fm, table, options)
    qdq = write_qdq(q_fm, plan)
    ui.note(
        f"--qat: {backend.name}'s plan, {len(plan.quantized_nodes)} nodes in INT8, ranges from "
        f"{n} samples of {where} ({method.method})"
        + (f", after {', '.join(algos.names)}" if algos.names else "")
    )
    info = {"backend": backend.name, "calibration": {"data": where, "samples": n,
            **method.to_json()}, "int8_nodes": len(plan.quantized_nodes),
            "float_nodes": len(plan.float_nodes),
            "algorithms": {"names": list(algos.names), **report}}  # fmt: skip
    return backend, fm, qdq, info


def backend_accuracy(backend: Any, proto: Any, fm: Any, data: Any, teacher: Any) -> float | None:
    """Top-1 accuracy of a QDQ model run by ``backend``'s runtime on ``data`` (one
    sample at a time, as the model's batch is 1); an unlabelled sample counts against
    the teacher's top class. None where the runtime cannot run here (TensorRT without
    a GPU)."""
    import torch

    from quantship.backends.base import SessionSettings
    from quantship.distill.loss import UNLABELLED
    from quantship.errors import BackendError

    name = fm.inputs[0].name
    hit = 0
    try:
        session = backend.qdq_session(proto, fm, SessionSettings())
    except BackendError:
        return None
    with session as s:
        for i in range(len(data)):
            x, y = data[i]
            x = torch.as_tensor(x)
            if int(y) == UNLABELLED:
                with torch.no_grad():
                    y = int(teacher(x[None]).argmax(1))
            out = s.run({name: x[None].numpy().astype(np.float32)})[0]
            hit += int(int(np.argmax(out)) == int(y))
    return hit / max(len(data), 1)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def quantization_aware(
    teacher: Any,
    train: Any,
    val: Any | None,
    unlabelled: Any | None,
    out: Path,
    config: Any,
    opts: QatOptions,
    *,
    resume: bool = False,
    ui: UI = SILENT,
) -> dict[str, Any]:
    """Fine-tune the float student in ``out/student.onnx`` as its INT8 model for
    ``opts.backend``; writes student.ptq.onnx, student.int8.onnx and metrics.json's
    ``qat`` section (rank 0). ``config``: the float run's ``DistillConfig`` (its seed,
    temperature, alpha, batch size and validation share)."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import ConcatDataset

    from quantship.backends import registry
    from quantship.distill.qdq_torch import QDQNet
    from quantship.distill.train import DistillConfig, _dist, holdout
    from quantship.distill.train import distill as run
    from quantship.exporter.output import write_json

    _dist()
    if dist.is_initialized():  # rank 0 writes student.onnx; every rank quantizes it
        dist.barrier()
    everything = ConcatDataset([train, unlabelled]) if unlabelled is not None else train
    fit, held, _ = holdout(everything, val, config)
    x0 = torch.as_tensor(train[0][0])
    backend, fm, ptq, info = ptq_model(out / "student.onnx", tuple(x0.shape), fit, opts, ui)
    net = QDQNet.build(ptq, opts.scales == "learned")
    assert isinstance(config, DistillConfig)
    qconfig = dataclasses.replace(config, epochs=opts.epochs, lr=opts.lr, patience=0,
                                  schedule="cosine", lr_candidates=QAT_LR_CANDIDATES)  # fmt: skip
    ptq_bytes = ptq.SerializeToString()

    def finish(student: Any, metrics: dict[str, Any]) -> None:
        trained = student.to_onnx()
        _write_atomic(out / "student.ptq.onnx", ptq_bytes)
        _write_atomic(out / "student.int8.onnx", trained.SerializeToString())
        if held is not None:
            from quantship.exporter.onnx_file import read_onnx

            float_proto = read_onnx(out / "student.onnx").proto
            default = registry.get(registry.DEFAULT)
            ui.note(f"--qat: measuring float, PTQ and QAD accuracy in {backend.name} ...")
            acc = {
                # the float student in the default runtime, fp32
                "float": backend_accuracy(default, float_proto, fm, held, teacher),
                "ptq": backend_accuracy(backend, ptq, fm, held, teacher),
                "qad": backend_accuracy(backend, trained, fm, held, teacher),
            }
        else:
            acc = {"float": None, "ptq": None, "qad": None}
        section = {**info, "scales": opts.scales, "epochs": metrics["epochs"], "lr": metrics["lr"],
                   "lr_sweep": metrics["lr_sweep"], "exported_epoch": metrics["exported_epoch"],
                   "val_accuracy_fake_quant": metrics["val_accuracy"], "val_accuracy": acc,
                   "measured_in": backend.name}  # fmt: skip
        mpath = out / "metrics.json"
        base = json.loads(mpath.read_text()) if mpath.exists() else {}
        base["qat"] = section
        write_json(mpath, base)
        if acc["ptq"] is not None and acc["qad"] is not None:
            ui.note(
                f"--qat: validation accuracy in {backend.name}: float {100 * (acc['float'] or 0):.2f}%, "
                f"PTQ {100 * acc['ptq']:.2f}%, QAD {100 * acc['qad']:.2f}% "
                f"(epoch {metrics['exported_epoch']} exported)"
            )

    go_on = resume and (out / QAT_CHECKPOINT).exists()
    # What the checkpoint's weights and scale log-ratios belong to: the PTQ model and
    # the options that made it. A resume with another setup would mix the two.
    from quantship.exporter.output import sha256_bytes

    setup = {"options": {k: str(v) if isinstance(v, Path) else v
                         for k, v in dataclasses.asdict(opts).items()},
             "ptq_sha256": sha256_bytes(ptq_bytes)}  # fmt: skip
    setup_path = out / QAT_SETUP
    if go_on:
        saved = json.loads(setup_path.read_text()) if setup_path.exists() else None
        if saved != json.loads(json.dumps(setup)):
            raise QuantshipError(
                f"--resume: '{out / QAT_CHECKPOINT}' was made for another quantization setup "
                f"(backend, calibration, algorithms or scales differ, or an older quantship "
                f"made it): drop --resume, or give the options it was made with"
            )
    elif _dist()[0] == 0:
        write_json(setup_path, setup)
    return run(teacher, net, train, val, out, qconfig, unlabelled=unlabelled, resume=go_on,
               ui=ui, checkpoint=QAT_CHECKPOINT, keep_start=True, finish=finish)  # fmt: skip
