"""Small torch blocks of real CNN architectures, for the "never more compute layers than the
raw export" tests: MobileNetV3 inverted residuals (HardSwish/ReLU, squeeze-excite with
HardSigmoid gating, through ``adaptive_avg_pool2d`` or ``mean``), EfficientNet MBConv (SiLU,
sigmoid-gated SE), GhostNet, RepVGG, Inception-style parallel branches, a FastViT RepMixer
with a ConvFFN, YOLOv5's C3, DenseNet layers, classifier heads, and a MobileNetV3-small (torchvision's configuration).
BatchNorm statistics are randomized so that folding them is really exercised."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbn(i: int, o: int, k: int = 1, s: int = 1, g: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o))


class SqueezeExcite(nn.Module):
    """MobileNetV3's SE: pool, 1x1 conv, ReLU, 1x1 conv, HardSigmoid gate (``mean``: x.mean)."""

    def __init__(self, c: int, squeeze: int | None = None, mean: bool = False, silu: bool = False) -> None:
        super().__init__()
        q = squeeze or max(8, c // 4)
        self.fc1, self.fc2, self.mean, self.silu = nn.Conv2d(c, q, 1), nn.Conv2d(q, c, 1), mean, silu
        self.act = nn.SiLU() if silu else nn.ReLU()

    def forward(self, x):
        w = x.mean((2, 3), keepdim=True) if self.mean else F.adaptive_avg_pool2d(x, 1)
        w = self.fc2(self.act(self.fc1(w)))
        return x * (torch.sigmoid(w) if self.silu else F.hardsigmoid(w))


class InvertedResidual(nn.Module):
    """MobileNetV3 / EfficientNet block: optional 1x1 expand, depthwise kxk, optional SE, 1x1 project."""

    def __init__(self, i: int, k: int, e: int, o: int, se: bool, act: type, stride: int, mean: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [cbn(i, e), act()] if e != i else []
        layers += [cbn(e, e, k, stride, e), act()]
        if se:
            layers.append(SqueezeExcite(e, max(8, (e // 4 + 4) // 8 * 8), mean, silu=act is nn.SiLU))
        layers.append(cbn(e, o))
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and i == o

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class Ghost(nn.Module):
    def __init__(self, i: int, o: int, relu: bool = True) -> None:
        super().__init__()
        h = o // 2
        self.primary = nn.Sequential(cbn(i, h), nn.ReLU() if relu else nn.Identity())
        self.cheap = nn.Sequential(cbn(h, h, 3, 1, h), nn.ReLU() if relu else nn.Identity())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)


class GhostBottleneck(nn.Module):
    def __init__(self, c: int = 16, e: int = 48) -> None:
        super().__init__()
        self.g1, self.se, self.g2 = Ghost(c, e), SqueezeExcite(e), Ghost(e, c, relu=False)

    def forward(self, x):
        return x + self.g2(self.se(self.g1(x)))


class RepVGG(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.a, self.b, self.bn = cbn(c, c, 3), cbn(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(self.a(x) + self.b(x) + self.bn(x))


class Inception(nn.Module):
    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.b1 = nn.Sequential(cbn(c, 8), nn.ReLU())
        self.b2 = nn.Sequential(cbn(c, 8), nn.ReLU(), cbn(8, 8, 3), nn.ReLU())
        self.b3 = nn.Sequential(cbn(c, 4), nn.ReLU(), cbn(4, 8, 5), nn.ReLU())
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbn(c, 8), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class RepMixer(nn.Module):
    """FastViT's RepMixer (x + BN(dwconv(x)) - BN(x)) and ConvFFN (dwconv 7x7, 1x1, GELU, 1x1)."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.mix, self.norm = cbn(c, c, 3, 1, c), nn.BatchNorm2d(c)
        self.ffn = nn.Sequential(cbn(c, c, 7, 1, c), nn.Conv2d(c, 4 * c, 1), nn.GELU(), nn.Conv2d(4 * c, c, 1))

    def forward(self, x):
        x = x + self.mix(x) - self.norm(x)
        return x + self.ffn(x)


class Head(nn.Module):
    """A classifier head: conv-BN-activation, global average pool, linear."""

    def __init__(self, c: int = 16, act: type = nn.Hardswish) -> None:
        super().__init__()
        self.conv, self.act, self.fc = cbn(c, 64), act(), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.act(self.conv(x)), 1).flatten(1))


class ResidualHead(nn.Module):
    """ResNet's last block then its head: conv-BN, add, ReLU, mean over H and W."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Sequential(cbn(c, c, 3), nn.ReLU()), cbn(c, c, 3), nn.Linear(c, 10)

    def forward(self, x):
        return self.fc(F.relu(x + self.c2(self.c1(x))).mean((2, 3)))


class C3(nn.Module):
    """YOLOv5's CSP block: conv-BN-SiLU branches, residual bottlenecks, Concat, conv-BN-SiLU."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        h = c // 2

        def cbs(i: int, o: int, k: int = 1) -> nn.Sequential:
            return nn.Sequential(cbn(i, o, k), nn.SiLU())

        self.cv1, self.cv2, self.cv3 = cbs(c, h), cbs(c, h), cbs(2 * h, c)
        self.m = nn.ModuleList(nn.Sequential(cbs(h, h), cbs(h, h, 3)) for _ in range(2))

    def forward(self, x):
        a = self.cv1(x)
        for bottleneck in self.m:
            a = a + bottleneck(a)
        return self.cv3(torch.cat([a, self.cv2(x)], 1))


class DenseLayers(nn.Module):
    """Two DenseNet layers (pre-activation BN-ReLU-Conv, each output concatenated to its input)."""

    def __init__(self, c: int = 16, g: int = 8) -> None:
        super().__init__()

        def layer(i: int) -> nn.Sequential:
            return nn.Sequential(nn.BatchNorm2d(i), nn.ReLU(), nn.Conv2d(i, 4 * g, 1, bias=False),
                                 nn.BatchNorm2d(4 * g), nn.ReLU(), nn.Conv2d(4 * g, g, 3, 1, 1, bias=False))

        self.l1, self.l2 = layer(c), layer(c + g)

    def forward(self, x):
        x = torch.cat([x, self.l1(x)], 1)
        return torch.cat([x, self.l2(x)], 1)


# torchvision's MobileNetV3-small: (in, kernel, expanded, out, SE, HardSwish, stride)
MOBILENET_V3_SMALL = [(16, 3, 16, 16, 1, 0, 2), (16, 3, 72, 24, 0, 0, 2), (24, 3, 88, 24, 0, 0, 1),
                      (24, 5, 96, 40, 1, 1, 2), (40, 5, 240, 40, 1, 1, 1), (40, 5, 240, 40, 1, 1, 1),
                      (40, 5, 120, 48, 1, 1, 1), (48, 5, 144, 48, 1, 1, 1), (48, 5, 288, 96, 1, 1, 2),
                      (96, 5, 576, 96, 1, 1, 1), (96, 5, 576, 96, 1, 1, 1)]


class MobileNetV3Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(cbn(3, 16, 3, 2), nn.Hardswish())
        self.blocks = nn.Sequential(*[InvertedResidual(i, k, e, o, bool(se), nn.Hardswish if hs else nn.ReLU, s)
                                      for i, k, e, o, se, hs, s in MOBILENET_V3_SMALL])
        self.last = nn.Sequential(cbn(96, 576), nn.Hardswish())
        self.head = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Linear(1024, 1000))

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.last(self.blocks(self.stem(x))), 1).flatten(1))


# name -> (module factory, input channels, input size)
BLOCKS = {
    "mobilenetv3-hardswish-se": (lambda: InvertedResidual(16, 3, 64, 16, True, nn.Hardswish, 1), 16, 14),
    "mobilenetv3-relu-se-mean": (lambda: InvertedResidual(16, 3, 64, 16, True, nn.ReLU, 1, mean=True), 16, 14),
    "mobilenetv3-hardswish-se-stride2": (lambda: InvertedResidual(16, 5, 64, 24, True, nn.Hardswish, 2), 16, 14),
    "mobilenetv3-no-se": (lambda: InvertedResidual(16, 3, 64, 16, False, nn.Hardswish, 1), 16, 14),
    "efficientnet-mbconv": (lambda: nn.Sequential(*[InvertedResidual(16, 3, 64, 16, True, nn.SiLU, 1)
                                                    for _ in range(2)]), 16, 14),
    "ghostnet-bottleneck": (GhostBottleneck, 16, 14),
    "repvgg": (RepVGG, 16, 14),
    "inception": (Inception, 16, 14),
    "fastvit-repmixer": (RepMixer, 16, 14),
    "yolov5-c3": (C3, 32, 20),
    "densenet": (DenseLayers, 16, 14),
    "head-hardswish": (Head, 16, 7),
    "head-relu": (lambda: Head(act=nn.ReLU), 16, 7),
    "resnet-head": (ResidualHead, 16, 7),
}


def export(module: nn.Module, channels: int, size: int, path: str) -> None:
    """Raw TorchScript export at opset 17, dynamic batch, random BN statistics."""
    torch.manual_seed(0)
    module.eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    torch.onnx.export(module, (torch.randn(1, channels, size, size),), path, dynamo=False,
                      do_constant_folding=False, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
