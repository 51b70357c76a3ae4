"""Size limits of TensorRT's pooling layer, which its ONNX parser meets only when it adds the layer.

Measured with the tensorrt_rtx 1.7.1 parser (``INetworkDefinition::addPoolingNd``: "volume(
windowSize) < maxKernelDimsProduct(nbDims)"; ``IPoolingLayer::setStrideNd``: "allDimsLtEq(
stride, kMAX_STRIDE)"), by bisecting single-pool models:

- 2 spatial dims (and 1, which the parser pools as 2): the window volume must be below
  100000 (316x316 parses, 317x317 does not, nor 1x100000; 1x99999 does);
- 3 spatial dims: below 31622776 (about 100000 ** 1.5: 1x1x31622775 parses, 1x1x31622776 not);
- every stride at most 100000.

TensorRT's pooling layer has no other count of spatial dims, so nothing here covers them.
Used by the builder's support check (no TensorRT needed) and by the pass that rewrites
such pools (``reduce-oversized-pools``).
"""

from __future__ import annotations

from math import prod
from typing import Sequence

POOL_OPS = frozenset({"AveragePool", "MaxPool", "LpPool"})
POOL_WINDOW_VOLUME_LIMIT = {1: 100_000, 2: 100_000, 3: 31_622_776}  # the volume must be below
POOL_STRIDE_LIMIT = 100_000  # every stride at most


def pool_window_problem(kernel_shape: Sequence[int], strides: Sequence[int] | None = None) -> str | None:
    """Why TensorRT's pooling layer refuses this window and strides, or None if it takes them."""
    kernel = [int(k) for k in kernel_shape]
    limit = POOL_WINDOW_VOLUME_LIMIT.get(len(kernel))
    if limit is None:
        return None
    volume = prod(kernel)
    if volume >= limit:
        return f"pooling window {kernel} has volume {volume}; TensorRT takes windows of volume below {limit}"
    over = [int(s) for s in strides or () if int(s) > POOL_STRIDE_LIMIT]
    if over:
        return f"pooling stride {over[0]} is over TensorRT's limit {POOL_STRIDE_LIMIT}"
    return None
