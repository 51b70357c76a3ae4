"""The NMS post-processing tails ``efficient_nms`` can replace, each a pattern graph for
:class:`~fusekit.plugins._nms_pattern.Pattern` plus what it takes from the bound values.

A tail whose outputs are EfficientNMS_TRT's own maps them one to one; one with other
outputs (mmdeploy's dets/labels) gives ``rebuild``, the ordinary ONNX nodes that compute
its outputs, exactly, from the plugin's four.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.plugins._nms_pattern import Bound, const, single_value


@dataclass
class Tail:
    """One post-processing form: its pattern, what it takes from the bound values, its outputs."""

    name: str
    text: str
    # bound -> (K, reason or None); K is the number of rows the tail keeps per image
    top_k: Callable[[Bound], tuple[int | None, str | None]]
    # (graph, plugin outputs, the tail's outputs, K, fresh name) -> (nodes, new outputs); None: one to one
    rebuild: Callable | None = None
    note: str = ""


# The documented tail (plugins/efficient_nms.py's docstring), outputs one to one.
DOCUMENTED = """
documented (float boxes, float scores, int64 per_class, float iou, float score_thr, float fill, int64 k)
    => (int32 num_detections, float detection_boxes, float detection_scores, int32 detection_classes)
<int64 i0 = {0}, int64 i1 = {1}, int64 i2 = {2}, int64 n = {$N}, int64[1] ax1 = {1}, int64[1] axm1 = {-1},
 int64[1] zero_1d = {0}, int64[1] cn = {$CN}, float f0 = {0}, int32 z32 = {0}>
{
    scores_cn = Transpose <perm = [0, 2, 1]> (scores)
    selected = NonMaxSuppression (boxes, scores_cn, per_class, iou, score_thr)
    sel_b = Gather <axis = 1> (selected, i0)
    sel_c = Gather <axis = 1> (selected, i1)
    sel_n = Gather <axis = 1> (selected, i2)
    sel_cn = Mul (sel_c, n)
    sel_flat = Add (sel_cn, sel_n)
    sel_b2 = Unsqueeze (sel_b, ax1)
    sel_flat2 = Unsqueeze (sel_flat, ax1)
    scatter_idx = Concat <axis = 1> (sel_b2, sel_flat2)
    sel_scores = GatherND (scores_cn, selected)
    boxes_shape = Shape (boxes)
    batch = Slice (boxes_shape, zero_1d, ax1)
    dense_shape = Concat <axis = 0> (batch, cn)
    dense_fill = Expand (fill, dense_shape)
    dense = ScatterND (dense_fill, scatter_idx, sel_scores)
    top_scores, top_idx = TopK <axis = 1, largest = 1, sorted = 1> (dense, k)
    valid = Greater (top_scores, fill)
    valid32 = Cast <to = 6> (valid)
    num_detections = ReduceSum <keepdims = 1> (valid32, ax1)
    top_c = Div (top_idx, n)
    top_n = Mod (top_idx, n)
    top_n2 = Unsqueeze (top_n, axm1)
    top_boxes = GatherND <batch_dims = 1> (boxes, top_n2)
    valid3 = Unsqueeze (valid, axm1)
    detection_boxes = Where (valid3, top_boxes, f0)
    detection_scores = Where (valid, top_scores, f0)
    top_c32 = Cast <to = 6> (top_c)
    detection_classes = Where (valid, top_c32, z32)
}
"""

# mmdeploy/mmcv/ops/nms.py: _multiclass_nms (pre_top_k -1, dynamic batch) + _select_nms_index, as torch 2.x's
# TorchScript exporter writes it (opsets 11..17) after cleanup: nodes up to the score column TopK ranks...
_MMDEPLOY_CONSTANTS = """
<int64 i0 = {0}, int64 i1 = {1}, int64 i2 = {2}, int64 im1 = {-1}, int64[1] n = {$N}, int64[1] cn = {$CN},
 int64[1] m1 = {-1}, int64[1] one = {1}, int64[1] zero_ax = {0}, int64[1] one_ax = {1}, int64[1] m1_ax = {-1},
 int64[1] five = {5}, float[1] f0 = {0}, int64[1] m1_label = {-1}, int64[2] col = {-1, 1}, int64[1] one_idx = {1},
 int64[2] m1_5 = {-1, 5}>
{
    shape_s = Shape (scores)
    batch = Gather <axis = 0> (shape_s, i0)
    scores_cn = Transpose <perm = [0, 2, 1]> (scores)
    selected = NonMaxSuppression (boxes, scores_cn, per_class, iou, score_thr)
    sel_b = Gather <axis = 1> (selected, i0)
    sel_c = Gather <axis = 1> (selected, i1)
    sel_n = Gather <axis = 1> (selected, i2)
    scores_flat = Flatten <axis = 3> (scores_cn)
    c_n = Mul (sel_c, n)
    cn_n = Add (sel_n, c_n)
    b_cn = Mul (sel_b, cn)
    flat = Add (cn_n, b_cn)
    sel_score2 = Gather <axis = 0> (scores_flat, flat)
    sel_score1 = Reshape (sel_score2, m1)
    sel_score = Unsqueeze (sel_score1, one_ax)
    boxes_flat = Flatten <axis = 2> (boxes)
    b_n = Mul (sel_b, n)
    bn_n = Add (sel_n, b_n)
    sel_boxes = Gather <axis = 0> (boxes_flat, bn_n)
    dets0 = Concat <axis = 1> (sel_boxes, sel_score)
    dets1 = Unsqueeze (dets0, zero_ax)
    batch1 = Unsqueeze (batch, zero_ax)
    reps3 = Concat <axis = 0> (batch1, one, one)
    dets_tiled = Tile (dets1, reps3)
    templ = Range (i0, batch, i1)
    templ2 = Unsqueeze (templ, one_ax)
    same = Equal (sel_b, templ2)
    same3 = Unsqueeze (same, m1_ax)
    dets_b = Where (same3, dets_tiled, f0)
    labels1 = Unsqueeze (sel_c, zero_ax)
    reps2 = Concat <axis = 0> (batch1, one)
    labels_tiled = Tile (labels1, reps2)
    labels_b = Where (same, labels_tiled, m1_label)
    dets_shape = Shape (dets_b)
    rows = Gather <axis = 0> (dets_shape, i0)
    rows1 = Unsqueeze (rows, zero_ax)
    pad_shape = Concat <axis = 0> (rows1, one, five)
    pad = ConstantOfShape <value = float[1] {0}> (pad_shape)
    dets_p = Concat <axis = 1> (dets_b, pad)
    lpad_shape = Concat <axis = 0> (rows1, one)
    lpad = ConstantOfShape <value = int64[1] {0}> (lpad_shape)
    labels_p = Concat <axis = 1> (labels_b, lpad)
    det_scores = Gather <axis = 2> (dets_p, im1)
"""

# The K best rows by score: K a constant, or (mmdeploy's topk__dynamic) K' = min(K, rows).
_CONSTANT_K_TOPK = """    top_scores, top_idx = TopK <axis = 1, largest = 1, sorted = 1> (det_scores, k)
"""
_RUNTIME_K_TOPK = """    sshape = Shape (det_scores)
    srows = Gather <axis = 0> (sshape, i1)
    k_less = Less (k, srows)
    k_rt = Where (k_less, k, srows)
    k1 = Reshape (k_rt, one)
    top_scores, top_idx = TopK <axis = 1, largest = 1, sorted = 1> (det_scores, k1)
"""
# Batched: those rows' flat indices into dets_p [B,R,5] and labels_p [B,R] (row b*R + i).
_BATCHED_ROW_INDICES = """    templ_col = Reshape (templ, col)
    dshape = Shape (dets_p)
    drows = Gather <axis = 0> (dshape, one_idx)
    dets_flat = Flatten <axis = 2> (dets_p)
    doff = Mul (templ_col, drows)
    didx = Add (top_idx, doff)
    lshape = Shape (labels_p)
    lrows = Gather <axis = 0> (lshape, one_idx)
    labels_flat = Flatten <axis = 2> (labels_p)
    loff = Mul (templ_col, lrows)
    lidx = Add (top_idx, loff)
"""

# ... with a constant keep_top_k: dets [B,K,5], labels [B,K] ...
MMDEPLOY_BATCHED = """
mmdeploy_batched (float boxes, float scores, int64 per_class, float iou, float score_thr, int64 k,
                  int64 labels_shape) => (float dets, int64 labels)
""" + _MMDEPLOY_CONSTANTS + _CONSTANT_K_TOPK + _BATCHED_ROW_INDICES + """    dets = Gather <axis = 0> (dets_flat, didx)
    labels3 = Gather <axis = 0> (labels_flat, lidx)
    labels = Reshape (labels3, labels_shape)
}
"""

# ... and as mmdeploy's ONNX Runtime export writes it: Tensor.topk rewritten by topk__dynamic
# (mmdeploy/pytorch/functions/topk.py) to K' = where(K < rows, K, rows), rows = S + 1: dets [B,K',5].
MMDEPLOY_BATCHED_RUNTIME_K = """
mmdeploy_batched_runtime_k (float boxes, float scores, int64 per_class, float iou, float score_thr, int64 k)
    => (float dets, int64 labels)
