"""Ultralytics' ``nms=True`` ONNX export (YOLOv5u/v8/11 detection): its per-image NMS tail as
a pattern graph for :class:`~fusekit.plugins._nms_pattern.Pattern`, the checks on what the
pattern leaves free, and the nodes that rebuild the tail's rows from EfficientNMS_TRT.

``ultralytics/engine/exporter.py`` ``NMSModel.forward``, for each image ``i`` of the traced
batch: the best class of each box (ReduceMax + ArgMax over ``scores [B,N,C]``), the boxes
scoring above ``conf`` (Greater -> NonZero -> GatherND), divided by the larger image side
and (class-aware) offset by their class, torchvision's ``nms`` (NonMaxSuppression without
a score threshold, column 2), the first ``max_det`` kept, rows ``[x1, y1, x2, y2, score,
class]`` zero-padded (Pad) to ``max_det`` and written into ``output0[i]`` (ScatterND into
zeros). The pattern ends at that ScatterND's update ``[1, K, 6]``: the zeros, the ScatterND
and the final batch Slice stay as they are and read the rebuilt rows instead.

Forms (after fusekit's cleanup): as exported, and after onnxslim (Ultralytics' default
``simplify=True``), which drops the empty ``extras`` columns and the Expand before the
ScatterND; class-aware or ``agnostic_nms``. Static and dynamic batch share the per-image
tail; an export traced at batch M has M of them, all replaced by one plugin. Matched:
the TorchScript exporter's graph (``ultralytics/utils/export.py`` uses it whenever
``dynamic`` and on torch < 2.7); a static export through torch's dynamo exporter is not.

Semantics and where they meet EfficientNMS_TRT: the plugin gets the boxes and the class
scores with every class but the box's ArgMax set to 0 (so each box competes only as its
best class, as in Ultralytics), score_threshold ``conf`` (declined unless > 0, so the
zeroed classes never pass it), ``class_agnostic`` for ``agnostic_nms``. Ultralytics'
class-aware NMS offsets the scaled boxes by their class instead of separating classes:
the two agree whenever boxes of different classes cannot overlap after the offset, which
holds when all box coordinates lie within one larger image side of each other (boxes in
the image); a box reaching more than a whole image side past another class's box can be
suppressed across classes by Ultralytics and not by the plugin. Dividing by the image
side changes IoU only by rounding. The plugin's own limits (ties, its pre-NMS top-k of
4096 candidates per image) are in ``plugins/efficient_nms.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit.plugins._nms_pattern import Bound, Pattern, const, single_value

_SIGNATURE = """
ultralytics (float boxes, float scores, float extras, int64 i_box, int64 i_score, int64 i_cls, int64 i_extra,
             float conf, float scale, int64 per_class, float iou, int64 k_keep, int64 k_pad, int64 k_rows,
             int64 k_update) => (float update)
