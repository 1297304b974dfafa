"""A text-line recogniser in the shape of the published lightweight OCR models (PaddleOCR's
PP-OCRv3 recogniser, "SVTR-LCNet", as paddle2onnx exports it), trained here on real data:
lines of handwritten digits (scikit-learn's digits, each 8×8 image upscaled to 32×32)
rendered as 3-channel images 32 px high, read by a CTC head.

Architecture, after PP-OCRv3's recogniser at a smaller width (its topology, none of its
code or weights; nothing can be downloaded):
- backbone in the style of MobileNetV1-Enhance (LCNet): a 3×3 stride-2 stem, then
  depthwise-separable blocks with BatchNorm and HardSwish, strides (2, 1) that halve the
  height and keep the width (the reading direction), 5×5 depthwise kernels and
  squeeze-and-excitation (HardSigmoid gate) in the last blocks, an average pool to one
  row: (N, C, 1, W/4);
- the SVTR neck: a 3×3 and a 1×1 convolution down to the mixer's width (Swish), two
  pre-norm transformer blocks over the W/4 frames (global multi-head attention, Swish
  MLP), a LayerNorm, a 1×1 convolution back, concatenation with the neck's input and two
  more convolutions;
- a per-frame linear classifier over 10 digits + the CTC blank.

Published models of this family are known to lose accuracy in INT8 post-training
quantization (e.g. OpenPPL/ppq issue #419: PP-OCRv3's English recogniser from 67.4 % to
40.6 % line accuracy). The model is trained with AdamW and weight decay, as such models are.

    prepare(work, n_calib, n_held) -> {"model", "calib", "held"}   (held.npz has "labels")

Task metrics: per-frame argmax agreement with the float model, and the share of lines
whose greedy CTC decoding is exactly the true digit string.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from seq_ctc import BLANK, exact  # the same CTC decoding and line metric

HEIGHT, WIDTH, CLASSES = 32, 192, 11  # 10 digits and the CTC blank, BLANK (10)
FRAMES = WIDTH // 4
MAX_DIGITS = 6
DIGIT = 32  # an 8×8 digit upscaled to this many pixels


def model_module() -> Any:
    import torch
    from torch import nn

    def cbh(cin: int, cout: int, k: int, stride: Any = 1, groups: int = 1,
            act: type[nn.Module] = nn.Hardswish) -> nn.Sequential:  # fmt: skip
        pad = k // 2
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            act(),
        )

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))
            return x * g

    class DepthSep(nn.Module):
        def __init__(self, cin: int, cout: int, stride: Any, k: int = 3, se: bool = False):
            super().__init__()
            self.dw = cbh(cin, cin, k, stride, groups=cin)
            self.se = SE(cin) if se else nn.Identity()
            self.pw = cbh(cin, cout, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.pw(self.se(self.dw(x)))
            return out

    class Block(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n, t, d = x.shape
            h = self.heads
            q, k, v = self.qkv(self.ln1(x)).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = torch.softmax((q * (d // h) ** -0.5) @ k.transpose(-1, -2), dim=-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(n, t, d))
            out: torch.Tensor = x + self.mlp(self.ln2(x))
            return out

    class OcrCTC(nn.Module):
        def __init__(self, c: int = 256, d: int = 120, heads: int = 8) -> None:
            super().__init__()
            cfg: list[tuple[int, int, Any, int, bool]] = [
                (16, 32, 1, 3, False), (32, 64, (2, 1), 3, False), (64, 64, 1, 3, False),
                (64, 128, (2, 1), 3, False), (128, 128, 1, 3, False),
                (128, 256, (2, 1), 3, False), (256, 256, 1, 5, False), (256, 256, 1, 5, False),
                (256, 256, 1, 5, True), (256, c, 1, 5, True),
            ]  # fmt: skip
            self.stem = cbh(3, 16, 3, 2)
            self.backbone = nn.Sequential(*[DepthSep(*x) for x in cfg])
            self.pool = nn.AvgPool2d(2, 2)
            # the SVTR neck
            self.conv1 = cbh(c, c // 8, 3, act=nn.SiLU)
            self.conv2 = cbh(c // 8, d, 1, act=nn.SiLU)
            self.blocks = nn.ModuleList([Block(d, heads) for _ in range(2)])
            self.norm = nn.LayerNorm(d, eps=1e-6)
            self.conv3 = cbh(d, c, 1, act=nn.SiLU)
            self.conv4 = cbh(2 * c, c // 8, 3, act=nn.SiLU)
            self.conv5 = cbh(c // 8, 64, 1, act=nn.SiLU)
            self.head = nn.Linear(64, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 32, W)
            f = self.pool(self.backbone(self.stem(x)))  # (N, c, 1, W/4)
            z = self.conv2(self.conv1(f))
            n, d, hh, w = z.shape
            s = z.flatten(2).transpose(1, 2)  # (N, W/4, d)
            for b in self.blocks:
                s = b(s)
            z = self.norm(s).transpose(1, 2).reshape(n, d, hh, w)
            z = self.conv5(self.conv4(torch.cat([f, self.conv3(z)], dim=1)))
            seq = z.squeeze(2).transpose(1, 2)  # (N, W/4, 64)
            logits: torch.Tensor = self.head(seq)  # (N, W/4, classes)
            return logits

    return OcrCTC()


def _digit_bank(images: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Each 8×8 digit (0–16) upscaled to DIGIT×DIGIT, ink in [0, 1], bilinear."""
    from scipy.ndimage import zoom

    return np.stack([np.clip(zoom(im / 16.0, DIGIT / 8, order=1), 0, 1) for im in images]).astype(
        np.float32
    )


