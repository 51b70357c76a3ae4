"""RoiAlign -> NVIDIA's ``ROIAlign_TRT`` plugin (version 1, default namespace).

TensorRT's parser imports ``RoiAlign`` only through that plugin. Fields, from TensorRT's
``plugin/roiAlignPlugin`` README: int32 ``coordinate_transformation_mode`` (1: half_pixel,
0: output_half_pixel), ``mode`` (1: avg, 0: max), ``output_height``, ``output_width``,
``sampling_ratio``; float32 ``spatial_scale``. Inputs X [N, C, H, W], rois [R, 4],
batch_indices [R] as int32 (a Cast is inserted: ONNX gives int64); output
[R, C, output_height, output_width].

Declined: max mode (onnxruntime's max mode takes the largest of the four weighted corner
terms of each sample, which the reference below does not reproduce).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PluginMatch, PluginSpec


class RoiAlignSpec(PluginSpec):
    """RoiAlign (avg mode) as NVIDIA's ROIAlign_TRT plugin."""

    name = "roi-align"
    plugin = "ROIAlign_TRT"
    version = "1"
    ops = frozenset({"RoiAlign"})
    fields = {"coordinate_transformation_mode": "int32", "mode": "int32", "output_height": "int32",
              "output_width": "int32", "sampling_ratio": "int32", "spatial_scale": "float32"}

    def match(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        if len(node.inputs) != 3 or len(node.outputs) != 1:
            return Decline("RoiAlign needs X, rois and batch_indices, and one output")
        mode = node.attrs.get("mode", "avg")
        if mode != "avg":
            return Decline(f"mode {mode!r}: only avg is substituted (see the spec's docstring)")
        default = "half_pixel" if graph.opset >= 16 else "output_half_pixel"
        ctm = node.attrs.get("coordinate_transformation_mode", default)
        shape = node.inputs[0].shape
        if shape is not None and len(shape) != 4:
            return Decline(f"X has rank {len(shape)}, the plugin takes 4")
        fields = {"coordinate_transformation_mode": int(ctm == "half_pixel"), "mode": 1,
                  "output_height": int(node.attrs.get("output_height", 1)),
                  "output_width": int(node.attrs.get("output_width", 1)),
                  "sampling_ratio": int(node.attrs.get("sampling_ratio", 0)),
                  "spatial_scale": float(node.attrs.get("spatial_scale", 1.0))}
        return PluginMatch([node], list(node.inputs), list(node.outputs), fields,
                           f"RoiAlign -> {self.plugin} ({ctm}, {fields['output_height']}x{fields['output_width']})",
                           casts={2: np.dtype(np.int32)})

    def output_dims(self, fields, input_ranks):
        return [[(1, 0), (0, 1), int(fields["output_height"]), int(fields["output_width"])]]

    def output_types(self, fields, num_inputs):
        return [("input", 0)]

    def reference(self, inputs, fields):
        x, rois, batch = inputs
        oh, ow = int(fields["output_height"]), int(fields["output_width"])
        scale, ratio = float(fields["spatial_scale"]), int(fields["sampling_ratio"])
        half = bool(fields["coordinate_transformation_mode"])
        _, c, h, w = x.shape
        out = np.zeros((len(rois), c, oh, ow), dtype=np.float64)
        offset = 0.5 if half else 0.0
        for r, (roi, b) in enumerate(zip(rois.astype(np.float64), batch)):
            x1, y1, x2, y2 = roi * scale - offset
            rw, rh = x2 - x1, y2 - y1
            if not half:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            bh, bw = rh / oh, rw / ow
            gh = ratio if ratio > 0 else int(math.ceil(rh / oh))
            gw = ratio if ratio > 0 else int(math.ceil(rw / ow))
            count = max(gh * gw, 1)
            img = x[int(b)].astype(np.float64)
            for ph in range(oh):
                for pw in range(ow):
                    acc = np.zeros(c)
                    for iy in range(gh):
                        yy = y1 + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            xx = x1 + pw * bw + (ix + 0.5) * bw / gw
                            acc += _bilinear(img, yy, xx, h, w)
                    out[r, :, ph, pw] = acc / count
        return [out.astype(x.dtype)]


def _bilinear(img: np.ndarray, y: float, x: float, h: int, w: int) -> np.ndarray:
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(img.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= h - 1:
        yl = yh = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xl = xh = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    hy, hx = 1.0 - ly, 1.0 - lx
    return hy * hx * img[:, yl, xl] + hy * lx * img[:, yl, xh] + ly * hx * img[:, yh, xl] + ly * lx * img[:, yh, xh]
