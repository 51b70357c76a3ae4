"""DeformConv (opset 19) -> NVIDIA's ``ModulatedDeformConv2d`` plugin (version 1, default namespace).

TensorRT's parser cannot parse ``DeformConv``; TensorRT OSS ships Deformable ConvNets v2's
convolution as ``plugin/modulatedDeformConvPlugin``. Fields, from its README: int32[2]
``stride``, ``padding``, ``dilation`` (height, width); int32 ``group``,
``deformable_group``. Inputs x [N, C, H, W], offset [N, 2*dg*kh*kw, OH, OW], mask
[N, dg*kh*kw, OH, OW], weight [OC, C/group, kh, kw], bias [OC] (ONNX's order is X, W,
offset, B, mask, so the inputs are reordered); output [N, OC, OH, OW] (OH, OW read off
the offset's dims, which ONNX requires to be the output's).

Mapping: strides -> stride, dilations -> dilation, group -> group, offset_group ->
deformable_group, pads [top, left, bottom, right] -> padding only when top == bottom and
left == right (the plugin pads each axis by one number). Offsets are (y, x) pairs per
kernel position in both, and both sample bilinearly with zero outside the image.

Declined: inputs other than 2-D (rank-4 X), asymmetric pads, and a missing mask or bias
whose constant stand-in cannot be built exactly: a mask of ones needs the offset's static
shape; a zero bias needs the weight's static output-channel count.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PluginMatch, PluginSpec


def _static(shape) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return [int(d) for d in shape]


def _present(node: gs.Node, i: int) -> gs.Tensor | None:
    if len(node.inputs) <= i or node.inputs[i] is None or not node.inputs[i].name:
        return None
    return node.inputs[i]


class DeformConvSpec(PluginSpec):
    """DeformConv (2-D, symmetric pads) as NVIDIA's ModulatedDeformConv2d plugin."""

    name = "deform-conv"
    plugin = "ModulatedDeformConv2d"
    version = "1"
    ops = frozenset({"DeformConv"})
    fields = {"stride": "int32[]", "padding": "int32[]", "dilation": "int32[]", "group": "int32",
              "deformable_group": "int32"}

    def match(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        if len(node.inputs) < 3 or len(node.outputs) != 1:
            return Decline("DeformConv needs X, W and offset, and one output")
        x, w, offset = node.inputs[0], node.inputs[1], node.inputs[2]
        for label, t in (("X", x), ("W", w), ("offset", offset)):
            if t.shape is not None and len(t.shape) != 4:
                return Decline(f"{label} has rank {len(t.shape)}: the plugin is 2-D only (rank 4)")
        if x.shape is None and w.shape is None:
            return Decline("the rank of X and W is unknown; the plugin is 2-D only")
        strides = [int(v) for v in node.attrs.get("strides", [1, 1])]
        dilations = [int(v) for v in node.attrs.get("dilations", [1, 1])]
        pads = [int(v) for v in node.attrs.get("pads", [0, 0, 0, 0])]
        if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
            return Decline("strides, dilations and pads are not 2-D")
        if pads[0] != pads[2] or pads[1] != pads[3]:
            return Decline(f"asymmetric pads {pads}: the plugin pads each axis by one number")
        group, offset_group = int(node.attrs.get("group", 1)), int(node.attrs.get("offset_group", 1))
        bias, mask = _present(node, 3), _present(node, 4)
        if bias is None:
            wshape = _static(w.shape)
            if wshape is None:
                return Decline("no bias, and W's output-channel count is not static for a zero bias")
            bias = gs.Constant(f"{node.outputs[0].name}_deform_bias_zeros", np.zeros(wshape[0], np.float32))
        if mask is None:
            oshape = _static(offset.shape)
            if oshape is None:
                return Decline("no mask, and the offset's shape is not static for a mask of ones")
            mshape = [oshape[0], oshape[1] // 2, oshape[2], oshape[3]]
            mask = gs.Constant(f"{node.outputs[0].name}_deform_mask_ones", np.ones(mshape, np.float32))
        fields = {"stride": strides, "padding": [pads[0], pads[1]], "dilation": dilations, "group": group,
                  "deformable_group": offset_group}
        return PluginMatch([node], [x, offset, mask, w, bias], list(node.outputs), fields,
                           f"DeformConv -> {self.plugin} (stride {strides}, padding {fields['padding']}, "
                           f"dilation {dilations}, group {group}, deformable_group {offset_group})")

    def output_dims(self, fields, input_ranks):
        return [[(0, 0), (3, 0), (1, 2), (1, 3)]]

    def output_types(self, fields, num_inputs):
        return [("input", 0)]

    def reference(self, inputs, fields):
        x, offset, mask, weight, bias = inputs
        sh, sw = (int(v) for v in fields["stride"])
        ph, pw = (int(v) for v in fields["padding"])
        dh, dw = (int(v) for v in fields["dilation"])
        group, dg = int(fields["group"]), int(fields["deformable_group"])
        n, c, h, w = x.shape
        oc, cg, kh, kw = weight.shape
        oh, ow = offset.shape[2], offset.shape[3]
        xs = x.astype(np.float64)
        off = offset.astype(np.float64).reshape(n, dg, kh * kw, 2, oh, ow)
        msk = mask.astype(np.float64).reshape(n, dg, kh * kw, oh, ow)
        base_y = (np.arange(oh) * sh - ph)[:, None]
        base_x = (np.arange(ow) * sw - pw)[None, :]
        cols = np.zeros((n, c, kh * kw, oh, ow))
        per = c // dg
        for b in range(n):
            for g in range(dg):
                img = xs[b, g * per:(g + 1) * per]
                for k in range(kh * kw):
                    i, j = divmod(k, kw)
                    y = base_y + i * dh + off[b, g, k, 0]
                    xx = base_x + j * dw + off[b, g, k, 1]
                    cols[b, g * per:(g + 1) * per, k] = _bilinear(img, y, xx, h, w) * msk[b, g, k]
        out = np.zeros((n, oc, oh, ow))
        ocg = oc // group
        wt = weight.astype(np.float64).reshape(group, ocg, cg * kh * kw)
        for g in range(group):
            col = cols[:, g * cg:(g + 1) * cg].reshape(n, cg * kh * kw, oh * ow)
            out[:, g * ocg:(g + 1) * ocg] = np.einsum("ok,nkp->nop", wt[g], col).reshape(n, ocg, oh, ow)
        out += bias.astype(np.float64)[None, :, None, None]
        return [out.astype(x.dtype)]


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray, h: int, w: int) -> np.ndarray:
    """img [C, H, W] sampled at (y, x) [OH, OW]: zero outside (-1, H) x (-1, W), and each
    corner outside the image counts as zero."""
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    ly, lx = y - y0, x - x0
    out = np.zeros((img.shape[0],) + y.shape)
    for yy, xx, wgt in ((y0, x0, (1 - ly) * (1 - lx)), (y0, x0 + 1, (1 - ly) * lx),
                        (y0 + 1, x0, ly * (1 - lx)), (y0 + 1, x0 + 1, ly * lx)):
        ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        vals = img[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        out += np.where(ok, wgt, 0.0) * vals
    return out
