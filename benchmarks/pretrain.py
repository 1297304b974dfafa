"""Trained weights for the benchmark's CNNs, made here from real images: nothing can be
downloaded, and random weights make a poor stand-in for a model anyone deploys.

Why: a randomly initialised deep network with BatchNorm is chaotic (Yang et al., "A
Mean Field Theory of Batch Normalization", ICLR 2019: gradients explode with depth at
initialisation), so it amplifies any small perturbation. Measured by
model_conditioning.py on the random-weight MobileNetV2 with real-image BatchNorm
statistics: uniform noise of ±½ of an 8-bit step on the input alone leaves a cosine of
0.988 between its outputs (detector 0.996). No 8-bit scheme reaches a trained network's
fidelity on such a model, so the comparisons between tools would measure the model's
chaos. After the short training below, all three lose nothing measurable to that input
noise (cosine 1.00000).

The proxy tasks use scikit-image's 17 bundled sample images:
- classifiers: which source image a random crop (scale 0.2–1, mirrored) was cut from;
  the 1000-way head is kept, trained on labels 0–16;
- the detector: a 2×2 mosaic of crops from four different sources, each quadrant an
  "object": every output cell learns the quadrant's source (class channels) and the
  distances from the cell centre to the quadrant's sides (box channels, as YOLOv8's 4×16
  distribution bins with the two-bin target of its distribution focal loss).

Training runs at a small size (fully convolutional networks; the detector at 256), with
a fixed seed, and the BatchNorm statistics are then set at the benchmark's input size
from real images (``examples.calibrate_batchnorm``), as for the untrained models before.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from quantship import examples

STEPS = {"resnet18": 800, "mobilenetv2": 800, "detector640": 400}
TRAIN_SIZE = {"resnet18": 96, "mobilenetv2": 96, "detector640": 256}
BATCH = {"resnet18": 32, "mobilenetv2": 32, "detector640": 16}
LR = 2e-3


def _classify_batch(
    srcs: list[Any], n: int, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = rng.integers(len(srcs), size=n)
    x = np.stack([examples.random_crop(srcs[k], size, size, rng, (0.2, 1.0)) for k in labels])
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))


def _mosaic_batch(
    srcs: list[Any], n: int, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, per-pixel source labels, and per-pixel quadrant boxes (x0, y0, x1, y1)."""
    x = np.empty((n, 3, size, size), np.float32)
    label = np.empty((n, size, size), np.int64)
    box = np.empty((n, 4, size, size), np.float32)
    for i in range(n):
        cx, cy = (int(size * rng.uniform(0.3, 0.7)) for _ in range(2))
        ks = rng.choice(len(srcs), size=4, replace=False)
        rects = [(0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size)]
        for k, (x0, y0, x1, y1) in zip(ks, rects, strict=True):
            x[i, :, y0:y1, x0:x1] = examples.random_crop(srcs[k], y1 - y0, x1 - x0, rng, (0.2, 1.0))
            label[i, y0:y1, x0:x1] = k
            box[i, :, y0:y1, x0:x1] = np.asarray([x0, y0, x1, y1], np.float32)[:, None, None]
    return torch.from_numpy(x), torch.from_numpy(label), torch.from_numpy(box)


def _detector_loss(
    outs: tuple[torch.Tensor, ...], label: torch.Tensor, box: torch.Tensor, size: int
) -> torch.Tensor:
    total = torch.zeros(())
    for out in outs:
        stride = size // out.shape[-1]
        centre = torch.arange(out.shape[-1], dtype=torch.float32) * stride + stride / 2
        idx = (centre - 0.5).long()
        lab = label[:, idx][:, :, idx]
        b = box[:, :, idx][:, :, :, idx]
        cy, cx = centre[:, None], centre[None, :]
        ltrb = torch.stack([cx - b[:, 0], cy - b[:, 1], b[:, 2] - cx, b[:, 3] - cy], 1)
        t = (ltrb / stride).clamp(0, 14.99)
        lo = t.floor().long()
        logp = torch.log_softmax(out[:, :64].reshape(out.shape[0], 4, 16, *out.shape[2:]), 2)
        lo_p = logp.gather(2, lo.unsqueeze(2)).squeeze(2)
        hi_p = logp.gather(2, (lo + 1).unsqueeze(2)).squeeze(2)
        w_hi = t - lo
        dfl = -((1 - w_hi) * lo_p + w_hi * hi_p).mean()
        total = total + dfl + nn.functional.cross_entropy(out[:, 64:], lab)
    return total


def pretrain(name: str, seed: int = 0, log: Any = print) -> nn.Module:
    """``name``'s example network trained on its proxy task (seeded), in eval mode;
    BatchNorm statistics are still those of training (set them for the input size with
    ``examples.calibrate_batchnorm``)."""
    torch.manual_seed(seed)
    net = examples.MODELS[name][0]()
    srcs = examples.source_images()
    rng = np.random.default_rng(seed)
    steps, size, batch = STEPS[name], TRAIN_SIZE[name], BATCH[name]
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps)
    net.train()
    t0 = time.perf_counter()
    for step in range(steps):
        loss: Any  # torch's Tensor.backward carries no type information
        if name.startswith("detector"):
            x, label, box = _mosaic_batch(srcs, batch, size, rng)
            loss = _detector_loss(net(x), label, box, size)
        else:
            x, y = _classify_batch(srcs, batch, size, rng)
            loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(
                f"[{name}] proxy training step {step + 1}/{steps}: loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    return net.eval()
