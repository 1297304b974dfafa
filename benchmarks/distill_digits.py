"""Distillation on scikit-learn's digits, over seeds (mean and spread).

1. Three student shapes (digits_cnn at widths 8, 12, 16: 1/60, 1/27 and 1/16 of a
   width-64 teacher), each trained by
   - a plain loop: Adam at a constant rate (1e-3, 3e-3, 1e-2), batch 64, the same
     KL·T² + CE loss (T = 4, α = 0.7), reshuffled each epoch, the last epoch kept;
   - ``quantship distill`` at its defaults (``--lr auto``, cosine schedule, the best
     epoch on a held-out 10 % of the training digits exported);
   - ``quantship distill --alpha 0``: the same recipe on labels alone.
2. Scarce labels: 10 % of the training digits keep their labels, the other 90 % are
   inputs only (``--unlabelled``), taught by the teacher. The teacher was trained on
   every label: it stands in for a published model the user did not train. The
   smallest student, distilled, against the same student on the labelled 10 % alone:
   ``quantship distill --alpha 0`` at the same epochs and at the same number of steps,
   and a plain loop (Adam, constant rate 1e-3, 3e-3 or 1e-2, batch 32, every labelled
   digit trained on); the baseline is the best of these per seed.
3. The smallest distilled student in INT8 on every installed backend.

Accuracy on the 360 test digits, which no run sees while training or choosing.

    python benchmarks/distill_digits.py [--seeds 0,1,2,3,4] [--epochs 20]

Results: benchmarks/results/distill_digits.{json,md}, rewritten after every seed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, machine, machine_line, md_table, write_results

TEACHER = 64
SHAPES = (8, 12, 16)
PLAIN_LRS = (1e-3, 3e-3, 1e-2)
LABEL_SHARE = 0.1


def main() -> int:
    import numpy as np
    import torch

    from quantship import api
    from quantship.backends import registry
    from quantship.backends.base import SessionSettings
    from quantship.demo import _dataset, accuracy, digits_cnn, load_digits, train
    from quantship.distill.loss import UNLABELLED, distillation_loss
    from quantship.distill.train import DistillConfig, distill
    from quantship.ui import UI

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (accuracy only: no timing)"
    )
    ap.add_argument("--epochs", type=int, default=20, help="student epochs")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    args = ap.parse_args()
    quiet = UI(quiet=True)
    torch.set_num_threads(args.threads)
    m = machine()

    def acc(net: Any, x: Any, y: Any) -> float:
        net.eval()
        with torch.no_grad():
            return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    def plain(student: Any, x: Any, y: Any, t_logits: Any, lr: float, seed: int,
              epochs: int = args.epochs, batch: int = 64, alpha: float = 0.7) -> None:  # fmt: skip
        """The reference loop (the teacher's logits precomputed: the same numbers)."""
        torch.manual_seed(seed)
        opt = torch.optim.Adam(student.parameters(), lr=lr)
        for _ in range(epochs):
            student.train()
            perm = torch.randperm(len(x))
            for i in range(0, len(x), batch):
                idx = perm[i : i + batch]
                loss = distillation_loss(student(x[idx]), t_logits[idx], y[idx],
                                         temperature=4.0, alpha=alpha)  # fmt: skip
                opt.zero_grad()
                loss.backward()
                opt.step()

    def ours(teacher: Any, student: Any, tr: Any, seed: int, unl: Any = None, **kw: Any) -> dict[str, Any]:  # fmt: skip
        cfg = DistillConfig(**{"epochs": args.epochs, "seed": seed, **kw})
        with tempfile.TemporaryDirectory() as tmp:
            return distill(teacher, student, tr, None, Path(tmp), cfg, unlabelled=unl, ui=quiet)

    results: list[dict[str, Any]] = []
    params: dict[str, int] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        data = load_digits(seed)
        torch.manual_seed(seed)
        teacher = train(digits_cnn(TEACHER), data, args.teacher_epochs, seed, quiet).eval()
        params["teacher"] = sum(p.numel() for p in teacher.parameters())
        r: dict[str, Any] = {"seed": seed, "teacher": acc(teacher, data.x_test, data.y_test)}
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        with torch.no_grad():
            t_logits = teacher(x)
        tr = _dataset(data.x_train, data.y_train)
        for w in SHAPES:
            key = f"w{w}"
            params[key] = sum(p.numel() for p in digits_cnn(w).parameters())
            row: dict[str, Any] = {}
            for lr in PLAIN_LRS:
                torch.manual_seed(seed + 1)
                s = digits_cnn(w)
                plain(s, x, y, t_logits, lr, seed)
                row[f"plain {lr:g}"] = acc(s, data.x_test, data.y_test)
            for name, alpha in (("quantship", 0.7), ("labels only", 0.0)):
                torch.manual_seed(seed + 1)
                s = digits_cnn(w)
                met = ours(teacher, s, tr, seed, alpha=alpha)
                row[name] = acc(s, data.x_test, data.y_test)
                row[f"{name} lr"] = met["lr"]
                if name == "quantship" and w == SHAPES[0]:
                    smallest = s
            r[key] = row
            print(f"seed {seed} w{w}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()),
                  flush=True)  # fmt: skip
        # scarce labels
        order = np.random.default_rng(1000 + seed).permutation(len(data.y_train))
        k = round(LABEL_SHARE * len(order))
        lab, unl = order[:k], order[k:]
        labelled = _dataset(data.x_train[lab], data.y_train[lab])
        unlabelled = _dataset(data.x_train[unl], np.full(len(unl), UNLABELLED, np.int64))
        w = SHAPES[0]
        sc: dict[str, Any] = {"labelled": int(k), "unlabelled": len(unl)}
        torch.manual_seed(seed + 1)
        s = digits_cnn(w)
        ours(teacher, s, labelled, seed, unl=unlabelled)
        sc["distilled"] = acc(s, data.x_test, data.y_test)
        for name, epochs in (("labels only, same epochs", args.epochs),
                             ("labels only, same steps", round(args.epochs / LABEL_SHARE))):  # fmt: skip
            torch.manual_seed(seed + 1)
            s = digits_cnn(w)
            ours(teacher, s, labelled, seed, alpha=0.0, epochs=epochs)
            sc[name] = acc(s, data.x_test, data.y_test)
        xl, yl = torch.from_numpy(data.x_train[lab]), torch.from_numpy(data.y_train[lab])
        for lr in PLAIN_LRS:  # a plain loop on the labels alone, every labelled sample trained on
            torch.manual_seed(seed + 1)
            s = digits_cnn(w)
            plain(s, xl, yl, torch.zeros(len(yl), 10), lr, seed,
                  epochs=round(args.epochs / LABEL_SHARE), batch=32, alpha=0.0)  # fmt: skip
            sc[f"labels only, plain {lr:g}"] = acc(s, data.x_test, data.y_test)
        # The baseline: the best labels-only run of this seed (chosen on the test digits,
        # which flatters the baseline, not distillation).
        sc["labels only"] = max(v for k, v in sc.items() if k.startswith("labels only,"))
        r["scarce"] = sc
        print(f"seed {seed} scarce: {sc}", flush=True)
        # the smallest distilled student in INT8
        d = WORK / "distill" / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        from quantship.exporter.torch_export import export_module

        (d / "student.onnx").write_bytes(
            export_module(smallest.eval(), {"input": (1, 1, 32, 32)}).SerializeToString()
        )
        np.savez(d / "calib.npz", input=data.x_train[:256])
        np.savez(d / "test.npz", input=data.x_test)
        backends = [
            n for n in registry.names() if n != "tensorrt" and registry.get(n).available() is None
        ]
        res = api.export(d / "student.onnx", d / "calib.npz", d / "build", backends=",".join(backends),
                         held_out=d / "test.npz", bench=False, ui=quiet)  # fmt: skip
        r["int8"] = {
            a.backend: accuracy(
                registry.get(a.backend).session(a, SessionSettings()).run, data.x_test, data.y_test
            )
            for a in res.artifacts
        }
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(r)
        _write(results, params, args, m)
    return 0


def _write(results: list[dict[str, Any]], params: dict[str, int], args: Any, m: dict[str, Any]) -> None:  # fmt: skip
    import numpy as np

    def ms(vals: list[float]) -> str:
        a = 100 * np.asarray(vals)
        return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.2f}"

    seeds = [r["seed"] for r in results]
    teacher = [r["teacher"] for r in results]
    summary: dict[str, Any] = {"teacher": float(np.mean(teacher))}
    rows = []
    runs = [f"plain {lr:g}" for lr in PLAIN_LRS] + ["quantship", "labels only"]
    for w in SHAPES:
        key = f"w{w}"
        per = {run: [r[key][run] for r in results] for run in runs}
        means = {run: float(np.mean(v)) for run, v in per.items()}
        best_plain = max(means[f"plain {lr:g}"] for lr in PLAIN_LRS)
        summary[key] = {"mean": means, "best_plain": best_plain,
                        "gap_to_teacher": summary["teacher"] - means["quantship"]}  # fmt: skip
        rows.append(
            [f"digits_cnn({w}), {params[key]:,} (1/{params['teacher'] / params[key]:.0f})"]
            + [ms(per[run]) for run in runs]
            + [
                f"{100 * (means['quantship'] - best_plain):+.2f}",
                f"{100 * (summary['teacher'] - means['quantship']):.2f}",
            ]
        )
    plain_sc = [f"labels only, plain {lr:g}" for lr in PLAIN_LRS]
    sc_runs = ["distilled", "labels only, same epochs", "labels only, same steps", *plain_sc,
               "labels only"]  # fmt: skip
    sc = {run: [r["scarce"][run] for r in results] for run in sc_runs}
    margin = [r["scarce"]["distilled"] - r["scarce"]["labels only"] for r in results]
    summary["scarce"] = {"mean": {k: float(np.mean(v)) for k, v in sc.items()},
                         "margin_mean": float(np.mean(margin)),
                         "margin_std": float(np.std(margin, ddof=1)) if len(margin) > 1 else 0.0}  # fmt: skip
    plain_rows = [
        [f"labels only, plain loop, lr {lr:g}, batch 32, {round(args.epochs / LABEL_SHARE)} "
         "epochs, the last kept", ms(sc[f"labels only, plain {lr:g}"])]
        for lr in PLAIN_LRS
    ]  # fmt: skip
    backends = sorted(results[0]["int8"])
    seed_rows = [
        [str(r["seed"]), f"{100 * r['teacher']:.2f}"]
        + [f"{100 * r[f'w{w}']['quantship']:.2f}" for w in SHAPES]
        + [f"{100 * r['scarce']['distilled']:.2f} / {100 * r['scarce']['labels only']:.2f}"]
        + [f"{100 * r['int8'][b]:.2f}" for b in backends]
        for r in results
    ]
    md = (
        "# Distillation on the digits\n\n"
        f"Command: `python benchmarks/distill_digits.py --seeds {','.join(map(str, seeds))} "
        f"--epochs {args.epochs}`\n\n"
        f"Machine: {machine_line(m)}. Teacher digits_cnn({TEACHER}), {params['teacher']:,} "
        f"parameters, {args.teacher_epochs} epochs on labels: test accuracy {ms(teacher)} %. "
        f"Students {args.epochs} epochs, T = 4, α = 0.7. Test accuracy on the 360 held-out digits "
        f"(%), mean ± standard deviation over seeds {', '.join(map(str, seeds))} (each seed its "
        "own split, teacher and initial weights).\n\n"
        "## Students against a plain loop and against labels alone\n\n"
        + md_table(
            ["student (parameters, share of the teacher)"]
            + [f"plain loop, lr {lr:g}" for lr in PLAIN_LRS]
            + [
                "quantship distill",
                "quantship, labels only",
                "quantship − best plain",
                "teacher − quantship",
            ],
            rows,
        )
        + f"\n## Scarce labels (digits_cnn({SHAPES[0]}))\n\n"
        f"{int(100 * LABEL_SHARE)} % of the training digits labelled "
        f"({results[0]['scarce']['labelled']}), the rest "
        f"({results[0]['scarce']['unlabelled']}) given as inputs only.\n\n"
        + md_table(
            ["run", "accuracy"],
            [
                ["distilled (labels + teacher on unlabelled inputs)", ms(sc["distilled"])],
                [f"labels only, {args.epochs} epochs", ms(sc["labels only, same epochs"])],
                [
                    f"labels only, {round(args.epochs / LABEL_SHARE)} epochs (the same steps)",
                    ms(sc["labels only, same steps"]),
                ],
                *plain_rows,
                ["labels only, the best of these per seed (chosen on test)", ms(sc["labels only"])],
                ["margin, distilled − labels only", ms(margin)],
            ],
        )
        + "\n## Per seed\n\n"
        + md_table(
            ["seed", "teacher"]
            + [f"quantship w{w}" for w in SHAPES]
            + ["scarce: distilled / labels only"]
            + [f"w{SHAPES[0]} INT8 {b}" for b in backends],
            seed_rows,
        )
    )
    write_results("distill_digits", {"machine": m, "args": vars(args), "params": params,
                                     "results": results, "summary": summary}, md)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
