"""A detector's NMS tail -> NVIDIA's ``EfficientNMS_TRT`` plugin (version 1, default namespace).

The pattern is the NonMaxSuppression node an exporter emits plus one documented
"batched NMS -> top-K padded" post-processing tail, replaced as a whole only when that
tail ends at exactly four graph outputs with EfficientNMS_TRT's semantics:

    scores_cn = Transpose<perm=[0,2,1]>(scores)              # scores [B,N,C] -> [B,C,N]
    selected  = NonMaxSuppression<center_point_box=0>(boxes, scores_cn,
                    max_output_boxes_per_class, iou_threshold, score_threshold)  # constants
    b, c, n   = Gather<axis=1>(selected, 0 | 1 | 2)
    flat      = Add(Mul(c, N), n)                            # candidate index c*N + n
    idx       = Concat<axis=1>(Unsqueeze(b, [1]), Unsqueeze(flat, [1]))
    s         = GatherND(scores_cn, selected)
    shape     = Concat<axis=0>(Slice(Shape(boxes), [0], [1]), [C*N])
    dense     = ScatterND(Expand(FILL, shape), idx, s)       # [B, C*N], FILL = -3e38
    top, ti   = TopK<axis=1, largest=1, sorted=1>(dense, [K])
    valid     = Greater(top, FILL)
    num_detections    = ReduceSum<keepdims=1>(Cast<int32>(valid), [1])            # [B,1] int32
    detection_boxes   = Where(Unsqueeze(valid, [-1]),
                              GatherND<batch_dims=1>(boxes, Unsqueeze(Mod(ti, N), [-1])), 0)  # [B,K,4]
    detection_scores  = Where(valid, top, 0)                                       # [B,K]
    detection_classes = Where(valid, Cast<int32>(Div(ti, N)), 0)                   # [B,K] int32

The match checks the nodes between (boxes, scores) and the four outputs against that
list (the same op types, each as often), that nothing else reads them, the constants
(Transpose perm, TopK K/axis/largest, N in Mul/Div/Mod, NMS inputs), and maps each output
by its producer. Anything else (another tail, outputs read elsewhere, non-constant
thresholds) is declined: it may compute something else.

Fields (TensorRT's ``plugin/efficientNMSPlugin`` README): int32 ``background_class``
(-1: none), ``max_output_boxes`` (K), ``score_activation`` (0), ``class_agnostic`` (0),
``box_coding`` (0: corners); float32 ``score_threshold``, ``iou_threshold``. Inputs
boxes [B,N,4] and scores [B,N,C] (the Transpose's input); outputs num_detections [B,1]
int32, detection_boxes [B,K,4], detection_scores [B,K], detection_classes [B,K] int32,
zero past num_detections.

center_point_box=1 is declined: EfficientNMS writes detection_boxes as corners whatever
the input coding (a comment in NVIDIA's kernel, read in a port of it), while this tail
gathers the input boxes as given, so with center boxes the two differ.

Equivalence, and its limits: per class, greedy NMS on boxes scoring above
score_threshold, then the K best of all classes by score. ONNX caps each class at
max_output_boxes_per_class, so the spec declines when that is below K (with it >= K the
cap never changes the K best). Exact ties differ: onnxruntime drops a box scoring exactly
score_threshold and suppresses only at IoU > iou_threshold, EfficientNMS keeps the first
and suppresses at IoU >= iou_threshold (the reference below follows onnxruntime); equal
scores may come out in another order; EfficientNMS considers at most its pre-NMS top-k
(4096 by default) candidates per image. The reference orders each box's corners (as
onnxruntime does); whether EfficientNMS accepts flipped corners is not established.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PluginMatch, PluginSpec

FILL = -3.0e38
# The op types of the documented tail (NonMaxSuppression and the scores Transpose included).
TAIL_OPS = Counter({"Transpose": 1, "NonMaxSuppression": 1, "Gather": 3, "Mul": 1, "Add": 1, "Unsqueeze": 4,
                    "Concat": 2, "GatherND": 2, "Shape": 1, "Slice": 1, "Expand": 1, "ScatterND": 1, "TopK": 1,
                    "Greater": 1, "Cast": 2, "ReduceSum": 1, "Div": 1, "Mod": 1, "Where": 3})


def _const(t: gs.Tensor):
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and "value" in t.inputs[0].attrs:
        return np.asarray(t.inputs[0].attrs["value"].values)
    return None


def _scalar(t: gs.Tensor):
    v = _const(t)
    return None if v is None or v.size != 1 else v.reshape(-1)[0].item()


class EfficientNmsSpec(PluginSpec):
    """NonMaxSuppression + the documented top-K padded tail as NVIDIA's EfficientNMS_TRT."""

    name = "efficient-nms"
    plugin = "EfficientNMS_TRT"
    version = "1"
    ops = frozenset({"NonMaxSuppression"})
    fields = {"background_class": "int32", "max_output_boxes": "int32", "score_threshold": "float32",
              "iou_threshold": "float32", "score_activation": "int32", "class_agnostic": "int32",
              "box_coding": "int32"}

    def match(self, graph: gs.Graph, node: gs.Node) -> PluginMatch | Decline:
        if len(node.inputs) != 5 or any(t.name == "" for t in node.inputs):
            return Decline("NonMaxSuppression needs all five inputs (thresholds given as constants)")
        boxes, scores_cn, per_class_t, iou_t, score_t = node.inputs
        per_class, iou, score = _scalar(per_class_t), _scalar(iou_t), _scalar(score_t)
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
        num = boxes.shape[1]
        # The graph outputs downstream of the NMS node, and the nodes between them and (boxes, scores).
        below, todo = set(), [node]
        while todo:
            n = todo.pop()
            if id(n) in below:
                continue
            below.add(id(n))
            todo += [c for t in n.outputs for c in t.outputs]
        outs = [t for t in graph.outputs if t.inputs and id(t.inputs[0]) in below]
        if len(outs) != 4 or len(graph.outputs) != 4:
            return Decline(f"the graph has {len(graph.outputs)} outputs, {len(outs)} downstream of the NMS; "
                           "EfficientNMS_TRT's four must be the graph's outputs")
        region: dict[int, gs.Node] = {}
        stack = [t for t in outs]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if id(t) in seen or t is boxes or t is scores or _const(t) is not None:
                continue
            seen.add(id(t))
            if not t.inputs:
                return Decline(f"the tail reads graph input {t.name!r} besides boxes and scores")
            n = t.inputs[0]
            if id(n) not in region:
                region[id(n)] = n
                stack += list(n.inputs)
        nodes = [node] + [n for n in region.values() if n is not node]  # the plugin node takes the NMS's name
        got = Counter(n.op for n in nodes if not (n.op == "Constant"))
        if got != TAIL_OPS or id(node) not in region:
            return Decline("the post-processing is not the documented top-K padded tail "
                           f"(ops differ: {dict((got - TAIL_OPS) + (TAIL_OPS - got))})")
        out_ids = {id(t) for t in outs}
        for n in nodes:
            for t in n.outputs:
                if id(t) not in out_ids and any(id(c) not in region for c in t.outputs):
                    return Decline(f"{t.name!r} is read outside the NMS tail")
        [topk] = [n for n in nodes if n.op == "TopK"]
        k = _scalar(topk.inputs[1])
        if k is None or int(topk.attrs.get("axis", -1)) not in (1, -1) or int(topk.attrs.get("largest", 1)) != 1:
            return Decline("TopK is not a constant-K, largest, axis-1 TopK")
        if int(topk.attrs.get("sorted", 1)) != 1:
            return Decline("TopK is unsorted: detections would come out in any order")
        k = int(k)
        [expand] = [n for n in nodes if n.op == "Expand"]
        [greater] = [n for n in nodes if n.op == "Greater"]
        fill = _scalar(expand.inputs[0])
        if fill is None or fill > -1e38 or _scalar(greater.inputs[1]) != fill or \
                greater.inputs[0] is not topk.outputs[0]:
            return Decline("the padding is not a fill below every score (<= -1e38) that Greater(top, fill) tells apart")
        if any(_scalar(n.inputs[1]) != num for n in nodes if n.op in ("Mul", "Div", "Mod")):
            return Decline(f"the candidate index is not class * {num} + box")
        if per_class < k:
            return Decline(f"max_output_boxes_per_class {per_class} < K {k}: the per-class cap could change "
                           "the K best")
        by_op = {t.inputs[0].op: t for t in outs}
        where = [t for t in outs if t.inputs[0].op == "Where"]
        if "ReduceSum" not in by_op or len(where) != 3:
            return Decline("the outputs are not ReduceSum + three Where")
        det_boxes = next((t for t in where if t.inputs[0].inputs[1].inputs and
                          t.inputs[0].inputs[1].inputs[0].op == "GatherND"), None)
        det_scores = next((t for t in where if t.inputs[0].inputs[1] is topk.outputs[0]), None)
        det_classes = next((t for t in where if t.inputs[0].inputs[1].inputs and
                            t.inputs[0].inputs[1].inputs[0].op == "Cast"), None)
        if any(t is None for t in (det_boxes, det_scores, det_classes)):
            return Decline("cannot tell detection_boxes, detection_scores and detection_classes apart")
        fields = {"background_class": -1, "max_output_boxes": k, "score_threshold": float(score),
                  "iou_threshold": float(iou), "score_activation": 0, "class_agnostic": 0, "box_coding": center}
        return PluginMatch(nodes, [boxes, scores], [by_op["ReduceSum"], det_boxes, det_scores, det_classes], fields,
                           f"NonMaxSuppression + top-{k} tail ({len(nodes)} nodes) -> {self.plugin} "
                           f"(iou {iou:g}, score {score:g}, box_coding {center})")

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
