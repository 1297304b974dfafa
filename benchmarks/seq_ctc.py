"""A conv + attention sequence model with a CTC head, trained here on real data: lines
of handwritten digits (scikit-learn's digits, 8×8 each) read column by column, as a
speech or handwriting recogniser reads frames. The architecture is the common shape
of such models (a convolutional front end, pre-norm transformer blocks with explicit
attention, a per-frame classifier over 10 digits + the CTC blank); nothing can be
downloaded, so the weights are trained by this file (a minute or two on 2 cores).

    prepare(n_calib, n_held) -> {"model", "calib", "held"}   (held.npz has "labels")

Task metrics: per-frame argmax agreement with the float model, and the share of lines
whose greedy CTC decoding is exactly the true digit string.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FRAMES, FEATURES, CLASSES, BLANK = 48, 8, 11, 10
MAX_DIGITS = 5


def model_module() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, d = x.shape
            h = self.heads
            q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(n, t, d))
            out: torch.Tensor = x + self.ff(self.ln2(x))
            return out

    class SeqCTC(nn.Module):
        def __init__(self, d: int = 96, heads: int = 4, layers: int = 3) -> None:
            super().__init__()
            self.front = nn.Sequential(
                nn.Conv1d(FEATURES, d, 5, padding=2), nn.GELU(),
                nn.Conv1d(d, d, 3, padding=1), nn.GELU(),
            )  # fmt: skip
            self.blocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])
            self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, frames, features)
            h = self.front(x.transpose(1, 2)).transpose(1, 2)
            for b in self.blocks:
                h = b(h)
            logits: torch.Tensor = self.head(self.norm(h))  # (N, frames, classes)
            return logits

    return SeqCTC()


def lines(
    images: npt.NDArray[Any], labels: npt.NDArray[Any], n: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``n`` lines of 3–5 digits with 1–2 blank columns between them, as (frames,
    features), and their digit strings padded with -1."""
    x = np.zeros((n, FRAMES, FEATURES), np.float32)
    y = np.full((n, MAX_DIGITS), -1, np.int64)
    for i in range(n):
        k = int(rng.integers(3, MAX_DIGITS + 1))
        pos = int(rng.integers(0, 3))
        for j, idx in enumerate(rng.integers(len(images), size=k)):
            cols = images[idx].T / 16.0  # 8 columns of 8 pixels
            if pos + 8 > FRAMES:
                break
            x[i, pos : pos + 8] = cols
            y[i, j] = labels[idx]
            pos += 8 + int(rng.integers(1, 3))
    x += rng.normal(0, 0.03, x.shape).astype(np.float32)
    return x, y


def greedy(logits: npt.NDArray[Any]) -> list[list[int]]:
    out = []
    for seq in np.argmax(logits, axis=-1):
        s, prev = [], -1
        for c in seq:
            if c != prev and c != BLANK:
                s.append(int(c))
            prev = int(c)
        out.append(s)
    return out


def exact(logits: npt.NDArray[Any], y: npt.NDArray[Any]) -> float:
    want = [[int(c) for c in row if c >= 0] for row in y]
    return float(np.mean([a == b for a, b in zip(greedy(logits), want, strict=True)]))


def train(steps: int = 1500, seed: int = 0, log: Any = print) -> tuple[Any, float]:
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.images))
    tr = order[: int(0.8 * len(order))]
    net = model_module()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    ctc = torch.nn.CTCLoss(blank=BLANK, zero_infinity=True)
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = lines(d.images[tr], d.target[tr], 64, rng)
        lengths = torch.tensor((y >= 0).sum(axis=1))
        targets = torch.tensor(y[y >= 0])
        logp = net(torch.from_numpy(x)).log_softmax(-1).transpose(0, 1)
        loss = ctc(logp, targets, torch.full((64,), FRAMES), lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            log(f"[seqctc] step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return net, time.perf_counter() - t0


def prepare(work: Path, n_calib: int, n_held: int) -> dict[str, Path]:
    import torch
    from sklearn.datasets import load_digits

    d = work / f"seqctc-{n_calib}-{n_held}"
    paths = {"model": d / "float.onnx", "calib": d / "calib.npz", "held": d / "held.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    net, seconds = train()
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    tr, te = order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]
    xc, _ = lines(digits.images[tr], digits.target[tr], n_calib, np.random.default_rng(2))
    xh, yh = lines(digits.images[te], digits.target[te], n_held, np.random.default_rng(3))
    with torch.no_grad():
        acc = exact(net(torch.from_numpy(xh)).numpy(), yh)
    print(f"[seqctc] trained in {seconds:.0f} s; held-out lines read exactly: {acc:.3f}")
    torch.onnx.export(
        net, (torch.from_numpy(xh[:1]),), str(paths["model"]), input_names=["frames"],
        output_names=["logits"], dynamic_axes={"frames": {0: "N"}, "logits": {0: "N"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    np.savez(paths["calib"], frames=xc)
    np.savez(paths["held"], frames=xh, labels=yh)
    return paths
