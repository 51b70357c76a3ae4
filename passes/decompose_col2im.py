"""Decompose 2-D ``Col2Im`` into a Reshape and a grouped ConvTranspose with a 0/1 filter.

TensorRT cannot parse Col2Im. Col2Im (opset 18) scatters-and-adds the columns of ``input``
[N, C*kh*kw, L] back into an image [N, C, H, W] (``image_shape`` [H, W], ``block_shape``
[kh, kw], ``strides``, ``dilations``, ``pads`` [top, left, bottom, right]): row
c*kh*kw + i*kw + j of column l = lh*Lw + lw is added to y[n, c, lh*sh - top + i*dh,
lw*sw - left + j*dw], with Lh = (H + top + bottom - (dh*(kh-1) + 1)) // sh + 1 (Lw
likewise). That is a transposed convolution, one group per channel:

    Y = ConvTranspose(Reshape(input, [0, C*kh*kw, Lh, Lw]), W, group=C, strides, dilations,
                      pads, output_padding)
    W [C*kh*kw, 1, kh, kw],  W[c*kh*kw + k, 0, i, j] = 1 iff k = i*kw + j

with ``output_padding`` = (H + top + bottom - (dh*(kh-1) + 1)) mod s (the rows the last
block never reaches). When a stride and a dilation both exceed 1 the dilations are spread
into the filter instead (TensorRT builds no strided and dilated deconvolution). Equal to
Col2Im up to the order of float additions, for finite inputs (the filter's zeros times an
inf or NaN give NaN where Col2Im does not read that value).

Must not: rewrite a computed ``image_shape`` or ``block_shape``, other than 2-D blocks, an
``input`` whose dim 1 is unknown or not a multiple of kh*kw, or whose dim 2 is known and not
Lh*Lw, or a non-float input (ConvTranspose is float only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import constant_array, make_constant
from fusekit.pass_infra import Decline, Match, NodeRewritePass, PassContext, Stage
from fusekit.passes._pattern import float_type, node, np_dtype, replace_pattern, variable


def block_filter(channels: int, kh: int, kw: int, dtype, dilations=(1, 1)) -> np.ndarray:
    """The [C*kh*kw, 1, kh', kw'] 0/1 ConvTranspose filter that puts block row k = i*kw + j
    at offset (i*dh, j*dw): kh' = dh*(kh-1) + 1 (kw' likewise); dilations (1, 1) leave it
    to the ConvTranspose."""
    dh, dw = dilations
    k = kh * kw
    filt = np.zeros((k, 1, dh * (kh - 1) + 1, dw * (kw - 1) + 1), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            filt[i * kw + j, 0, i * dh, j * dw] = 1
    return np.tile(filt, (channels, 1, 1, 1))


def _ints(value: np.ndarray | None) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).ravel()]


class DecomposeCol2ImPass(NodeRewritePass):
    """Rewrite 2-D Col2Im of constant image and block shapes as a grouped ConvTranspose."""

    name = "decompose-col2im"
    stage = Stage.LEGALIZE
    priority = 45
    ops = frozenset({"Col2Im"})

    def check(self, graph: gs.Graph, col2im: gs.Node, ctx: PassContext) -> Match[dict[str, Any]] | Decline:
        x = col2im.inputs[0]
        if float_type(x) is None:
            return Decline("the input is not of a known float type (ConvTranspose is float only)")
        image, block = _ints(constant_array(col2im.inputs[1])), _ints(constant_array(col2im.inputs[2]))
        if image is None or block is None:
            return Decline("image_shape or block_shape is not a constant")
        if len(image) != 2 or len(block) != 2:
            return Decline(f"image_shape {image}, block_shape {block}: only 2-D Col2Im is decomposed")
        strides = list(col2im.attrs.get("strides", [1, 1]))
        dilations = list(col2im.attrs.get("dilations", [1, 1]))
        pads = list(col2im.attrs.get("pads", [0, 0, 0, 0]))
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
            return Decline(f"strides {strides}, dilations {dilations}, pads {pads} do not fit a 2-D Col2Im")
        if min(block) < 1 or min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
            return Decline(f"block_shape {block}, strides {strides}, dilations {dilations}, pads {pads}: "
                           "not positive (pads: not non-negative)")
        spans = [image[a] + pads[a] + pads[a + 2] - (dilations[a] * (block[a] - 1) + 1) for a in range(2)]
        if min(spans) < 0:
            return Decline(f"a block of {block} (dilations {dilations}) is larger than the padded image {image}")
        counts = [span // strides[a] + 1 for a, span in enumerate(spans)]
        shape = x.shape
        if shape is None or len(shape) != 3:
            return Decline("the input's rank is not known to be 3")
        k = block[0] * block[1]
        rows = shape[1]
        if not isinstance(rows, (int, np.integer)) or rows <= 0 or rows % k:
            return Decline(f"input dim 1 ({rows}) is not a known multiple of kh*kw = {k}")
        length = shape[2]
        if isinstance(length, (int, np.integer)) and length != counts[0] * counts[1]:
            return Decline(f"input dim 2 is {length}, not the {counts[0]}*{counts[1]} block positions")
        # tensorrt_rtx 1.7 builds strided or dilated deconvolutions, not both (measured: "Strided &
        # Dilated Deconv are currently not supported"): then the dilations go into the filter
        spread = max(strides) > 1 and max(dilations) > 1
        data = dict(channels=int(rows) // k, block=block, counts=counts, strides=strides, dilations=dilations,
                    pads=pads, output_padding=[span % strides[a] for a, span in enumerate(spans)], spread=spread)
        return Match(f"Col2Im to {image} of {block} blocks written as Reshape + ConvTranspose "
                     f"(group {data['channels']}){' with the dilations in the filter' if spread else ''}", data)

    def rewrite(self, graph: gs.Graph, col2im: gs.Node, match: Match[dict[str, Any]], ctx: PassContext) -> None:
        d = match.data
        x, out = col2im.inputs[0], col2im.outputs[0]
        base = col2im.name or "Col2Im"
        (kh, kw), (lh, lw) = d["block"], d["counts"]
        rows = d["channels"] * kh * kw
        target = make_constant(graph, f"{base}_shape", np.array([0, rows, lh, lw], dtype=np.int64))
        spread = d["spread"]
        filt = block_filter(d["channels"], kh, kw, np_dtype(x), d["dilations"] if spread else (1, 1))
        weights = make_constant(graph, f"{base}_filter", filt)
        grid = variable(graph, f"{base}/Reshape_output", x)
        grid.shape = [x.shape[0], rows, lh, lw]
        result = variable(graph, f"{base}/ConvTranspose_output", out)
        attrs = dict(group=d["channels"], kernel_shape=list(filt.shape[2:]), strides=d["strides"],
                     dilations=[1, 1] if spread else d["dilations"], pads=d["pads"])
        if any(d["output_padding"]):
            attrs["output_padding"] = d["output_padding"]
        nodes = [node(graph, "Reshape", f"{base}/Reshape", [x, target], [grid]),
                 node(graph, "ConvTranspose", f"{base}/ConvTranspose", [grid, weights], [result], **attrs)]
        replace_pattern(graph, [col2im], out, nodes, result)
