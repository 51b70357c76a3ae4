"""Where a per-channel scale and shift after a Conv should stay unfolded (a helper, not a pass).

Shared by ``fold-batchnorm`` and ``fold-scale-into-weights``: folding a BatchNormalization
or a constant Mul/Add into the Conv before it is exact, but in a few graph forms it costs
TensorRT kernels, measured with tensorrt_rtx 1.7's builder (``tests/test_never_worse_blocks.py``).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, producer
from fusekit.onnx_nodes import is_default_domain

# Ops that keep a tensor's shape, walked by :func:`scale_shift_stays` and :func:`_from_conv`.
_ELEMENTWISE = frozenset({"Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Clip", "LeakyRelu", "Elu", "Selu", "Mish",
                          "Softplus", "Tanh", "Mul", "Add", "Sub", "Div"})


def scale_shift_stays(tensor: gs.Tensor, depth: int = 6) -> str | None:
    """Why a per-channel scale and shift after the Conv computing ``tensor`` should stay a
    Mul and Add rather than be folded into the Conv, or None.

    It stays when, through elementwise ops (and Concats) within ``depth`` ops, ``tensor``
    reaches a spatial mean (GlobalAveragePool of a rank-4 tensor or ReduceMean over axes
    [2, 3]: a squeeze-excite input), or a Concat whose every input is a Conv's output
    through elementwise ops and BatchNormalization (Inception and GhostNet branches).
    There tensorrt_rtx 1.7's Myelin fuses the scale and shift, the activation, the layout
    change and the mean or concatenation into one kernel; folded, each Conv's epilogue ends
    in a layout change of its own (measured compute layers raw -> folded -> kept:
    MobileNetV3-small 74 -> 80 -> 74, an Inception block 9 -> 12 -> 9, a GhostNet
    bottleneck 10 -> 11 -> 10; a YOLOv5 C3 block, whose Concat also reads a residual Add,
    folds: 10 -> 9)."""
    frontier = [tensor]
    for _ in range(depth):
        following = []
        for t in frontier:
            for reader in t.outputs:
                if not reader.outputs or not is_default_domain(reader):
                    continue
                if (reader.op == "GlobalAveragePool" and _rank(reader.inputs[0]) == 4) or \
                        (reader.op == "ReduceMean" and _reduces_spatial_axes(reader)):
                    return ("its output reaches a spatial mean (a squeeze-excite input): a scale and shift kept "
                            "after the Conv is the form TensorRT fuses with the activation and the mean")
                if reader.op == "Concat" and all(_from_conv(i) for i in reader.inputs):
                    return ("its output reaches a Concat of Conv branches: scales and shifts kept after the Convs "
                            "are the form TensorRT fuses with the activations and the Concat")
                if reader.op in _ELEMENTWISE or reader.op == "Concat":
                    following.append(reader.outputs[0])
        frontier = following
    return None


def _from_conv(tensor: gs.Tensor, depth: int = 6) -> bool:
    """Whether ``tensor`` is a Conv's output, through elementwise ops and BatchNormalization."""
    for _ in range(depth):
        source = producer(tensor)
        if source is None or source.op == "Conv":
            return source is not None
        if source.op not in _ELEMENTWISE | {"BatchNormalization"}:
            return False
        data = [t for t in source.inputs[:1 if source.op == "BatchNormalization" else 2] if constant_array(t) is None]
        if len(data) != 1:
            return False
        tensor = data[0]
    return False


def _rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def _reduces_spatial_axes(reduce: gs.Node) -> bool:
    axes = reduce.attrs.get("axes")
    if axes is None and len(reduce.inputs) > 1:
        axes = constant_array(reduce.inputs[1])
    rank = _rank(reduce.inputs[0])
    return axes is not None and rank == 4 and sorted(int(a) % rank for a in np.ravel(axes)) == [2, 3]