""" + _MMDEPLOY_CONSTANTS + _RUNTIME_K_TOPK + _BATCHED_ROW_INDICES + """    dets_g = Gather <axis = 0> (dets_flat, didx)
    dets_r = Reshape (dets_g, m1_5)
    ishape = Shape (didx)
    dets_outshape = Concat <axis = 0> (ishape, five)
    dets = Reshape (dets_r, dets_outshape)
    labels_g = Gather <axis = 0> (labels_flat, lidx)
    labels_r = Reshape (labels_g, m1)
    lishape = Shape (lidx)
    labels = Reshape (labels_r, lishape)
}
"""


# mmdeploy/mmcv/ops/nms.py: _multiclass_nms_single (static batch 1, pre_top_k -1): dets [1,K,5], labels [1,K]
# with a constant keep_top_k, or [1,K',5] / [1,K'] with topk__dynamic's K' = min(keep_top_k, S + 1).
_MMDEPLOY_SINGLE_CONSTANTS = """
<int64 i1 = {1}, int64 i2 = {2}, int64 im1 = {-1}, int64[1] n = {$N}, int64[1] zero_ax = {0}, int64[1] two_ax = {2},
 int64[1] one = {1}, int64[1,1] zero_label = {0}, float[1,1,5] zero_row = {0, 0, 0, 0, 0}>
{
    scores_cn = Transpose <perm = [0, 2, 1]> (scores)
    scores_t = Transpose <perm = [2, 1, 0]> (scores)
    selected = NonMaxSuppression (boxes, scores_cn, per_class, iou, score_thr)
    scores_flat = Flatten <axis = 2> (scores_t)
    sel_c = Gather <axis = 1> (selected, i1)
    sel_n = Gather <axis = 1> (selected, i2)
    c_n = Mul (sel_c, n)
    sel_boxes = Gather <axis = 1> (boxes, sel_n)
    labels0 = Unsqueeze (sel_c, zero_ax)
    flat = Add (sel_n, c_n)
    labels_p = Concat <axis = 1> (labels0, zero_label)
    sel_score2 = Gather <axis = 0> (scores_flat, flat)
    sel_score1 = Transpose <perm = [1, 0]> (sel_score2)
    sel_score = Unsqueeze (sel_score1, two_ax)
    dets0 = Concat <axis = 2> (sel_boxes, sel_score)
    dets_p = Concat <axis = 1> (dets0, zero_row)
    det_scores = Gather <axis = 2> (dets_p, im1)
"""
_MMDEPLOY_SINGLE_GATHER = """
    idx = Squeeze (top_idx, zero_ax)
    dets = Gather <axis = 1> (dets_p, idx)
    labels = Gather <axis = 1> (labels_p, idx)
}
"""
MMDEPLOY_SINGLE = """
mmdeploy_single (float boxes, float scores, int64 per_class, float iou, float score_thr, int64 k)
    => (float dets, int64 labels)
