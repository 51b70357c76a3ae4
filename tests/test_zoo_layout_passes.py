"""Real exports through the default pipeline, with and without the layout passes.

The layout passes (merge-transposes, push-transposes, collapse-reshapes,
simplify-squeeze-unsqueeze, matmul-add-to-gemm, flatten-before-gemm, fold-pad) run as
part of the default pipeline on raw torch exports:

- the zoo's encoder-tiny (batch 1 and 3 x sequence 8 and 16), convnext and resnet-tiny
  (batch 1 and 3): outputs match the original, and the op types these passes target
  are never more numerous than with the passes skipped (the encoder loses an Unsqueeze:
  its attention-mask ``[:, None, None, :]`` is two Unsqueezes);
- a small network written to contain each pattern the way torch exports it
  (``F.pad`` before Conv / MaxPool / AvgPool, ``permute`` around an affine, a reshape
  chain, ``x.view(x.size(0), -1)`` before a Linear, ``x @ W + b`` on 2-D, unsqueeze then
  squeeze between two transposes: torch's exporter merges adjacent Transposes itself), where
  every targeted pattern is rewritten.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import onnx
import pytest

from fusekit.api import optimize
from tests.helpers import op_counts, run_ort
from tests.zoo_models import zoo_model

LAYOUT_PASSES = ["merge-transposes", "push-transposes", "collapse-reshapes", "simplify-squeeze-unsqueeze",
                 "matmul-add-to-gemm", "flatten-before-gemm", "fold-pad"]
TARGETED = ["Transpose", "Reshape", "Squeeze", "Unsqueeze", "MatMul", "Add", "Pad", "Shape", "Gather", "Concat"]
RTOL, ATOL = 1e-4, 1e-5


def _feeds(model: onnx.ModelProto, batch: int, seq: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value if d.HasField("dim_value") else (batch if i == 0 else seq)
                 for i, d in enumerate(vi.type.tensor_type.shape.dim)]
        if vi.name == "input_ids":
            feeds[vi.name] = rng.integers(0, 1000, shape).astype(np.int64)
        elif vi.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[:, shape[1] // 2:] = rng.integers(0, 2, (shape[0], shape[1] - shape[1] // 2))
            feeds[vi.name] = mask
        else:
            feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _max_diff(original, optimized, sizes) -> float:
    rng, worst = np.random.default_rng(0), 0.0
    for batch, seq in sizes:
        feeds = _feeds(original, batch, seq, rng)
        expected, got = run_ort(original, feeds), run_ort(optimized, feeds)
        assert list(got) == list(expected)
        for name, e in expected.items():
            assert e.shape == got[name].shape, (name, e.shape, got[name].shape)
            np.testing.assert_allclose(got[name], e, rtol=RTOL, atol=ATOL, err_msg=f"{name} at {batch}x{seq}")
            worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - e))))
    return worst


def _targeted(model: onnx.ModelProto) -> Counter:
    counts = op_counts(model)
    return Counter({op: counts[op] for op in TARGETED if counts[op]})


SIZES = {"encoder-tiny": [(1, 8), (1, 16), (3, 8), (3, 16)], "convnext": [(1, 0), (3, 0)],
         "resnet-tiny": [(1, 0), (3, 0)]}


@pytest.mark.parametrize("name", list(SIZES))
def test_zoo_model_keeps_outputs_and_loses_targeted_ops(name):
    original = onnx.load(str(zoo_model(name)))
    with_passes, report = optimize(original, return_report=True)
    without = optimize(original, skip=LAYOUT_PASSES)
    onnx.checker.check_model(with_passes, full_check=True)
    diff = _max_diff(original, with_passes, SIZES[name])
    after, before = _targeted(with_passes), _targeted(without)
    print(f"\n{name}: max diff {diff:.3g}; targeted ops without the layout passes {dict(before)}, "
          f"with {dict(after)}; rewrites {({s.name: s.rewrites for s in report.passes if s.name in LAYOUT_PASSES and s.rewrites})}")
    assert all(after[op] <= before[op] for op in TARGETED)
    assert len(with_passes.graph.node) <= len(without.graph.node)
    if name == "encoder-tiny":
        assert after["Unsqueeze"] == before["Unsqueeze"] - 1


# --------------------------------------------------------------- a network made of the patterns

def _layout_net():
    torch = pytest.importorskip("torch")
    nn, F = torch.nn, torch.nn.functional

    class LayoutNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 3)
            self.dw = nn.Conv2d(8, 8, 3, groups=8)
            self.scale = nn.Parameter(torch.rand(8, generator=gen) + 0.5)
            self.shift = nn.Parameter(torch.rand(8, generator=gen) - 0.5)
            self.w = nn.Parameter(torch.randn(8 * 4 * 4, 16, generator=gen) * 0.1)
            self.b = nn.Parameter(torch.randn(16, generator=gen))
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            x = torch.relu(self.conv(F.pad(x, (1, 1, 1, 1))))             # Pad -> Conv
            x = F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2)                   # Pad(0) after Relu -> MaxPool
            x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=1, count_include_pad=True)
            y = x.permute(0, 2, 3, 1) * self.scale + self.shift           # Transpose -> Mul -> Add
            x = torch.relu(self.dw(F.pad(y.permute(0, 3, 1, 2), (1, 1, 1, 1))))  # -> Transpose: cancels
            x = x.transpose(2, 3).unsqueeze(1).squeeze(1).transpose(1, 2)  # pair cancels, Transposes merge
            x = x.reshape(-1, 8, 16).reshape(-1, 128)                     # Reshape chain
            x = torch.relu(x @ self.w + self.b)                           # MatMul + Add on 2-D
            return self.fc(x.view(x.size(0), -1))                         # view -> Linear (Gemm)

    return torch, LayoutNet().eval()


def test_layout_patterns_of_a_torch_export_are_rewritten(tmp_path):
    torch, net = _layout_net()
    path = tmp_path / "layout.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), str(path), dynamo=False, do_constant_folding=False,
                          opset_version=14, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    original = onnx.load(str(path))
    optimized, report = optimize(original, return_report=True)
    without = optimize(original, skip=LAYOUT_PASSES)
    onnx.checker.check_model(optimized, full_check=True)
    diff = _max_diff(original, optimized, [(1, 0), (3, 0)])
    counts, baseline = op_counts(optimized), op_counts(without)
    rewrites = {s.name: s.rewrites for s in report.passes if s.name in LAYOUT_PASSES}
    print(f"\nlayout net: max diff {diff:.3g}; raw {dict(_targeted(original))}; without the layout passes "
          f"{dict(_targeted(without))}; with {dict(_targeted(optimized))}; rewrites {rewrites}")
    assert counts["Pad"] == 0 and baseline["Pad"] == 4
    assert counts["Transpose"] == 1 and baseline["Transpose"] == 4
    assert counts["Squeeze"] + counts["Unsqueeze"] == 0 < baseline["Squeeze"] + baseline["Unsqueeze"]
    assert counts["MatMul"] == 0 and counts["Gemm"] == 2
    assert counts["Reshape"] == 0 and counts["Flatten"] == 1  # the collapsed reshape chain, before a Gemm
    assert len(optimized.graph.node) < len(without.graph.node)
    assert all(rewrites[name] for name in LAYOUT_PASSES), rewrites
