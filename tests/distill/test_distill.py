"""Distillation: the loss against a hand computation, learning from the teacher,
resume equal to an uninterrupted run, two-process torchrun, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")

from quantship import api  # noqa: E402
from quantship.distill.loss import distillation_loss  # noqa: E402

NETS = """
import torch
from torch import nn

def teacher():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))

def student():
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

def wide_student():
    return nn.Linear(16, 5)
"""


def test_loss_matches_a_hand_computation() -> None:
    s = np.asarray([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
    t = np.asarray([[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]])
    y = np.asarray([1, 2])
    temp, alpha = 2.0, 0.25

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        out: np.ndarray = e / e.sum(1, keepdims=True)
        return out

    pt, ps = softmax(t / temp), softmax(s / temp)
    kl = float(np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=1)))
    ce = float(np.mean(-np.log(softmax(s)[np.arange(2), y])))
    expected = alpha * temp * temp * kl + (1 - alpha) * ce
    got = distillation_loss(
        torch.tensor(s), torch.tensor(t), torch.tensor(y), temperature=temp, alpha=alpha
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)
    only_teacher = distillation_loss(
        torch.tensor(s), torch.tensor(t), None, temperature=temp, alpha=1.0
    )
    assert float(only_teacher) == pytest.approx(temp * temp * kl, rel=1e-6)
    assert math.isfinite(expected)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "qs_distill_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(code))
    sys.modules.pop("qs_distill_nets", None)
    import importlib

    teacher = importlib.import_module("qs_distill_nets").teacher().eval()
    rng = np.random.default_rng(0)
    for name, n in (("train", 512), ("val", 128)):
        x = rng.standard_normal((n, 16)).astype(np.float32)
        with torch.no_grad():
            y = teacher(torch.from_numpy(x)).argmax(1).numpy()
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
    return tmp_path


def _agreement(student_pt: Path, work: Path) -> float:
    import importlib

    nets = importlib.import_module("qs_distill_nets")
    s = nets.student()
    s.load_state_dict(torch.load(str(student_pt), weights_only=True))
    v = np.load(work / "val.npz")
    with torch.no_grad():
        t = nets.teacher()(torch.from_numpy(v["x"])).argmax(1)
        p = s(torch.from_numpy(v["x"])).argmax(1)
    return float((t == p).float().mean())


def test_two_epochs_improve_agreement_with_the_teacher(work: Path) -> None:
    import importlib

    nets = importlib.import_module("qs_distill_nets")
    torch.save(nets.student().state_dict(), work / "init.pt")
    before = _agreement(work / "init.pt", work)
    m = api.distill(
        "qs_distill_nets:teacher",
        "qs_distill_nets:student",
        work / "train.npz",
        work / "out",
        val=work / "val.npz",
        epochs=2,
        alpha=1.0,
        lr=1e-2,
        batch_size=32,
    )
    after = _agreement(work / "out/student.pt", work)
    assert after > before + 0.2, (before, after)
    assert len(m["epochs"]) == 2 and m["epochs"][1]["loss"] < m["epochs"][0]["loss"]
    saved = json.loads((work / "out/metrics.json").read_text())
    assert saved["config"]["seed"] == 0 and saved["teacher_val_accuracy"] == 1.0
    assert (work / "out/student.onnx").stat().st_size > 0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("qs_distill_nets:teacher", "qs_distill_nets:student", work / "train.npz")
    api.distill(*args, work / "full", epochs=3, batch_size=32)
    from quantship.distill import train as tr

    real = tr._save_atomic
    calls = {"n": 0}

    def interrupt_after_first_epoch(obj: object, path: Path) -> None:
        real(obj, path)
        calls["n"] += 1
        if path.name == tr.CHECKPOINT and calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(tr, "_save_atomic", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        api.distill(*args, work / "part", epochs=3, batch_size=32)
    monkeypatch.setattr(tr, "_save_atomic", real)
    api.distill(*args, work / "part", epochs=3, batch_size=32, resume=True)
    a = torch.load(str(work / "full/student.pt"), weights_only=True)
    b = torch.load(str(work / "part/student.pt"), weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantship", "distill", *args],
        capture_output=True,
        text=True,
        cwd=work / "code",
        timeout=300,
    )


@pytest.mark.parametrize(
    ("student", "data", "fragment"),
    [
        ("qs_distill_nets:wide_student", "train.npz", "outputs differ in shape: (1, 4) vs (1, 5)"),
        ("qs_distill_nets:student", "badlabels.npz", "labels must be in [0, 3]"),
        ("no_such_module:student", "train.npz", "cannot import 'no_such_module'"),
        ("qs_distill_nets:student", "nolabels.npz", "needs arrays 'x' (inputs) and 'y' (labels)"),
    ],
)
def test_bad_input_is_one_line(work: Path, student: str, data: str, fragment: str) -> None:
    np.savez(work / "badlabels.npz", x=np.zeros((8, 16), np.float32), y=np.full(8, 7))
    np.savez(work / "nolabels.npz", x=np.zeros((8, 16), np.float32))
    p = _cli(
        work,
        "--teacher",
        "qs_distill_nets:teacher",
        "--student",
        student,
        "--train",
        str(work / data),
        "--epochs",
        "1",
        "--out",
        str(work / "o"),
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert fragment in p.stderr


def test_two_process_torchrun(work: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29617",
        "-m",
        "quantship",
        "distill",
        "--teacher",
        "qs_distill_nets:teacher",
        "--student",
        "qs_distill_nets:student",
        "--train",
        str(work / "train.npz"),
        "--val",
        str(work / "val.npz"),
        "--epochs",
        "2",
        "--alpha",
        "1",
        "--batch",
        "32",
        "--qat",
        "--qat-epochs",
        "1",
        "--qat-lr",
        "1e-3",
        "--out",
        str(work / "ddp"),
        "-q",
    ]
    env = {**__import__("os").environ, "PYTHONPATH": str(work / "code"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=work / "code", env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((work / "ddp/metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["epochs"]) == 2
    assert len(m["lr_sweep"]) == 4 and m["lr"] in [r["lr"] for r in m["lr_sweep"]]  # --lr auto
    assert _agreement(work / "ddp/student.pt", work) > 0.6
    # --qat under torchrun: every rank trains the INT8 model, rank 0 writes it.
    assert len(m["qat"]["epochs"]) == 1 and (work / "ddp/student.int8.onnx").stat().st_size > 0


def test_pipeline_config_distills_then_exports(work: Path) -> None:
    np.savez(work / "calib.npz", input=np.load(work / "train.npz")["x"][:64])
    (work / "pipeline.toml").write_text(
        '[distill]\nteacher = "qs_distill_nets:teacher"\nstudent = "qs_distill_nets:student"\n'
        'train = "train.npz"\nval = "val.npz"\nepochs = 2\nalpha = 1.0\nlr = 0.01\nbatch = 32\nout = "student"\n\n'
        '[export]\ncalib = "calib.npz"\nout = "build"\nbench = false\n'
    )
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantship",
            "export",
            "--config",
            str(work / "pipeline.toml"),
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=work / "code",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    m = json.loads((work / "build/manifest.json").read_text())
    assert m["input_model"]["source"].endswith("student/student.onnx")
    assert (work / "student/metrics.json").exists()


def test_pipeline_config_typo_names_the_known_keys(work: Path) -> None:
    (work / "bad.toml").write_text('[export]\nmodel = "m.onnx"\nout = "build"\nsampels = 3\n')
    p = subprocess.run(
        [sys.executable, "-m", "quantship", "export", "--config", str(work / "bad.toml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        p.returncode == 2
        and "unknown key 'sampels' in [export]; did you mean 'samples'" in p.stderr
    )


def test_distill_without_torch_names_the_extra(work: Path) -> None:
    code = (
        "import sys, importlib.abc\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] == 'torch': raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        "from quantship.cli import main\n"
        "raise SystemExit(main(['distill', '--teacher', 'a:b', '--student', 'a:c', '--data', 'x.npz', '--out', 'o']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "quantship[torch]" in p.stderr and "Traceback" not in p.stderr


def test_the_best_epoch_on_validation_is_exported(work: Path) -> None:
    """student.pt holds the epoch with the best validation accuracy, not the last one;
    metrics say which and its accuracy, recomputed here from the saved weights."""
    m = api.distill("qs_distill_nets:teacher", "qs_distill_nets:student", work / "train.npz",
                    work / "out", val=work / "val.npz", epochs=6, lr=0.05, batch_size=32)  # fmt: skip
    accs = [e["val_accuracy"] for e in m["epochs"]]
    assert m["exported_epoch"] == 1 + accs.index(max(accs))
    assert m["val_accuracy"] == max(accs) and m["validation"] == "--val"
    assert _agreement(work / "out/student.pt", work) == pytest.approx(max(accs))


def test_lr_auto_sweeps_and_patience_stops(work: Path) -> None:
    from quantship.distill.train import LR_CANDIDATES

    m = api.distill("qs_distill_nets:teacher", "qs_distill_nets:student", work / "train.npz",
                    work / "auto", epochs=8, lr="auto", batch_size=32)  # fmt: skip
    sweep = m["lr_sweep"]
    assert [r["lr"] for r in sweep] == list(LR_CANDIDATES) and m["lr"] in LR_CANDIDATES
    best = min(sweep, key=lambda r: (r["val_loss"], -r["val_accuracy"]))
    assert m["lr"] == best["lr"] and all(r["epochs"] == 2 for r in sweep)
    assert "of the training data, held out" in m["validation"]  # no --val: 10 % held out
    # A rate too small to change anything: no epoch improves on the first; two more
    # epochs without progress stop the run.
    m = api.distill("qs_distill_nets:teacher", "qs_distill_nets:student", work / "train.npz",
                    work / "stuck", val=work / "val.npz", epochs=10, lr=1e-12, patience=2,
                    batch_size=32)  # fmt: skip
    assert m["stopped_early"] and len(m["epochs"]) == 3 and m["exported_epoch"] == 1


def test_unlabelled_samples_add_only_to_the_teacher_term() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([1, -1, 3, -1, 0, 2])
    known = y >= 0
    got = distillation_loss(s, t, y, temperature=3.0, alpha=0.4)
    kl = distillation_loss(s, t, None, temperature=3.0, alpha=1.0)
    ce = torch.nn.functional.cross_entropy(s[known], y[known])
    assert float(got) == pytest.approx(float(0.4 * kl + 0.6 * ce), rel=1e-6)
    none = distillation_loss(s, t, torch.full((6,), -1), temperature=3.0, alpha=0.4)
    assert float(none) == pytest.approx(float(0.4 * kl), rel=1e-6)


def test_unlabelled_inputs_taught_by_the_teacher_help(work: Path) -> None:
    """32 labelled samples alone against the same 32 plus 480 inputs without labels
    (--unlabelled): the teacher's teaching on the latter brings the student closer."""
    z = np.load(work / "train.npz")
    np.savez(work / "few.npz", x=z["x"][:32], y=z["y"][:32])
    np.savez(work / "inputs.npz", x=z["x"][32:])
    kw = {"val": work / "val.npz", "epochs": 4, "lr": 1e-2, "batch_size": 32}
    api.distill("qs_distill_nets:teacher", "qs_distill_nets:student", work / "few.npz",
                work / "few", **kw)  # type: ignore[arg-type]  # fmt: skip
    p = _cli(work, "--teacher", "qs_distill_nets:teacher", "--student", "qs_distill_nets:student",
             "--train", str(work / "few.npz"), "--unlabelled", str(work / "inputs.npz"),
             "--val", str(work / "val.npz"), "--epochs", "4", "--lr", "1e-2",
             "--batch", "32", "--out", str(work / "more"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    m = json.loads((work / "more/metrics.json").read_text())
    assert m["samples"] == {"labelled": 32, "unlabelled": 480}
    few, more = (
        _agreement(work / "few/student.pt", work),
        _agreement(work / "more/student.pt", work),
    )
    assert more > few + 0.05, (few, more)
    # with no label at all, only the teacher can teach: alpha < 1 is refused
    p = _cli(work, "--teacher", "qs_distill_nets:teacher", "--student", "qs_distill_nets:student",
             "--train", str(work / "few.npz"), "--unlabelled", str(work / "inputs.npz"),
             "--epochs", "1", "--alpha", "0.5", "--out", str(work / "o"))  # fmt: skip
    assert p.returncode == 0, p.stderr  # the 32 labels are enough
    np.savez(work / "none.npz", x=z["x"][:8], y=np.full(8, -1))
    p = _cli(work, "--teacher", "qs_distill_nets:teacher", "--student", "qs_distill_nets:student",
             "--train", str(work / "none.npz"), "--epochs", "1", "--out", str(work / "o2"))  # fmt: skip
    assert p.returncode == 2 and "no sample is labelled" in p.stderr and "Traceback" not in p.stderr


def test_cached_teacher_logits_train_as_the_teacher_would(work: Path) -> None:
    """Data held in memory gets the teacher's logits once; data a Dataset computes
    runs the teacher on every batch. Both give the same student."""
    import importlib

    from torch.utils.data import Dataset

    from quantship.distill.data import load_dataset
    from quantship.distill.train import DistillConfig, distill

    nets = importlib.import_module("qs_distill_nets")
    mem = load_dataset(work / "train.npz", "training")

    class Computed(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(mem)

        def __getitem__(self, i: int) -> object:
            return mem[i]

    cfg = DistillConfig(epochs=2, lr=1e-2, batch_size=32)
    out = []
    for name, data in (("mem", mem), ("computed", Computed())):
        s = nets.student()
        distill(nets.teacher().eval(), s, data, None, work / name, cfg)
        out.append(torch.cat([p.detach().flatten() for p in s.parameters()]))
    assert torch.allclose(out[0], out[1], atol=1e-4)


def test_old_flag_names_work_for_a_release_and_say_so(work: Path) -> None:
    p = _cli(work, "--teacher", "qs_distill_nets:teacher", "--student", "qs_distill_nets:student",
             "--data", str(work / "train.npz"), "--batch-size", "32", "--epochs", "1",
             "--lr", "1e-3", "--out", str(work / "old"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "--data is deprecated and goes in the next release: use --train" in p.stderr
    assert "--batch-size is deprecated and goes in the next release: use --batch" in p.stderr
    m = json.loads((work / "old/metrics.json").read_text())
    assert m["config"]["batch_size"] == 32
    p = _cli(work, "--teacher", "qs_distill_nets:teacher", "--student", "qs_distill_nets:student",
             "--out", str(work / "none"))  # fmt: skip
    assert p.returncode == 2 and "distill needs its training data: --train DATA" in p.stderr