def lines(
    bank: npt.NDArray[np.float32], labels: npt.NDArray[Any], n: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``n`` images (3, HEIGHT, WIDTH) of 3–6 digits at random scale, spacing and
    height, dark ink on a tinted, noisy background, normalised to [-1, 1] as PP-OCR's
    preprocessing does; and their digit strings padded with -1."""
    from scipy.ndimage import zoom

    x = np.empty((n, 3, HEIGHT, WIDTH), np.float32)
    y = np.full((n, MAX_DIGITS), -1, np.int64)
    for i in range(n):
        ink = np.zeros((HEIGHT, WIDTH), np.float32)
        k = int(rng.integers(3, MAX_DIGITS + 1))
        pos = int(rng.integers(0, 12))
        for j, idx in enumerate(rng.integers(len(bank), size=k)):
            s = int(rng.integers(22, DIGIT + 1))  # glyph size
            if pos + s > WIDTH:
                break
            g = np.clip(zoom(bank[idx], s / DIGIT, order=1), 0, 1)
            top = int(rng.integers(0, HEIGHT - g.shape[0] + 1))
            ink[top : top + g.shape[0], pos : pos + g.shape[1]] = np.maximum(
                ink[top : top + g.shape[0], pos : pos + g.shape[1]], g
            )
            y[i, j] = labels[idx]
            pos += g.shape[1] + int(rng.integers(0, 8))
        paper = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        colour = rng.uniform(0.0, 0.35, size=3).astype(np.float32)
        img = np.asarray(paper[:, None, None] * (1 - ink) + colour[:, None, None] * ink)
        img += rng.normal(0, 0.04, img.shape).astype(np.float32)
        x[i] = (np.clip(img, 0, 1) - 0.5) / 0.5
    return x, y


def _split() -> tuple[Any, npt.NDArray[np.float32], npt.NDArray[Any], npt.NDArray[Any]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.images))
    return d, _digit_bank(d.images), order[: int(0.8 * len(order))], order[int(0.8 * len(order)) :]


def train(steps: int = 3000, seed: int = 0, log: Any = print) -> tuple[Any, float]:
    import torch

    torch.manual_seed(seed)
    d, bank, tr, _ = _split()
    rng = np.random.default_rng(seed)
    net = model_module()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    ctc = torch.nn.CTCLoss(blank=BLANK, zero_infinity=True)
    t0 = time.perf_counter()
    net.train()
    batch = 32
    for step in range(steps):
        x, y = lines(bank[tr], d.target[tr], batch, rng)
        lengths = torch.tensor((y >= 0).sum(axis=1))
        targets = torch.tensor(y[y >= 0])
        logp = net(torch.from_numpy(x)).log_softmax(-1).transpose(0, 1)
        loss = ctc(logp, targets, torch.full((batch,), FRAMES), lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0:
            log(f"[ocrctc] step {step} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    net.eval()
    return net, time.perf_counter() - t0


def prepare(work: Path, n_calib: int, n_held: int) -> dict[str, Path]:
    import torch

    d = work / f"ocrctc-{n_calib}-{n_held}"
    paths = {"model": d / "float.onnx", "calib": d / "calib.npz", "held": d / "held.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    d.mkdir(parents=True, exist_ok=True)
    net, seconds = train(log=lambda m: print(m, flush=True))
    digits, bank, tr, te = _split()
    xc, _ = lines(bank[tr], digits.target[tr], n_calib, np.random.default_rng(2))
    xh, yh = lines(bank[te], digits.target[te], n_held, np.random.default_rng(3))
    with torch.no_grad():
        acc = exact(net(torch.from_numpy(xh)).numpy(), yh)
    print(f"[ocrctc] trained in {seconds:.0f} s; held-out lines read exactly: {acc:.3f}")
    torch.onnx.export(
        net, (torch.from_numpy(xh[:1]),), str(paths["model"]), input_names=["x"],
        output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    np.savez(paths["calib"], x=xc)
    np.savez(paths["held"], x=xh, labels=yh)
    return paths
