"""Why ``quantship distill`` trailed a plain training loop, measured: the same teacher,
student, data and loss (KL·T² + CE, T = 4, α = 0.7, batch 64, 20 epochs), over seeds.

- plain loop: Adam at a constant rate, reshuffled each epoch, the last epoch kept;
- quantship before (the loop as it was: cosine schedule, a fixed rate, last epoch);
- quantship now at its defaults: ``--lr auto`` (a short sweep on a held-out 10 % of
  the training data), cosine schedule, the best epoch on that 10 % exported.

Accuracy on the 360 test digits, which no run sees while training or choosing.

    python benchmarks/distill_recipe.py [--seeds 0,1,2] [--width 4]

Results: benchmarks/results/distill_recipe.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, machine_line, md_table, write_results


def _old_loop() -> Any:
    """The distillation loop as it was before the recipe work (commit a712ab7's
    parent), loaded from git: the baseline this benchmark explains."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", "c1a7f3d:quantship/distill/train.py"], cwd=root,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "train_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("train_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    import numpy as np
    import torch

    from quantship.demo import _dataset, digits_cnn, load_digits, train
    from quantship.distill.loss import distillation_loss
    from quantship.distill.train import DistillConfig, distill
    from quantship.ui import UI

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--width", type=int, default=4, help="student width (teacher: 32)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--grid",
        metavar="T,T:A,A",
        help="instead: quantship's defaults at each temperature T and alpha A (e.g. 2,4,8:0.5,0.9)",
    )
    args = ap.parse_args()
    if args.grid:
        return grid(args)
    quiet = UI(quiet=True)
    old = _old_loop()
    torch.set_num_threads(2)

    def acc(net: Any, x: Any, y: Any) -> float:
        net.eval()
        with torch.no_grad():
            return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())

    def plain(teacher: Any, student: Any, data: Any, lr: float, seed: int) -> float:
        torch.manual_seed(seed)
        opt = torch.optim.Adam(student.parameters(), lr=lr)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        for _ in range(args.epochs):
            student.train()
            perm = torch.randperm(len(x))
            for i in range(0, len(x), 64):
                idx = perm[i : i + 64]
                with torch.no_grad():
                    t = teacher(x[idx])
                loss = distillation_loss(student(x[idx]), t, y[idx], temperature=4.0, alpha=0.7)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return acc(student, data.x_test, data.y_test)

    runs: list[tuple[str, float | None]] = [
        ("plain loop, lr 1e-3", 1e-3), ("plain loop, lr 3e-3", 3e-3), ("plain loop, lr 1e-2", 1e-2),
        ("quantship before, lr 1e-3 (its default)", 1e-3), ("quantship before, lr 3e-3", 3e-3),
        ("quantship now, defaults (--lr auto)", None),
    ]  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name, _ in runs}
    chosen: list[float] = []
    teachers = []
    params: dict[str, int] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        data = load_digits(seed)
        torch.manual_seed(seed)
        teacher = train(digits_cnn(32), data, 8, seed, quiet).eval()
        teachers.append(acc(teacher, data.x_test, data.y_test))
        tr = _dataset(data.x_train, data.y_train)
        for name, lr in runs:
            torch.manual_seed(seed + 1)
            student = digits_cnn(args.width)
            params = {"teacher": sum(p.numel() for p in teacher.parameters()),
                      "student": sum(p.numel() for p in student.parameters())}  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                if name.startswith("plain"):
                    assert lr is not None
                    a = plain(teacher, student, data, lr, seed)
                elif name.startswith("quantship before"):
                    cfg = old.DistillConfig(epochs=args.epochs, lr=lr, batch_size=64, seed=seed)
                    old.distill(teacher, student, tr, None, Path(tmp), cfg, ui=quiet)
                    a = acc(student, data.x_test, data.y_test)
                else:
                    m = distill(teacher, student, tr, None, Path(tmp),
                                DistillConfig(epochs=args.epochs, batch_size=64, seed=seed),
                                ui=quiet)  # fmt: skip
                    chosen.append(m["lr"])
                    a = acc(student, data.x_test, data.y_test)
            results[name].append(a)
            print(f"seed {seed}: {name}: {100 * a:.2f}%", flush=True)
    rows = [[name, *(f"{100 * v:.2f}" for v in vals), f"{100 * np.mean(vals):.2f}",
             f"{100 * np.std(vals):.2f}"] for name, vals in results.items()]  # fmt: skip
    seeds = args.seeds.split(",")
    md = (
        "# Distillation recipe: quantship against a plain loop\n\n"
        f"Command: `python benchmarks/distill_recipe.py --seeds {args.seeds} --width {args.width}`\n\n"
        f"Machine: {machine_line(machine())}. Digits (scikit-learn), teacher digits_cnn(32) "
        f"({params['teacher']:,} parameters, 8 epochs, labels; test accuracy "
        f"{', '.join(f'{100 * t:.2f}%' for t in teachers)}), student digits_cnn({args.width}) "
        f"({params['student']:,} parameters, 1/{params['teacher'] / params['student']:.0f} of "
        f"it), {args.epochs} epochs, T = 4, α = 0.7, batch 64. Test accuracy (%), never seen "
        "in training or selection. `--lr auto` chose: "
        f"{', '.join(f'{c:g}' for c in chosen)}.\n\n"
        + md_table(["run", *(f"seed {s}" for s in seeds), "mean", "std"], rows)
    )
    write_results("distill_recipe", {"machine": machine(), "args": vars(args),
                                     "teachers": teachers, "params": params, "results": results,
                                     "lr_auto_chose": chosen}, md)  # fmt: skip
    return 0


