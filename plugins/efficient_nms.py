"""A detector's NMS tail -> NVIDIA's ``EfficientNMS_TRT`` plugin (version 1, default namespace).

The pattern is the NonMaxSuppression node plus the post-processing between it and the
graph outputs it reaches, replaced as a whole when that post-processing is one of the
tails in ``plugins/_nms_tails.py`` (matched node by node by ``plugins/_nms_pattern.py``),
nothing else reads the values computed from the NMS, and its constants are ones the
substitution is exact for:

- the documented tail: ``scores [B,N,C]`` -> Transpose -> NonMaxSuppression; the selected
  scores scattered into a dense ``[B, C*N]`` filled with -3e38; TopK K; outputs
  num_detections ``[B,1]`` int32, detection_boxes ``[B,K,4]``, detection_scores ``[B,K]``,
  detection_classes ``[B,K]`` int32 (EfficientNMS_TRT's own four, one to one);
- mmdeploy's ``_multiclass_nms`` + ``_select_nms_index`` (dynamic batch, pre_top_k -1):
  ``dets [B,K,5]`` and ``labels [B,K]`` int64 with a constant keep_top_k K, or its
  ``topk__dynamic`` form with ``K' = min(K, S + 1)`` rows (S the selections in the whole
  batch); rebuilt exactly from the plugin's four outputs with ordinary nodes.

Plugin fields (TensorRT's ``plugin/efficientNMSPlugin`` README): int32
``background_class`` (-1), ``max_output_boxes`` (K), ``score_activation`` (0),
``class_agnostic`` (0), ``box_coding`` (0: corners); float32 ``score_threshold``,
``iou_threshold``. Inputs boxes [B,N,4] and scores [B,N,C] (the Transpose's input).

Declined, with the reason: thresholds or K computed at run time; center_point_box 1
(EfficientNMS writes corners whatever the input coding); scores not
``Transpose<perm=[0,2,1]>`` of ``[B,N,C]``; N or C not static; a per-class cap below K;
score_threshold < 0 for mmdeploy (a kept score could tie a padding row's 0); outputs with
one row per selection (a fixed-size plugin cannot produce them); any other tail.

Equivalence: per class, greedy NMS on boxes scoring above score_threshold, then the K best
of all classes by score. Exact ties differ: onnxruntime drops a box scoring exactly
score_threshold and suppresses only at IoU > iou_threshold, EfficientNMS keeps it and
suppresses at IoU >= iou_threshold (the reference below follows onnxruntime); equal scores
may come out in another order; EfficientNMS considers at most its pre-NMS top-k (4096 by
default) candidates per image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.graph_edit import fresh_name, replace_uses
from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PluginMatch, PluginSpec
from fusekit.plugins._nms_pattern import Pattern, single_value
from fusekit.plugins._nms_tails import TAILS, Tail


@lru_cache(maxsize=32)
def _pattern(index: int, n: int, c: int) -> Pattern:
    return Pattern(TAILS[index].text, n, c)


class EfficientNmsSpec(PluginSpec):
    """NonMaxSuppression + a known post-processing tail as NVIDIA's EfficientNMS_TRT."""

    name = "efficient-nms"
    plugin = "EfficientNMS_TRT"
    version = "1"
    ops = frozenset({"NonMaxSuppression"})
    fields = {"background_class": "int32", "max_output_boxes": "int32", "score_threshold": "float32",
              "iou_threshold": "float32", "score_activation": "int32", "class_agnostic": "int32",
              "box_coding": "int32"}

    def match(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        given = _nms_inputs(node)
        if isinstance(given, Decline):
            return given
        boxes, scores, per_class, iou, score = given
        num, classes = boxes.shape[1], scores.shape[2]
        outs, below = _outputs_below(graph, node)
        tried, ends = [], {}
        for i, tail in enumerate(TAILS):
            pattern = _pattern(i, num, classes)
            ends.setdefault(len(pattern.graph.outputs), []).append(tail.name)
            if len(pattern.graph.outputs) != len(outs):
                continue
            bound = pattern.match(outs, boxes, scores)
            if isinstance(bound, str):
                tried.append(f"{tail.name}: {bound}")
                continue
            if node not in bound.nodes.values():
                tried.append(f"{tail.name}: matched around another NonMaxSuppression")
                continue
            k, why = tail.top_k(bound)
            if why:  # another tail may match with these values
                tried.append(f"{tail.name}: {why}")
                continue
            if per_class < k:
                return Decline(f"max_output_boxes_per_class {per_class} < K {k}: the per-class cap could "
                               "change the K best")
            # the nodes computed from the NMS's output go; those before it (the scores Transpose, the batch size)
            # stay, and cleanup drops them unless something else reads them
            nodes = [node] + [n for n in bound.nodes.values() if n is not node and id(n) in below] + bound.covered
            why = _read_outside(graph, nodes, outs)
            if why:
                return Decline(why)
            fields = {"background_class": -1, "max_output_boxes": k, "score_threshold": float(score),
                      "iou_threshold": float(iou), "score_activation": 0, "class_agnostic": 0, "box_coding": 0}
            message = (f"NonMaxSuppression + {tail.name} ({len(nodes)} nodes) -> {self.plugin} "
                       f"(K {k}, iou {iou:g}, score {score:g}){'; ' + tail.note if tail.note else ''}")
            return self._plugin_match(graph, tail, nodes, boxes, scores, outs, fields, message)
        late = _variable_length(outs, boxes)
        if not tried:
            tried = [f"the NMS reaches {len(outs)} graph outputs, the tails end at " +
                     ", ".join(f"{n} ({', '.join(names)})" for n, names in sorted(ends.items()))]
        return Decline((late + "; " if late else "") + "the post-processing is none of the tails "
                       "EfficientNMS_TRT can replace (" + "; ".join(tried) + ")")

    def _plugin_match(self, graph, tail: Tail, nodes, boxes, scores, outs, fields, message) -> PluginMatch:
        if tail.rebuild is None:
            return PluginMatch(nodes, [boxes, scores], outs, fields, message)
        k, batch = fields["max_output_boxes"], boxes.shape[0]
        kinds = [("num_detections", np.int32, [batch, 1]), ("detection_boxes", boxes.dtype, [batch, k, 4]),
                 ("detection_scores", scores.dtype, [batch, k]), ("detection_classes", np.int32, [batch, k])]
        held = [gs.Variable(f"{nodes[0].name or 'nms'}/{n}", dtype=d, shape=s) for n, d, s in kinds]

        def build_after():
            made, new_outs = tail.rebuild(graph, held, outs, k, lambda base: fresh_name(graph, base))
            graph.nodes.extend(made)
            for old, new in zip(outs, new_outs):
                replace_uses(graph, old, new)

        return PluginMatch(nodes, [boxes, scores], held, fields, message, build_after=build_after)

    def output_dims(self, fields, input_ranks):
        k = int(fields["max_output_boxes"])
        return [[(0, 0), 1], [(0, 0), k, 4], [(0, 0), k], [(0, 0), k]]

    def output_types(self, fields, num_inputs):
        return ["int32", ("input", 0), ("input", 1), "int32"]

    def reference(self, inputs, fields):
        boxes, scores = (np.asarray(x) for x in inputs)  # [B,N,4], [B,N,C]
        k = int(fields["max_output_boxes"])
        iou_t, score_t = float(fields["iou_threshold"]), float(fields["score_threshold"])
        if int(fields["box_coding"]) != 0:
            raise ValueError("the reference covers box_coding 0 (corners) only")
        batch = boxes.shape[0]
        num = np.zeros((batch, 1), np.int32)
        out_boxes = np.zeros((batch, k, 4), boxes.dtype)
        out_scores = np.zeros((batch, k), scores.dtype)
        out_classes = np.zeros((batch, k), np.int32)
        for b in range(batch):
            corners = _corners(boxes[b].astype(np.float64))
            found = []  # (score, class, box)
            for c in range(scores.shape[2]):
                if c == int(fields["background_class"]):
                    continue
                cand = [i for i in np.argsort(-scores[b, :, c], kind="stable") if scores[b, i, c] > score_t]
                kept: list[int] = []
                for i in cand:
                    if all(_iou(corners[i], corners[j]) <= iou_t for j in kept):
                        kept.append(i)
                found += [(scores[b, i, c], c, i) for i in kept]
            found.sort(key=lambda f: -f[0])
            found = found[:k]
            num[b, 0] = len(found)
            for j, (s, c, i) in enumerate(found):
                out_boxes[b, j], out_scores[b, j], out_classes[b, j] = boxes[b, i], s, c
        return [num, out_boxes, out_scores, out_classes]


def _corners(boxes: np.ndarray) -> np.ndarray:
    a, b = boxes[:, :2], boxes[:, 2:]
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1)


