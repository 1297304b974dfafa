"""Example networks defined in code, and real sample images, for the demo and the
benchmarks. Needs torch (``quantship[torch]``); the images need scikit-image.

The architectures follow the published topologies (ResNet-18, MobileNetV2, a
YOLOv8n-sized detector) without any pretrained weights: nothing is downloaded. Their
BatchNorm statistics are set from real images (``calibrate_batchnorm``), so activations
have the per-channel scale of a trained network rather than of random initialisation.
Random weights still leave a deep BatchNorm network chaotic (it amplifies small
perturbations), so the benchmarks first train these networks briefly on proxy tasks
cut from the same sample images (``benchmarks/pretrain.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn


def _cbr(
    cin: int,
    cout: int,
    k: int,
    s: int,
    act: Callable[[], nn.Module] | None = nn.ReLU,
    groups: int = 1,
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, cout, 3, stride), _cbr(cout, cout, 3, 1, act=None))
        self.short = (
            _cbr(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.body(x) + self.short(x))
        return out


class ResNet18Like(nn.Module):
    """ResNet-18's topology: 7×7 stem, four stages of two basic blocks, 1000 classes."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in [
            (64, 1),
            (64, 1),
            (128, 2),
            (128, 1),
            (256, 2),
            (256, 1),
            (512, 2),
            (512, 1),
        ]:
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))
        return out


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_cbr(cin, hidden, 1, 1, act=nn.ReLU6))
        layers += [
            _cbr(hidden, hidden, 3, stride, act=nn.ReLU6, groups=hidden),
            _cbr(hidden, cout, 1, 1, act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Like(nn.Module):
    """MobileNetV2 (width 1.0): inverted residuals with depthwise convolutions, ReLU6."""

    CONFIG: ClassVar[list[tuple[int, int, int, int]]] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in self.CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 1280, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.pool(self.features(x)), 1))
        return out


class C2f(nn.Module):
    """YOLOv8's split-and-concatenate block (simplified)."""

    def __init__(self, cin: int, cout: int, n: int) -> None:
        super().__init__()
        h = cout // 2
        self.cv1 = _cbr(cin, 2 * h, 1, 1, act=nn.SiLU)
        self.blocks = nn.ModuleList(
            nn.Sequential(_cbr(h, h, 3, 1, act=nn.SiLU), _cbr(h, h, 3, 1, act=nn.SiLU))
            for _ in range(n)
        )
        self.cv2 = _cbr((2 + n) * h, cout, 1, 1, act=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).chunk(2, 1)
        ys = [a, b]
        for blk in self.blocks:
            ys.append(ys[-1] + blk(ys[-1]))
        out: torch.Tensor = self.cv2(torch.cat(ys, 1))
        return out