<int64[1] zero = {0}, int64[1] one = {1}, int64[1] two = {2}, int64[1] four = {4}, int64 i0 = {0},
 int64[1] m1 = {-1}, int64[2] m1_1 = {-1, 1}, int64[2] m1_2 = {-1, 2}, int64[2] one_4 = {1, 4},
 int64[2] zero_one = {0, 1}, int64[1] imax = {9223372036854775807}, int64[1] imin = {-9223372036854775807},
 int64[0] empty = {}>
{
    score_all = ReduceMax <axes = [-1], keepdims = 0> (scores)
    cls_all = ArgMax <axis = -1, keepdims = 0> (scores)
    box_i = Gather <axis = 0> (boxes, i_box)
    score_i = Gather <axis = 0> (score_all, i_score)
    cls_i = Gather <axis = 0> (cls_all, i_cls)
    mask = Greater (score_i, conf)
    nz = NonZero (mask)
    idx = Transpose <perm = [1, 0]> (nz)
    box_s = GatherND (box_i, idx)
    score_s = GatherND (score_i, idx)
    cls_s = GatherND (cls_i, idx)
    nmsbox = Div (box_s, scale)
"""
_EXTRAS = """    extra_i = Gather <axis = 0> (extras, i_extra)
    extra_s = GatherND (extra_i, idx)
"""
_OFFSET = """    cls_col = Reshape (cls_s, m1_1)
    cls_x = Expand (cls_col, one_4)
    cls_f = Cast <to = 1> (cls_x)
    box4 = Slice (nmsbox, zero, four, one, one)
    offbox = Add (box4, cls_f)
"""
_OFFSET_REST = """    rest = Slice (nmsbox, four, imax, one, one)
    offall = Concat <axis = -1> (offbox, rest)
"""
_NMS = """    boxes_u = Unsqueeze ({box_in}, zero)
    scores_u = Unsqueeze (score_s, zero_one)
    sel = NonMaxSuppression (boxes_u, scores_u, per_class, iou)
    col = Gather <axis = 1> (sel, two)
    keep_all = Squeeze (col, one)
    keep = Slice (keep_all, zero, k_keep, zero, one)
    box_k = Gather <axis = 0> (box_s, keep)
    score_k1 = Gather <axis = 0> (score_s, keep)
    score_k = Reshape (score_k1, m1_1)
    cls_k1 = Gather <axis = 0> (cls_s, keep)
    cls_k2 = Reshape (cls_k1, m1_1)
    cls_k = Cast <to = 1> (cls_k2)
"""
_DETS = "    dets = Concat <axis = -1> (box_k, score_k, cls_k)\n"
_DETS_EXTRAS = """    extra_k = Gather <axis = 0> (extra_s, keep)
    dets = Concat <axis = -1> (box_k, score_k, cls_k, extra_k)
"""
_PADS = """    dshape = Shape (dets)
    rows = Gather <axis = 0> (dshape, i0)
    missing = Sub (k_pad, rows)
    missing1 = Unsqueeze (missing, zero)
    pads0 = Concat <axis = 0> (zero, zero, zero, missing1)
"""
_PADS_REST = """    pads3 = Slice (pads2, m1, imin, zero, m1)
    pads4 = Transpose <perm = [1, 0]> (pads3)
    pads = Reshape (pads4, m1)
    padded = Pad <mode = "constant"> (dets, pads, "")
"""
_AS_EXPORTED_END = """    pads1 = Concat <axis = 0> (pads0, empty)
    pads2 = Reshape (pads1, m1_2)
""" + _PADS_REST + """    expanded = Expand (padded, k_rows)
    update = Reshape (expanded, k_update)
}
"""
_SLIMMED_END = """    pads2 = Reshape (pads0, m1_2)
""" + _PADS_REST + """    update = Reshape (padded, k_update)
}
"""


@dataclass(frozen=True)
class Form:
    """One form of the tail: slimmed by onnxslim or not, class-aware or agnostic, and as
    fusekit's own cleanup leaves it or not (``cleaned``: remove-noops drops the Slice of a
    box's four columns, which is the whole box without extras, and flatten-concats merges the
    pads' two Concats into one)."""

    slim: bool
    agnostic: bool
    cleaned: bool = False

    @property
    def name(self) -> str:
        return f"Ultralytics NMSModel ({'agnostic' if self.agnostic else 'class-aware'}, " \
               f"{'onnxslim' if self.slim else 'as exported'}{', cleaned' if self.cleaned else ''})"

    @property
    def text(self) -> str:
        body = _SIGNATURE + ("" if self.slim else _EXTRAS)
        if self.agnostic:
            box_in = "nmsbox"
        else:
            offset = _OFFSET
            if self.cleaned:
                offset = offset.replace("    box4 = Slice (nmsbox, zero, four, one, one)\n", "") \
                               .replace("Add (box4, cls_f)", "Add (nmsbox, cls_f)")
            body += offset + ("" if self.slim else _OFFSET_REST)
            box_in = "offbox" if self.slim else "offall"
        body += _NMS.format(box_in=box_in) + (_DETS if self.slim else _DETS_EXTRAS)
        if self.slim:
            return body + _PADS + _SLIMMED_END
        if self.cleaned:
            return body + _PADS.replace("pads0 = Concat <axis = 0> (zero, zero, zero, missing1)",
                                        "pads1 = Concat <axis = 0> (zero, zero, zero, missing1, empty)") \
                + _AS_EXPORTED_END.replace("    pads1 = Concat <axis = 0> (pads0, empty)\n", "")
        return body + _PADS + _AS_EXPORTED_END


