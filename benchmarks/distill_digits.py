"""Distillation on scikit-learn's digits: the distilled student against the same
student trained on labels alone (same epochs, optimizer and seed; α = 0 in the same
loop), over several seeds; then the distilled student in INT8 on every installed
backend.

    python benchmarks/distill_digits.py [--seeds 0,1,2] [--epochs 8]

Results: benchmarks/results/distill_digits.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, machine, md_table, write_results


def main() -> int:
    import numpy as np
    import torch

    from quantship import api
    from quantship.backends import registry
    from quantship.backends.base import SessionSettings
    from quantship.demo import (
        STUDENT_WIDTH,
        TEACHER_WIDTH,
        _dataset,
        accuracy,
        digits_cnn,
        load_digits,
        train,
    )
    from quantship.distill.train import DistillConfig, distill
    from quantship.ui import UI

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=8, help="teacher epochs; students get 3x")
    args = ap.parse_args()
    quiet = UI(quiet=True)
    rows, results = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_digits(seed)
        torch.manual_seed(seed)
        teacher = train(digits_cnn(TEACHER_WIDTH), data, args.epochs, seed, quiet)
        with torch.no_grad():
            t_acc = float(
                (teacher(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean()
            )
        accs: dict[str, float] = {}
        for label, alpha in (("distilled", 0.7), ("labels only", 0.0)):
            out = WORK / "distill" / f"seed{seed}-{label.replace(' ', '-')}"
            torch.manual_seed(seed + 1)
            cfg = DistillConfig(
                epochs=3 * args.epochs,
                temperature=4.0,
                alpha=alpha,
                lr=3e-3,
                batch_size=32,
                seed=seed,
            )
            student = digits_cnn(STUDENT_WIDTH)
            distill(
                teacher,
                student,
                _dataset(data.x_train, data.y_train),
                None,  # validation: 10 % of the training digits; the test digits stay unseen
                out,
                cfg,
                ui=quiet,
            )
            student.eval()
            with torch.no_grad():  # the exported (best-on-validation) weights, on test
                pred = student(torch.from_numpy(data.x_test)).argmax(1).numpy()
            accs[label] = float((pred == data.y_test).mean())
            print(
                f"seed {seed}: {label} student {accs[label]:.4f} (teacher {t_acc:.4f})", flush=True
            )
        d = WORK / "distill" / f"seed{seed}-distilled"
        np.savez(d / "calib.npz", input=data.x_train[:256])
        np.savez(d / "test.npz", input=data.x_test)
        backends = [
            n for n in registry.names() if n != "tensorrt" and registry.get(n).available() is None
        ]
        res = api.export(
            d / "student.onnx",
            d / "calib.npz",
            d / "build",
            backends=",".join(backends),
            held_out=d / "test.npz",
            bench=False,
            ui=quiet,
        )
        int8 = {
            a.backend: accuracy(
                registry.get(a.backend).session(a, SessionSettings()).run, data.x_test, data.y_test
            )
            for a in res.artifacts
        }
        r: dict[str, Any] = {"seed": seed, "teacher": t_acc, **accs, "int8": int8}
        results.append(r)
        rows.append(
            [
                str(seed),
                f"{100 * t_acc:.2f}",
                f"{100 * accs['distilled']:.2f}",
                f"{100 * accs['labels only']:.2f}",
                ", ".join(f"{k} {100 * v:.2f}" for k, v in int8.items()),
            ]
        )
    mean = {
        k: float(np.mean([r[k] for r in results])) for k in ("teacher", "distilled", "labels only")
    }
    rows.append(
        [
            "mean",
            f"{100 * mean['teacher']:.2f}",
            f"{100 * mean['distilled']:.2f}",
            f"{100 * mean['labels only']:.2f}",
            "",
        ]
    )
    params_t = sum(p.numel() for p in digits_cnn(TEACHER_WIDTH).parameters())
    params_s = sum(p.numel() for p in digits_cnn(STUDENT_WIDTH).parameters())
    md = (
        "# Distillation on the digits\n\n"
        f"Command: `python benchmarks/distill_digits.py --seeds {args.seeds} --epochs {args.epochs}`\n\n"
        f"Machine: {machine()}. Teacher {params_t:,} parameters ({args.epochs} epochs, labels); students "
        f"{params_s:,} ({params_s / params_t:.2f} of it), {3 * args.epochs} epochs, T=4, α=0.7 (distilled) or "
        "α=0 (labels only), same seed and loop. Test accuracy on the 360 held-out digits (%).\n\n"
        + md_table(
            [
                "seed",
                "teacher",
                "distilled student",
                "student, labels only",
                "distilled student INT8",
            ],
            rows,
        )
    )
    write_results(
        "distill_digits",
        {"machine": machine(), "args": vars(args), "results": results, "mean": mean},
        md,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
