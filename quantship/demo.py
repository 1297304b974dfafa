"""``quantship demo``: the whole mission on real data, nothing downloaded.

Trains a teacher CNN on scikit-learn's handwritten digits (bundled with scikit-learn,
upsampled to 32×32), distills a student with under a quarter of its parameters,
calibrates and exports the student INT8 for every installed backend (naming those
skipped and why), and measures test accuracy and latency of teacher, student and INT8
student side by side. Everything stays in the output folder: teacher/, student/
(weights, ONNX, metrics.json), build/ (manifest, calibration table, artifacts),
``demo.json`` and a latency plot.

Needs torch and scikit-learn (``pip install torch==2.13.0 'quantship[demo]'``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quantship.errors import QuantshipError
from quantship.ui import UI

SIZE = 32


@dataclass(frozen=True)
class Digits:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


def load_digits(seed: int = 0) -> Digits:
    """scikit-learn's 1,797 8×8 digits, upsampled to 32×32, scaled to [0, 1], split
    80/20 with a fixed seed."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise QuantshipError("the demo needs scikit-learn: pip install 'quantship[demo]'") from None
    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    x = np.kron(x, np.ones((1, 1, SIZE // 8, SIZE // 8), np.float32))  # nearest upsampling
    # a light blur so strokes are smooth at 32×32
    k = np.asarray([0.25, 0.5, 0.25], np.float32)
    x = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 3, x)
    x = np.apply_along_axis(lambda c: np.convolve(c, k, mode="same"), 2, x).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return Digits(x[tr], y[tr], x[te], y[te])


def digits_cnn(width: int = 32) -> Any:
    """A small CNN for 1×32×32 digits: three Conv-BN-ReLU stages, global pooling, a
    linear classifier."""
    from torch import nn

    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.Conv2d(w, w, 3, padding=1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * w),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
        nn.BatchNorm2d(4 * w),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, 10),
    )


def train(net: Any, data: Digits, epochs: int, seed: int, ui: UI) -> Any:
    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = (len(x) + 63) // 64
    with ui.progress("training the digits CNN", epochs * steps) as advance:
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                loss = loss_fn(net(x[idx]), y[idx])
                loss.backward()
                opt.step()
                advance(1)
            sched.step()
    return net.eval()


def accuracy(
    run: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], name: str = "input"
) -> float:
    preds = [int(np.argmax(run({name: x[i : i + 1]})[0])) for i in range(len(x))]
    return float(np.mean(np.asarray(preds) == y))


TEACHER_WIDTH = 32
STUDENT_WIDTH = 14  # 20k parameters: under a quarter of the teacher's 103k