FORMS = [Form(slim, agnostic, cleaned) for slim in (False, True) for agnostic in (False, True)
         for cleaned in (False, True) if not (cleaned and slim and agnostic)]


@cache
def pattern(form: Form) -> Pattern:
    return Pattern(form.text, 0, 0)


@dataclass
class Found:
    """The tail matched: the image it writes, the plugin fields, what the rebuild reads."""

    form: Form
    bound: Bound
    image: int
    k: int
    conf: float
    iou: float


def match(node: gs.Node, update: gs.Tensor) -> Found | str:
    """The per-image tail around NonMaxSuppression ``node`` ending at ``update``, or why not."""
    boxes, scores = _heads(node)
    if boxes is None:
        return "its boxes and scores are not the per-image Gather of [B,N,4] boxes and [B,N,C] scores " \
               "Ultralytics' NMSModel writes"
    tried = []
    for form in FORMS:
        bound = pattern(form).match([update], boxes, scores)
        if isinstance(bound, str):
            tried.append(f"{form.name}: {bound}")
            continue
        if node not in bound.nodes.values():
            tried.append(f"{form.name}: matched around another NonMaxSuppression")
            continue
        found = _check(form, bound)
        if isinstance(found, str):
            return f"{form.name}: {found}"
        return found
    return "; ".join(tried)


def _heads(node: gs.Node) -> tuple[gs.Tensor | None, gs.Tensor | None]:
    """The boxes [B,N,4] and scores [B,N,C] the pattern starts from, found by walking up from
    the NMS: scores_u <- Unsqueeze <- GatherND(Gather(ReduceMax(scores), i), idx), and the
    GatherND(Gather(boxes, i), idx) reading the same idx (the pattern checks the rest)."""
    try:
        score_s = node.inputs[1].inputs[0].inputs[0].inputs[0]
        score_i, idx = score_s.inputs
        scores = score_i.inputs[0].inputs[0].inputs[0].inputs[0]
        heads = [g.inputs[0].inputs[0].inputs[0] for g in idx.outputs if g.op == "GatherND"
                 and g.inputs[0].inputs and g.inputs[0].inputs[0].op == "Gather"]
    except (IndexError, ValueError, AttributeError):
        return None, None
    boxes = [b for b in heads if len(b.shape or []) == 3 and b.shape[2] == 4]
    if len(boxes) != 1 or len(scores.shape or []) != 3:
        return None, None
    return boxes[0], scores


def _check(form: Form, bound: Bound) -> Found | str:
    t = bound.tensors
    images = {single_value(t[n]) for n in ("i_box", "i_score", "i_cls") + (() if form.slim else ("i_extra",))}
    if len(images) != 1 or None in images:
        return "the per-image Gathers do not read one constant image index"
    k_keep = const(t["k_keep"])
    if k_keep is None or k_keep.size != 1:
        return "max_det is not a constant"
    k = int(k_keep.reshape(-1)[0])
    if single_value(t["k_pad"]) != k or _values(t["k_update"]) != [1, k, 6] or \
            (not form.slim and _values(t["k_rows"]) != [k, 6]):
        return f"the rows are not zero-padded to the kept max_det {k} and written as [1, {k}, 6]"
    if not form.slim and (t["extras"].shape is None or t["extras"].shape[-1] != 0):
        return "the extra columns (Segment/Pose/OBB) are not empty: only detection is replaced"
    conf, scale, iou, per_class = (single_value(t[n]) for n in ("conf", "scale", "iou", "per_class"))
    if conf is None or scale is None or iou is None or per_class is None:
        return "conf, the box scale, iou and max_output_boxes_per_class must be constant scalars"
    if conf <= 0:
        return f"conf {conf:g} <= 0: the classes zeroed for the plugin would pass the score threshold"
    if scale <= 0:
        return f"the boxes are divided by {scale:g}, not by a positive image side"
    if per_class < k:
        return f"max_output_boxes_per_class {per_class} < max_det {k}"
    classes = t["scores"].shape[2]
    if not isinstance(classes, int):
        return "the number of classes is not static"
    return Found(form, bound, int(images.pop()), k, float(conf), float(iou))