def _iou(p: np.ndarray, q: np.ndarray) -> float:
    inter = max(0.0, min(p[2], q[2]) - max(p[0], q[0])) * max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return 0.0 if union <= 0 else inter / union


def _nms_inputs(node: gs.Node):
    """(boxes, scores [B,N,C], max_output_boxes_per_class, iou_threshold, score_threshold),
    or why the NonMaxSuppression itself rules the substitution out."""
    if len(node.inputs) != 5 or any(t.name == "" for t in node.inputs):
        return Decline("NonMaxSuppression needs all five inputs, score_threshold included (torchvision's nms "
                       "exports four: it keeps every score and outputs one row per kept box)")
    boxes, scores_cn, per_class_t, iou_t, score_t = node.inputs
    per_class, iou, score = single_value(per_class_t), single_value(iou_t), single_value(score_t)
    if per_class is None or iou is None or score is None:
        return Decline("max_output_boxes_per_class, iou_threshold and score_threshold must be constants")
    center = int(node.attrs.get("center_point_box", 0))
    if center != 0:
        return Decline(f"center_point_box {center}: EfficientNMS_TRT outputs corner boxes whatever its "
                       "box_coding, the tail outputs the input's center boxes")
    if len(scores_cn.inputs) != 1 or scores_cn.inputs[0].op != "Transpose" or \
            list(scores_cn.inputs[0].attrs.get("perm", [])) != [0, 2, 1]:
        return Decline("scores do not come from Transpose<perm=[0,2,1]> of [B,N,C] scores "
                       "(EfficientNMS_TRT takes [B,N,C])")
    scores = scores_cn.inputs[0].inputs[0]
    if boxes.shape is None or len(boxes.shape) != 3 or not isinstance(boxes.shape[1], int):
        return Decline("boxes are not [B,N,4] with a static N")
    if scores.shape is None or len(scores.shape) != 3 or not isinstance(scores.shape[2], int):
        return Decline("scores are not [B,N,C] with a static C")
    return boxes, scores, per_class, iou, score


