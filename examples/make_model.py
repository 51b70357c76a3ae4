"""Build a small CNN the way users' raw exports look, for trying fusekit.

The export keeps what fusekit must clean up (BatchNormalization, Identity, constant and
shape subgraphs): ``dynamo=False, do_constant_folding=False``, opset 14, dynamic batch.

    python examples/make_model.py model.onnx
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, a residual add, global pooling, a flatten and a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(16, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = x.mean(dim=(2, 3))
        return self.head(x.reshape(x.shape[0], -1))


def export(path: str, size: int = 32, opset: int = 14) -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    for m in model.modules():  # non-trivial BN statistics, so folding is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it is the raw export users have
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(2, 3, size, size),), path, dynamo=False,
                          do_constant_folding=False, opset_version=opset, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="model.onnx")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    export(args.output, args.size)
    print(f"wrote {args.output}")
