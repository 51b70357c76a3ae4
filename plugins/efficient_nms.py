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

- Ultralytics' ``nms=True`` export (YOLOv5u/v8/11 detection): torchvision's four-input NonMaxSuppression on each
  image's boxes above ``conf``, class-aware by box offsets or agnostic, as exported or
  slimmed by onnxslim (``plugins/_nms_ultralytics.py``). The plugin reads the boxes and the
  class scores with every class but each box's best zeroed; ordinary nodes rebuild the
  image's ``[1, max_det, 6]`` rows (box, score, class as float, zero padding), which
  Ultralytics' own zeros/ScatterND/Slice still write into ``output0``. An export traced at
  batch M has one tail per image, all replaced by one plugin. Declined when conf <= 0, the boxes
  are not divided by a positive constant, extras (Segment/Pose/OBB) are present, or the
  per-class cap is below max_det; exact where boxes of different classes cannot meet after
  Ultralytics' class offset (boxes within the image; see that module).

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
from fusekit.plugins import _nms_ultralytics as ultralytics
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
        if len(node.inputs) == 4 and all(t.name for t in node.inputs):
            return self._match_ultralytics(graph, node)
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
        k = fields["max_output_boxes"]
        return _rebuilt(graph, nodes, [boxes, scores], outs, fields, message,
                        lambda held, fresh: tail.rebuild(graph, held, outs, k, fresh))

    def _match_ultralytics(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        """torchvision's four-input NonMaxSuppression inside Ultralytics' NMSModel tail
        (plugins/_nms_ultralytics.py), with the tails of the other images of the traced batch
        (one per image, reading the same boxes and scores): one plugin, each tail replaced up
        to the rows it writes into output0."""
        torchvision = ("NonMaxSuppression needs all five inputs, score_threshold included (torchvision's nms "
                       "exports four: it keeps every score and outputs one row per kept box)")
        first = _ultralytics_tail(graph, node)
        if isinstance(first, str):
            return Decline(f"{torchvision}; not Ultralytics' NMSModel tail either ({first})")
        found = [first] + [t for t in (_ultralytics_tail(graph, n) for n in graph.nodes if n is not node
                                       and n.op == "NonMaxSuppression" and len(n.inputs) == 4)
                           if not isinstance(t, str) and t[0].bound.tensors["boxes"] is first[0].bound.tensors["boxes"]
                           and t[0].bound.tensors["scores"] is first[0].bound.tensors["scores"]]
        found.sort(key=lambda t: t[0].image)
        tails = [f for f, _, _ in found]
        images = [t.image for t in tails]
        if len(set(images)) != len(images) or len({(t.k, t.conf, t.iou, t.form.agnostic) for t in tails}) != 1:
            return Decline("the per-image Ultralytics tails reading these boxes and scores write the same image or "
                           "differ in their settings")
        nodes = [n for _, tail_nodes, _ in found for n in tail_nodes]
        updates = [update for _, _, update in found]
        why = _read_outside(graph, nodes, updates)
        if why:
            return Decline(why)
        scores, make_scores = ultralytics.masked_scores(first[0], lambda base: fresh_name(graph, base))
        t = first[0]
        fields = {"background_class": -1, "max_output_boxes": t.k, "score_threshold": t.conf,
                  "iou_threshold": t.iou, "score_activation": 0, "class_agnostic": int(t.form.agnostic),
                  "box_coding": 0}
        which = f"image {images[0]}" if len(images) == 1 else f"images {', '.join(map(str, images))}"
        message = (f"NonMaxSuppression + {t.form.name}, {which} ({len(nodes)} nodes) -> {self.plugin} (K {t.k}, "
                   f"iou {t.iou:g}, score {t.conf:g}); rows of output0 rebuilt from the plugin's outputs")

        def rebuild(held, fresh):
            made, new = ultralytics.rebuild(t.k, images, held, updates, fresh)
            return make_scores() + made, new

        return _rebuilt(graph, nodes, [t.bound.tensors["boxes"], scores], updates, fields, message, rebuild)

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
        classes = [c for c in range(scores.shape[2]) if c != int(fields["background_class"])]
        # class-aware: each class on its own; class_agnostic: every (box, class) candidate in one NMS
        groups = [classes] if int(fields.get("class_agnostic", 0)) else [[c] for c in classes]
        for b in range(batch):
            corners = _corners(boxes[b].astype(np.float64))
            found = []  # (score, class, box)
            for group in groups:
                cand = [(i, c) for c in group for i in range(boxes.shape[1]) if scores[b, i, c] > score_t]
                cand.sort(key=lambda ic: -scores[b, ic[0], ic[1]])  # stable: ties keep box, class order
                kept: list[tuple[int, int]] = []
                for i, c in cand:
                    if all(_iou(corners[i], corners[j]) <= iou_t for j, _ in kept):
                        kept.append((i, c))
                found += [(scores[b, i, c], c, i) for i, c in kept]
            found.sort(key=lambda f: -f[0])
            found = found[:k]
            num[b, 0] = len(found)
            for j, (s, c, i) in enumerate(found):
                out_boxes[b, j], out_scores[b, j], out_classes[b, j] = boxes[b, i], s, c
        return [num, out_boxes, out_scores, out_classes]


def _ultralytics_tail(graph: gs.Graph, node: gs.Node):
    """(the matched tail, the nodes it replaces, the update it ends at) for the Ultralytics
    per-image tail around ``node``, or why there is none."""
    if int(node.attrs.get("center_point_box", 0)) != 0:
        return "center_point_box is not 0"
    _, below = _outputs_below(graph, node)
    updates = [n.inputs[2] for n in graph.nodes if n.op == "ScatterND" and len(n.inputs) == 3
               and len(n.inputs[2].inputs) == 1 and id(n.inputs[2].inputs[0]) in below]
    if len(updates) != 1:
        return "its kept rows are not written into the output by one ScatterND"
    found = ultralytics.match(node, updates[0])
    if isinstance(found, str):
        return found
    nodes = [node] + [n for n in found.bound.nodes.values() if n is not node and id(n) in below] + \
        found.bound.covered
    return found, nodes, updates[0]


def _rebuilt(graph: gs.Graph, nodes, inputs, outs, fields, message, rebuild) -> PluginMatch:
    """A match whose plugin outputs are read by nodes ``rebuild(held, fresh)`` makes (written
    after the plugin), which compute the tail's outputs ``outs``."""
    k, boxes, scores = fields["max_output_boxes"], inputs[0], inputs[1]
    batch = boxes.shape[0] if boxes.shape else None
    kinds = [("num_detections", np.int32, [batch, 1]), ("detection_boxes", boxes.dtype, [batch, k, 4]),
             ("detection_scores", scores.dtype, [batch, k]), ("detection_classes", np.int32, [batch, k])]
    held = [gs.Variable(f"{nodes[0].name or 'nms'}/{n}", dtype=d, shape=s) for n, d, s in kinds]

    def build_after():
        made, new_outs = rebuild(held, lambda base: fresh_name(graph, base))
        graph.nodes.extend(made)
        for old, new in zip(outs, new_outs):
            replace_uses(graph, old, new)

    return PluginMatch(nodes, inputs, held, fields, message, build_after=build_after)


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