def _outputs_below(graph: gs.Graph, node: gs.Node) -> tuple[list[gs.Tensor], set[int]]:
    """The graph outputs computed from ``node``, in the graph's order, and the ids of the
    nodes computed from it (``node`` included)."""
    below, todo = set(), [node]
    while todo:
        n = todo.pop()
        if id(n) in below:
            continue
        below.add(id(n))
        todo += [c for t in n.outputs for c in t.outputs]
    return [t for t in graph.outputs if t.inputs and id(t.inputs[0]) in below], below


def _read_outside(graph: gs.Graph, nodes: list[gs.Node], outs: list[gs.Tensor]) -> str | None:
    inside = {id(n) for n in nodes}
    out_ids = {id(t) for t in outs}
    graph_outs = {id(t) for t in graph.outputs}
    for n in nodes:
        for t in n.outputs:
            if id(t) in out_ids:
                continue
            if id(t) in graph_outs or any(id(c) not in inside for c in t.outputs):
                return f"{t.name!r} is read outside the NMS tail"
    return None


def _variable_length(outs: list[gs.Tensor], boxes: gs.Tensor) -> str | None:
    """Why the tail's outputs have a length known only at run time, if they do."""
    for t in outs:
        shape = list(t.shape or [])
        late = [d for d in shape[1:] if not isinstance(d, int)]
        if late:
            return f"output {t.name!r} {shape} has a length known only at run time ({late[0]!r})"
        if shape and len(outs) == 1 and shape[0] != boxes.shape[0]:
            return (f"output {t.name!r} {shape} has one row per selected box (like yolov7's ONNX_ORT end2end "
                    "export), a length known only at run time: EfficientNMS_TRT pads to a fixed K")
    return None