def grid(args: Any) -> int:
    """Test accuracy of quantship's defaults (--lr auto, best epoch on a held-out 10 %)
    at each temperature and α, same teacher, student and seeds."""
    import numpy as np
    import torch

    from quantship.demo import _dataset, digits_cnn, load_digits, train
    from quantship.distill.train import DistillConfig, distill
    from quantship.ui import UI

    quiet = UI(quiet=True)
    torch.set_num_threads(2)
    ts_text, as_text = args.grid.split(":")
    temps = [float(t) for t in ts_text.split(",")]
    alphas = [float(a) for a in as_text.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    res: dict[str, list[float]] = {}
    for seed in seeds:
        data = load_digits(seed)
        torch.manual_seed(seed)
        teacher = train(digits_cnn(32), data, 8, seed, quiet).eval()
        tr = _dataset(data.x_train, data.y_train)
        for t in temps:
            for a in alphas:
                torch.manual_seed(seed + 1)
                student = digits_cnn(args.width)
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = DistillConfig(epochs=args.epochs, temperature=t, alpha=a, seed=seed)
                    distill(teacher, student, tr, None, Path(tmp), cfg, ui=quiet)
                student.eval()
                with torch.no_grad():
                    pred = student(torch.from_numpy(data.x_test)).argmax(1).numpy()
                acc = float((pred == data.y_test).mean())
                res.setdefault(f"T={t:g}, alpha={a:g}", []).append(acc)
                print(f"seed {seed}: T={t:g} alpha={a:g}: {100 * acc:.2f}%", flush=True)
    rows = [[k, *(f"{100 * v:.2f}" for v in vals), f"{100 * np.mean(vals):.2f}",
             f"{100 * np.std(vals):.2f}"] for k, vals in res.items()]  # fmt: skip
    md = (
        "# Distillation: temperature and alpha\n\n"
        f"Command: `python benchmarks/distill_recipe.py --grid {args.grid} --seeds {args.seeds} "
        f"--width {args.width}`\n\nMachine: {machine_line(machine())}. The recipe benchmark's "
        f"teacher and student (digits_cnn(32) and digits_cnn({args.width})), {args.epochs} "
        "epochs, quantship's defaults otherwise (--lr auto, the best epoch on a held-out 10 % "
        "of the training digits). Test accuracy (%).\n\n"
        + md_table(["setting", *(f"seed {s}" for s in seeds), "mean", "std"], rows)
    )
    write_results("distill_temperature", {"machine": machine(), "args": vars(args),
                                          "results": res}, md)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