""" + _MMDEPLOY_SINGLE_CONSTANTS + _CONSTANT_K_TOPK + _MMDEPLOY_SINGLE_GATHER
MMDEPLOY_SINGLE_RUNTIME_K = """
mmdeploy_single_runtime_k (float boxes, float scores, int64 per_class, float iou, float score_thr, int64 k)
    => (float dets, int64 labels)
""" + _MMDEPLOY_SINGLE_CONSTANTS + _RUNTIME_K_TOPK + _MMDEPLOY_SINGLE_GATHER


def _constant_k(bound: Bound) -> tuple[int | None, str | None]:
    k = single_value(bound.tensors["k"])
    if k is None:
        return None, "TopK's K is computed at run time"
    return int(k), None


def _documented_k(bound: Bound) -> tuple[int | None, str | None]:
    fill = single_value(bound.tensors["fill"])
    if fill is None or fill > -1e38:
        return None, "the padding is not a constant fill below every score (<= -1e38)"
    return _constant_k(bound)


def _mmdeploy_k(bound: Bound) -> tuple[int | None, str | None]:
    k, why = _constant_k(bound)
    if why:
        return k, why
    if "labels_shape" in bound.tensors:
        shape = const(bound.tensors["labels_shape"])
        if shape is None or shape.tolist() != [-1, k]:
            return None, f"labels are not reshaped to [-1, {k}]"
    if single_value(bound.tensors["score_thr"]) < 0:
        return None, "score_threshold < 0: a kept score can tie the zero score of padding rows"
    return k, None


def _mmdeploy_single_k(bound: Bound) -> tuple[int | None, str | None]:
    if bound.tensors["boxes"].shape[0] != 1:
        return None, f"the single-image tail on a batch of {bound.tensors['boxes'].shape[0]}"
    return _mmdeploy_k(bound)


def _mmdeploy_rebuild(graph: gs.Graph, plugin_out: list[gs.Tensor], outs: list[gs.Tensor], k: int,
                      fresh: Callable[[str], str], runtime_k: bool = False) -> tuple[list[gs.Node], list[gs.Tensor]]:
    """dets [B,K,5] and labels [B,K] from num_detections, boxes, scores and classes.

    Rows past num_detections: dets 0 and label -1, except the row at position S (the
    number of selections over the whole batch), which is mmdeploy's appended zero row and
    has label 0; S < K exactly when it is the sum of num_detections (no image was capped).
    ``runtime_k``: the first min(K, S + 1) rows (a Slice to min(K, sum + 1): the sum of
    num_detections is S whenever S + 1 <= K, and >= K whenever an image was capped)."""
    num, boxes, scores, classes = plugin_out
    dets, labels = outs
    opset = graph.opset or 11
    nodes: list[gs.Node] = []

    def op(kind, inputs, dtype, attrs=None, name=None):
        out = gs.Variable(fresh(f"{name or kind}_out"), dtype=dtype)
        nodes.append(gs.Node(kind, fresh(f"{dets.name}_{kind}"), attrs=attrs or {}, inputs=inputs, outputs=[out]))
        return out

    def unsqueeze(x, axis, dtype):
        if opset >= 13:
            return op("Unsqueeze", [x, gs.Constant(fresh("axes"), np.array([axis], np.int64))], dtype)
        return op("Unsqueeze", [x], dtype, {"axes": [axis]})

    pos = gs.Constant(fresh("positions"), np.arange(k, dtype=np.int32))
    valid = op("Less", [pos, num], np.bool_, name="valid")  # [B,K]
    total = op("ReduceSum", [num], np.int32, {"keepdims": 0}, name="selections")  # scalar
    last = op("Equal", [pos, total], np.bool_, name="zero_row")  # [K]
    pad_label = op("Where", [last, gs.Constant(fresh("label0"), np.array(0, np.int64)),
                             gs.Constant(fresh("label_m1"), np.array(-1, np.int64))], np.int64)
    classes64 = op("Cast", [classes], np.int64, {"to": onnx.TensorProto.INT64})
    new_labels = op("Where", [valid, classes64, pad_label], np.int64, name=labels.name)
    score3 = unsqueeze(scores, 2, dets.dtype)
    rows = op("Concat", [boxes, score3], dets.dtype, {"axis": 2})
    valid3 = unsqueeze(valid, 2, np.bool_)
    new_dets = op("Where", [valid3, rows, gs.Constant(fresh("zero"), np.zeros((), dets.dtype))], dets.dtype,
                  name=dets.name)
    if runtime_k:
        total64 = op("Cast", [total], np.int64, {"to": onnx.TensorProto.INT64})
        k_t = gs.Constant(fresh("k"), np.array([k], np.int64))
        all_rows = op("Add", [total64, gs.Constant(fresh("one"), np.array([1], np.int64))], np.int64)
        fewer = op("Less", [k_t, all_rows], np.bool_)  # Min has no int64 before opset 12
        rows_kept = op("Where", [fewer, k_t, all_rows], np.int64, name="rows")
        zero = gs.Constant(fresh("start"), np.array([0], np.int64))
        axis = gs.Constant(fresh("axis"), np.array([1], np.int64))
        new_dets = op("Slice", [new_dets, zero, rows_kept, axis], dets.dtype, name=dets.name)
        new_labels = op("Slice", [new_labels, zero, rows_kept, axis], np.int64, name=labels.name)
    new_dets.shape, new_labels.shape = dets.shape, labels.shape
    return nodes, [new_dets, new_labels]


TAILS = [
    Tail("documented top-K tail", DOCUMENTED, _documented_k),
    Tail("mmdeploy multiclass_nms (dynamic batch)", MMDEPLOY_BATCHED, _mmdeploy_k, _mmdeploy_rebuild,
         note="dets/labels rebuilt from the plugin's outputs"),
    Tail("mmdeploy multiclass_nms (dynamic batch, run-time K)", MMDEPLOY_BATCHED_RUNTIME_K, _mmdeploy_k,
         partial(_mmdeploy_rebuild, runtime_k=True),
         note="dets/labels rebuilt from the plugin's outputs, sliced to min(K, selections + 1) rows"),
    Tail("mmdeploy multiclass_nms (batch 1)", MMDEPLOY_SINGLE, _mmdeploy_single_k, _mmdeploy_rebuild,
         note="dets/labels rebuilt from the plugin's outputs"),
    Tail("mmdeploy multiclass_nms (batch 1, run-time K)", MMDEPLOY_SINGLE_RUNTIME_K, _mmdeploy_single_k,
         partial(_mmdeploy_rebuild, runtime_k=True),
         note="dets/labels rebuilt from the plugin's outputs, sliced to min(K, selections + 1) rows"),
]