def _dataset(x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def run_demo(
    out: Path, *, epochs: int = 8, seed: int = 0, threads: int | None = None, ui: UI
) -> dict[str, Any]:
    """Teacher → distilled student → INT8 student for every installed backend, on the
    digits; one closing table, everything left in ``out``."""
    try:
        import torch
    except ImportError:
        raise QuantshipError(
            "the demo needs torch: pip install torch==2.13.0 'quantship[demo]'"
        ) from None
    from quantship import api
    from quantship.backends import registry
    from quantship.backends.base import Artifact, SessionSettings
    from quantship.distill.train import DistillConfig, distill
    from quantship.exporter.output import write_json
    from quantship.exporter.torch_export import export_module
    from quantship.measure.report import latency_plot
    from quantship.measure.run import Candidate, bench_candidates
    from quantship.measure.timing import BenchSettings
    from quantship.types import InputSpec

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    data = load_digits(seed)
    ui.note(
        f"digits: {len(data.y_train)} training and {len(data.y_test)} test images, 1x{SIZE}x{SIZE}"
    )

    torch.manual_seed(seed)
    teacher = train(digits_cnn(TEACHER_WIDTH), data, epochs, seed, ui)
    (out / "teacher").mkdir(exist_ok=True)
    torch.save(teacher.state_dict(), out / "teacher" / "teacher.pt")
    teacher_onnx = out / "teacher" / "teacher.onnx"
    teacher_onnx.write_bytes(
        export_module(teacher, {"input": (1, 1, SIZE, SIZE)}).SerializeToString()
    )

    torch.manual_seed(seed + 1)
    # A student a fifth the size of its teacher learns more slowly: three times the epochs.
    config = DistillConfig(
        epochs=3 * epochs, temperature=4.0, alpha=0.7, lr=3e-3, batch_size=32, seed=seed
    )
    distill(
        teacher,
        digits_cnn(STUDENT_WIDTH),
        _dataset(data.x_train, data.y_train),
        None,  # validation: 10 % of the training digits; the test digits stay unseen
        out / "student",
        config,
        ui=ui,
    )

    np.savez(out / "calib.npz", input=data.x_train[:256])
    np.savez(out / "test.npz", input=data.x_test)
    # Backends whose INT8 artifacts run natively here (an engine backend without its
    # GPU would be timed in another runtime: the table would not be about it).
    available = [
        n
        for n in registry.names()
        if registry.get(n).available() is None and registry.get(n).capabilities().runs_here
    ]
    skipped = {
        n: registry.get(n).available()
        or f"its artifacts do not run on this machine ({registry.get(n).engine_unavailable()})"
        for n in registry.names()
        if n not in available
    }
    for n, why in skipped.items():
        ui.note(f"backend {n} skipped: {why}")
    build = out / "build"
    result = api.export(
        out / "student" / "student.onnx",
        out / "calib.npz",
        build,
        backends=",".join(available),
        held_out=out / "test.npz",
        samples=256,
        bench=False,
        threads=threads,
        ui=ui,
    )

    ref = registry.get(registry.DEFAULT)
    teacher_art = Artifact("", "onnx", teacher_onnx.parent, (teacher_onnx.name,), "float")
    student_art = Artifact("", "onnx", build, ("float/model.onnx",), "float")
    cands = [
        Candidate(
            f"teacher ({ref.describe(teacher_art, SessionSettings())})",
            ref,
            teacher_art,
            variant="teacher",
        ),
        Candidate(
            f"student ({ref.describe(student_art, SessionSettings())})",
            ref,
            student_art,
            variant="student",
        ),
    ] + [
        Candidate(
            f"student ({registry.get(a.backend).describe(a, SessionSettings())})",
            registry.get(a.backend),
            a,
            variant="student",
        )
        for a in result.artifacts
    ]
    params = {
        "teacher": sum(p.numel() for p in teacher.parameters()),
        "student": sum(p.numel() for p in digits_cnn(STUDENT_WIDTH).parameters()),
    }
    settings = SessionSettings(threads=threads)
    accs = {}
    with ui.progress("test accuracy", len(cands)) as advance:
        for c in cands:
            with c.backend.session(c.artifact, settings) as session:
                accs[c.label] = accuracy(session.run, data.x_test, data.y_test, name="input")
            advance(1)
    inputs = [InputSpec("input", (None, 1, SIZE, SIZE), "float32")]
    stats = bench_candidates(cands, inputs, BenchSettings(duration=4.0, threads=threads))
    p50 = {st.label: st.p50_ms for st in stats}
    roles = ["teacher", "student"] + ["student int8"] * len(result.artifacts)
    rows = [
        {
            "role": role,
            "model": c.label,
            "parameters": params["teacher" if role == "teacher" else "student"],
            "file_bytes": c.artifact.size_bytes(),
            "test_accuracy": accs[c.label],
            "p50_ms": p50[c.label],
        }
        for role, c in zip(roles, cands, strict=True)
    ]
    ui.table(
        f"quantship demo: digits, teacher → distilled student → INT8 (test set of {len(data.y_test)} images)",
        ["model", "parameters", "file KB", "test accuracy", "p50 ms (batch 1)"],
        [
            [
                r["model"],
                f"{r['parameters']:,}",
                f"{r['file_bytes'] / 1e3:.1f}",
                f"{100 * r['test_accuracy']:.2f}%",
                f"{r['p50_ms']:.3f}",
            ]
            for r in rows
        ],
    )
    plotted = latency_plot(
        stats, [], out / "latency.png", "digits: teacher, student, INT8 student (batch 1)"
    )
    summary = {
        "rows": rows,
        "epochs": epochs,
        "seed": seed,
        "skipped_backends": skipped,
        "latency": [st.to_json(samples=False) for st in stats],
        "seconds": round(time.perf_counter() - t_start, 1),
        "plot": "latency.png" if plotted else None,
    }
    write_json(out / "demo.json", summary)
    ui.note(f"demo finished in {summary['seconds']} s; everything is in {out}/")
    return summary
