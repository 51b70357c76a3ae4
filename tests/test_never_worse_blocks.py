"""Never more TensorRT compute layers than the raw export, on small blocks of real CNNs
(``tests/block_zoo.py``): each block is exported raw (TorchScript, opset 17, dynamic batch),
optimized with the default pipeline, compared with the raw export under onnxruntime at batch
1 and 2, and both are built by the real tensorrt_rtx builder at batch 1; the optimized one
must have at most as many compute layers (engine layers less stream sync and shape program).

Measured with tensorrt_rtx 1.7.1, compute layers raw -> fusekit folding every BatchNorm ->
fusekit today: the squeeze-excite blocks 9 -> 10 -> 9, MobileNetV3-small 74 -> 80 -> 74, the
GhostNet bottleneck 10 -> 11 -> 10 and the Inception block 9 -> 12 -> 9, where Myelin fuses a
Conv's scale and shift, activation, layout change and the SE mean or the branches' Concat
into one kernel only while the scale and shift are not folded into the Conv
(``passes/_kept_scale_shift.py``); YOLOv5's C3 (10 -> 9) still folds.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import fusekit.api as fk
from fusekit.builder import backend as backends
from tests.block_zoo import BLOCKS, MobileNetV3Small, export
from tests.helpers import assert_same_outputs

BACKEND = backends.installed()


def compute_layers(model: onnx.ModelProto) -> int:
    return fk.build(model, optimize=False, dynamic=["batch=1:1:2"]).report.compute_layers


def _check(tmp_path, module, channels: int, size: int) -> tuple[int, int]:
    path = str(tmp_path / "raw.onnx")
    export(module, channels, size, path)
    raw = onnx.load(path)
    optimized = fk.optimize(raw)
    rng = np.random.default_rng(0)
    assert_same_outputs(raw, optimized, [{"x": rng.normal(size=(n, channels, size, size)).astype(np.float32)}
                                         for n in (1, 2)])
    return compute_layers(raw), compute_layers(optimized)


@pytest.mark.trt
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_has_no_more_compute_layers_than_raw(tmp_path, name):
    if BACKEND is None:
        pytest.skip("no TensorRT backend imports")
    factory, channels, size = BLOCKS[name]
    raw, optimized = _check(tmp_path, factory(), channels, size)
    assert optimized <= raw, f"{name}: raw {raw} compute layers, optimized {optimized}"


@pytest.mark.trt
def test_mobilenet_v3_small_has_no_more_compute_layers_than_raw(tmp_path):
    if BACKEND is None:
        pytest.skip("no TensorRT backend imports")
    raw, optimized = _check(tmp_path, MobileNetV3Small(), 3, 224)
    assert optimized <= raw, f"raw {raw} compute layers, optimized {optimized}"