class DetectorLike(nn.Module):
    """A YOLOv8n-sized single-stage detector for 640×640 inputs: SiLU backbone to /32,
    a top-down and bottom-up neck (nearest upsampling, concatenation), and per-level
    box (4×16) and class (80) heads, returned as three feature maps."""

    def __init__(self, num_classes: int = 80, w: int = 16) -> None:
        super().__init__()
        s = nn.SiLU
        self.b1 = nn.Sequential(_cbr(3, w, 3, 2, s), _cbr(w, 2 * w, 3, 2, s), C2f(2 * w, 2 * w, 1))
        self.b2 = nn.Sequential(_cbr(2 * w, 4 * w, 3, 2, s), C2f(4 * w, 4 * w, 2))  # /8
        self.b3 = nn.Sequential(_cbr(4 * w, 8 * w, 3, 2, s), C2f(8 * w, 8 * w, 2))  # /16
        self.b4 = nn.Sequential(_cbr(8 * w, 16 * w, 3, 2, s), C2f(16 * w, 16 * w, 1))  # /32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n3 = C2f(24 * w, 8 * w, 1)
        self.n2 = C2f(12 * w, 4 * w, 1)
        self.d2 = _cbr(4 * w, 4 * w, 3, 2, s)
        self.n3b = C2f(12 * w, 8 * w, 1)
        self.d3 = _cbr(8 * w, 8 * w, 3, 2, s)
        self.n4b = C2f(24 * w, 16 * w, 1)
        self.heads = nn.ModuleList(
            nn.Conv2d(c, 64 + num_classes, 1) for c in (4 * w, 8 * w, 16 * w)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p2 = self.b2(self.b1(x))
        p3 = self.b3(p2)
        p4 = self.b4(p3)
        t3 = self.n3(torch.cat([self.up(p4), p3], 1))
        o2 = self.n2(torch.cat([self.up(t3), p2], 1))
        o3 = self.n3b(torch.cat([self.d2(o2), t3], 1))
        o4 = self.n4b(torch.cat([self.d3(o3), p4], 1))
        h = self.heads
        return h[0](o2), h[1](o3), h[2](o4)


class EncoderLayer(nn.Module):
    """A BERT encoder layer: multi-head self-attention and a GELU feed-forward block,
    each with a residual connection and post-LayerNorm."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ffn)
        self.ff2 = nn.Linear(ffn, d)
        self.ln2 = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.dk).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / self.dk**0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = self.ln1(x + self.out(y))
        out: torch.Tensor = self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))
        return out


class BertLike(nn.Module):
    """A BERT-like encoder stack over embedded tokens (batch, 128, 256), with a
    classification head on the first position: 4 layers, 4 heads, FFN 1024."""

    def __init__(
        self, layers: int = 4, d: int = 256, heads: int = 4, ffn: int = 1024, classes: int = 10
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[EncoderLayer(d, heads, ffn) for _ in range(layers)])
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.layers(x)[:, 0])
        return out


def token_embeddings(
    n: int, seq: int = 128, d: int = 256, seed: int = 0
) -> npt.NDArray[np.float32]:
    """Embedding-like inputs for BertLike: unit-variance vectors, a few outlier
    dimensions as trained transformers have them."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, seq, d)).astype(np.float32)
    x[:, :, :4] *= 8.0
    return x


MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet18": (ResNet18Like, 224),
    "mobilenetv2": (MobileNetV2Like, 224),
    "detector640": (DetectorLike, 640),
}


def calibrate_batchnorm(
    net: nn.Module, images: npt.NDArray[np.float32], batch: int = 16
) -> nn.Module:
    """Set every BatchNorm's running statistics to the mean/variance its input has on
    ``images`` (a cumulative average over all batches): the activation scale of a
    trained network, without training."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net(torch.from_numpy(images[i : i + batch]))
    return net.eval()


def build(name: str, images: npt.NDArray[np.float32] | None = None, seed: int = 0) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown example model {name!r}; known: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    net = MODELS[name][0]()
    if images is not None:
        calibrate_batchnorm(net, images)
    return net.eval()


SAMPLE_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "cat",
    "coins",
    "camera",
    "moon",
    "brick",
    "grass",
    "gravel",
    "page",
    "text",
)
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def sample_images(n: int, size: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """``n`` real-image crops (NCHW, ImageNet-normalised) at ``size``×``size``, cut at
    seeded random positions and scales from scikit-image's bundled sample images."""
    srcs = source_images()
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        out[i] = random_crop(srcs[rng.integers(len(srcs))], size, size, rng)
    return out


def source_images() -> list[npt.NDArray[np.float32]]:
    """scikit-image's bundled sample images (``SAMPLE_IMAGES``), HWC RGB in [0, 1]."""
    import skimage.data

    srcs: list[npt.NDArray[np.float32]] = []
    for name in SAMPLE_IMAGES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        srcs.append(img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0))
    return srcs


def random_crop(
    src: npt.NDArray[np.float32],
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.4, 1.0),
) -> npt.NDArray[np.float32]:
    """A square crop of ``src`` at a random position and scale, resized to
    ``height``×``width``, randomly mirrored, ImageNet-normalised, CHW."""
    from skimage.transform import resize

    resize_fn: Any = resize  # scikit-image ships no type information
    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(*scale))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = resize_fn(src[y : y + side, x : x + side], (height, width), order=1, anti_aliasing=False)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out: npt.NDArray[np.float32] = ((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out.astype(np.float32)


def to_onnx(net: nn.Module, size: int, path: str, input_name: str = "images") -> None:
    """Export with a dynamic batch axis (quantship's own torch exporter)."""
    from quantship.exporter.torch_export import export_module

    proto = export_module(net, {input_name: (1, 3, size, size)})
    from pathlib import Path

    Path(path).write_bytes(proto.SerializeToString())