def _values(t) -> list | None:
    v = const(t)
    return None if v is None else v.reshape(-1).tolist()


def masked_scores(found: Found, fresh: Callable[[str], str]) -> tuple[gs.Variable, Callable[[], list[gs.Node]]]:
    """The plugin's scores input: every class but each box's ArgMax set to 0, and the nodes
    that compute it (made when called, reading the ArgMax the graph already has)."""
    scores = found.bound.tensors["scores"]
    out = gs.Variable(fresh(f"{scores.name}_best_class"), dtype=scores.dtype, shape=scores.shape)

    def nodes() -> list[gs.Node]:
        arg = found.bound.tensors["cls_all"]
        classes = scores.shape[2]
        col = gs.Variable(fresh(f"{arg.name}_col"), dtype=np.int64)
        best = gs.Variable(fresh(f"{arg.name}_onehot"), dtype=np.bool_)
        return [
            gs.Node("Unsqueeze", fresh("best_class_col"), inputs=[arg, gs.Constant(fresh("axes"), np.array([2]))],
                    outputs=[col]),
            gs.Node("Equal", fresh("best_class"), inputs=[col, gs.Constant(fresh("classes"), np.arange(classes))],
                    outputs=[best]),
            gs.Node("Where", fresh("best_class_scores"),
                    inputs=[best, scores, gs.Constant(fresh("zero"), np.zeros((), scores.dtype))], outputs=[out])]

    return out, nodes


def rebuild(k: int, images: list[int], plugin_out: list[gs.Tensor], updates: list[gs.Tensor],
            fresh: Callable[[str], str]) -> tuple[list[gs.Node], list[gs.Tensor]]:
    """Each image's ``[1, K, 6]`` rows (box, score, class as float; zero past num_detections)
    from the plugin's four outputs, for the tails ending at ``updates`` (one per image)."""
    num, boxes, scores, classes = plugin_out
    dtype = updates[0].dtype
    nodes: list[gs.Node] = []

    def op(kind, inputs, out_dtype, attrs=None):
        out = gs.Variable(fresh(f"{updates[0].name}_{kind}"), dtype=out_dtype)
        nodes.append(gs.Node(kind, fresh(f"{updates[0].name}/{kind}"), attrs=attrs or {}, inputs=inputs,
                             outputs=[out]))
        return out

    def const_(name, value):
        return gs.Constant(fresh(name), value)

    axis2 = const_("axes", np.array([2], np.int64))
    score3 = op("Unsqueeze", [scores, axis2], dtype)
    class3 = op("Unsqueeze", [op("Cast", [classes], dtype, {"to": onnx.helper.np_dtype_to_tensor_dtype(
        np.dtype(dtype))}), axis2], dtype)
    rows = op("Concat", [boxes, score3, class3], dtype, {"axis": 2})
    valid = op("Less", [const_("positions", np.arange(k, dtype=np.int32)), num], np.bool_)  # [B,K]
    valid3 = op("Unsqueeze", [valid, axis2], np.bool_)
    kept = op("Where", [valid3, rows, const_("zero", np.zeros((), dtype))], dtype)
    axis0 = const_("axis", np.array([0], np.int64))
    new = []
    for i, update in zip(images, updates):
        image = op("Slice", [kept, const_("start", np.array([i], np.int64)),
                             const_("end", np.array([i + 1], np.int64)), axis0], dtype)
        image.shape = update.shape
        new.append(image)
    return nodes, new
