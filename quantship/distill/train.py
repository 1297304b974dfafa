"""Teacher → student distillation: a seeded, resumable training loop, data-parallel
under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

Reproducibility: the shuffling of epoch e depends only on (seed, e), and the global
torch RNG state is saved in every checkpoint, so a run resumed from a checkpoint ends
with the same weights as an uninterrupted one. Checkpoints, weights, the ONNX export
and metrics.json are written by rank 0 only, each atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantship.errors import DataError, ModelError, QuantshipError
from quantship.specs import is_callable_spec
from quantship.ui import SILENT, UI

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 20
    temperature: float = 4.0
    alpha: float = 0.7
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError("lr must be positive and batch size at least 1")


def load_dataset(spec: str | Path, role: str) -> Any:
    """An .npz with ``x`` (inputs, first axis samples) and ``y`` (integer labels), or
    ``package.module:function`` returning a ``torch.utils.data.Dataset``."""
    import torch
    from torch.utils.data import TensorDataset

    text = str(spec)
    path = Path(text)
    if path.suffix == ".npz":
        if not path.exists():
            raise DataError(f"{role} data '{path}' not found")
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(
                    f"{role} data '{path}' needs arrays 'x' (inputs) and 'y' (labels); it has {', '.join(z.files)}"
                )
            x, y = z["x"], z["y"]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{role} data '{path}': labels 'y' must be integers, got {y.dtype}")
        if len(x) != len(y):
            raise DataError(f"{role} data '{path}': {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{role} data '{path}' holds no samples")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise DataError(f"{role} data '{path}': inputs contain NaN or Inf")
        return TensorDataset(
            torch.from_numpy(np.ascontiguousarray(x, np.float32)),
            torch.from_numpy(y.astype(np.int64)),
        )
    if is_callable_spec(text) and not path.exists():
        from quantship.specs import resolve

        try:
            _, name, fn = resolve(text)
            if fn is None:
                raise AttributeError(f"no attribute {name!r}")
            obj = fn()
        except Exception as e:
            raise DataError(f"{role} data '{text}': {type(e).__name__}: {e}") from None
        return obj
    raise DataError(
        f"{role} data '{text}' not found (an .npz with x and y, or package.module:function)"
    )


def _dist() -> tuple[int, int, Any]:
    """(rank, world size, device) under torchrun, else (0, 1, cpu)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    )
    return rank, world, device


def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, str(tmp))
    tmp.replace(path)


def _accuracy(net: Any, data: Any, device: Any, batch: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    net.eval()
    hit = n = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch):
            pred = net(x.to(device)).argmax(1).cpu()
            hit += int((pred == y).sum())
            n += len(y)
    return hit / max(n, 1)


def distill(
    teacher: Any,
    student: Any,
    train: Any,
    val: Any | None,
    out: Path,
    config: DistillConfig,
    *,
    resume: bool = False,
    ui: UI = SILENT,
) -> dict[str, Any]:
    """Train ``student`` to match ``teacher`` (and the labels, by ``config.alpha``)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    from quantship.distill.loss import distillation_loss

    rank, world, device = _dist()
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = student.to(device)

    x0, _ = train[0]
    with torch.no_grad():
        t_out, s_out = teacher(x0[None].to(device)), student.eval()(x0[None].to(device))
    if t_out.shape != s_out.shape:
        raise ModelError(
            f"teacher and student outputs differ in shape: {tuple(t_out.shape)} vs {tuple(s_out.shape)}"
        )
    classes = t_out.shape[1]
    labels = torch.as_tensor([int(train[i][1]) for i in range(len(train))])
    if config.alpha < 1.0 and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"labels must be in [0, {classes - 1}] for {classes} outputs; found {int(labels.min())}..{int(labels.max())}"
        )

    model = DistributedDataParallel(student) if world > 1 else student
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs)
    history: list[dict[str, Any]] = []
    start = 0
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    if resume:
        if not ckpt_path.exists():
            raise QuantshipError(f"--resume: no {CHECKPOINT} in '{out}'")
        ck = torch.load(str(ckpt_path), map_location=device, weights_only=False)
        if ck["config"] != asdict(config):
            raise QuantshipError(
                f"--resume: '{ckpt_path}' was made with other settings: {ck['config']}"
            )
        student.load_state_dict(ck["student"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        history, start = ck["history"], ck["epoch"] + 1
        ui.note(f"resuming after epoch {start} of {config.epochs}")
    teacher_acc = _accuracy(teacher, val, device, config.batch_size) if val is not None else None
    sampler: Any = DistributedSampler(
        train, num_replicas=world, rank=rank, shuffle=True, seed=config.seed
    )
    loader = DataLoader(train, batch_size=config.batch_size, sampler=sampler)
    for epoch in range(start, config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        t0 = time.perf_counter()
        with ui.progress(f"epoch {epoch + 1}/{config.epochs}", len(loader)) as advance:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = distillation_loss(
                    model(x),
                    t_logits,
                    y if config.alpha < 1 else None,
                    temperature=config.temperature,
                    alpha=config.alpha,
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
                advance(1)
        sched.step()
        acc = _accuracy(student, val, device, config.batch_size) if val is not None else None
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / max(count, 1),
                "val_accuracy": acc,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        ui.note(
            f"epoch {epoch + 1}: loss {total / max(count, 1):.4f}"
            + (f", student val accuracy {100 * acc:.2f}%" if acc is not None else "")
        )
        if rank == 0:
            _save_atomic(
                {
                    "epoch": epoch,
                    "student": student.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": history,
                    "config": asdict(config),
                },
                ckpt_path,
            )
    metrics = {
        "config": asdict(config),
        "world_size": world,
        "teacher_val_accuracy": teacher_acc,
        "epochs": history,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
    }
    if rank == 0:
        _save_atomic(student.state_dict(), out / "student.pt")
        from quantship.exporter.torch_export import export_module

        shape = (1, *tuple(x0.shape))
        proto = export_module(student.cpu().eval(), {"input": shape})
        tmp = out / ".student.onnx.tmp"
        tmp.write_bytes(proto.SerializeToString())
        tmp.replace(out / "student.onnx")
        text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
        (out / ".metrics.json.tmp").write_text(text)
        (out / ".metrics.json.tmp").replace(out / "metrics.json")
    return metrics
