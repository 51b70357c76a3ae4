"""NMS tails as detector exporters write them, re-created as small torch modules and exported
with torch's TorchScript exporter (``dynamo=False``) the way those projects export.

Each NonMaxSuppression comes from a ``torch.autograd.Function`` whose ``symbolic`` is the
exporter's own; its ``forward`` is a stand-in with a plausible number of selections (only
shapes matter while tracing). Sources read:

- mmdeploy ``mmdeploy/mmcv/ops/nms.py``: ``ONNXNMSop`` (symbolic: Constant
  max_output_boxes_per_class as an int64 scalar, iou/score thresholds as float [1]),
  ``_multiclass_nms`` + ``_select_nms_index`` (dynamic batch: per-batch masking with Where,
  one zero row appended, TopK(keep_top_k) on the score column, batched gather) and
  ``_multiclass_nms_single`` (batch 1). mmdeploy's ONNX Runtime export also rewrites
  ``Tensor.topk`` (``mmdeploy/pytorch/functions/topk.py``, ``topk__dynamic``) to
  ``k = where(k < size, k, size)``: ``clamp_k=True`` re-creates that.
- torchvision ``torchvision/ops/_register_onnx_ops.py``: ``torchvision::nms`` as
  NonMaxSuppression of Unsqueezed boxes/scores with max_output_boxes_per_class
  ``sys.maxsize``, an iou threshold and no score threshold, then ``[:, 2]``; used through
  ``batched_nms``'s coordinate trick (boxes offset by ``label * (max + 1)``) and a
  detector's ``keep[:detections_per_img]``: outputs ``[num_kept, ...]``.
- yolov7 ``models/experimental.py``: ``ORT_NMS`` + ``ONNX_ORT`` (``export.py --end2end
  --max-wh``): class offsets ``category * max_wh`` added to the boxes, the max class score
  as the one NMS class, output ``[num_selected, 7]``.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch


class _OnnxNms(torch.autograd.Function):
    """mmdeploy's ``ONNXNMSop``: the same symbolic; forward a stand-in selecting every (b, c, n)
    several times over (while tracing, a constant K must not exceed the rows)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_per_class, iou, score):
        b, c, n = scores.shape
        idx = torch.arange(8 * b * c * n) % (b * c * n)
        return torch.stack([idx // (c * n), idx // n % c, idx % n], 1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou, score):
        from torch.onnx import symbolic_helper as sym_help
        if not sym_help._is_value(max_per_class):
            max_per_class = g.op("Constant", value_t=torch.tensor(max_per_class, dtype=torch.long))
        if not sym_help._is_value(iou):
            iou = g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float))
        if not sym_help._is_value(score):
            score = g.op("Constant", value_t=torch.tensor([score], dtype=torch.float))
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou, score)


def _topk(x: torch.Tensor, k: int, clamp_k: bool):
    if clamp_k:  # mmdeploy's topk__dynamic
        k = torch.tensor(k, dtype=torch.long)
        size = k.new_zeros(()) + x.shape[1]
        k = torch.where(k < size, k, size)
    return x.topk(k, dim=1)


class MmdeployBatchedNms(torch.nn.Module):
    """mmdeploy ``_multiclass_nms`` (pre_top_k=-1) + ``_select_nms_index``: dets [B,K,5], labels [B,K]."""

    def __init__(self, per_class=20, iou=0.5, score=0.05, keep_top_k=10, clamp_k=False, score_input=False):
        super().__init__()
        self.per_class, self.iou, self.score, self.k, self.clamp_k = per_class, iou, score, keep_top_k, clamp_k
        self.score_input = score_input

    def forward(self, boxes, scores, score_threshold=None):
        batch_size = scores.shape[0]
        scores = scores.permute(0, 2, 1)
        score = score_threshold if self.score_input else torch.tensor([self.score], dtype=torch.float32)
        nms_index = _OnnxNms.apply(boxes, scores, self.per_class, torch.tensor([self.iou], dtype=torch.float32),
                                   score)
        batch_inds, cls_inds, box_inds = nms_index[:, 0], nms_index[:, 1], nms_index[:, 2]
        scores = scores[batch_inds, cls_inds, box_inds].unsqueeze(1)
        boxes = boxes[batch_inds, box_inds, ...]
        dets = torch.cat([boxes, scores], dim=1)
        batched_dets = dets.unsqueeze(0).repeat(batch_size, 1, 1)
        batch_template = torch.arange(0, batch_size, dtype=batch_inds.dtype)
        batched_dets = batched_dets.where((batch_inds == batch_template.unsqueeze(1)).unsqueeze(-1),
                                          batched_dets.new_zeros(1))
        batched_labels = cls_inds.unsqueeze(0).repeat(batch_size, 1)
        batched_labels = batched_labels.where((batch_inds == batch_template.unsqueeze(1)),
                                              batched_labels.new_ones(1) * -1)
        n = batched_dets.shape[0]
        batched_dets = torch.cat((batched_dets, batched_dets.new_zeros((n, 1, 5))), 1)
        batched_labels = torch.cat((batched_labels, batched_labels.new_zeros((n, 1))), 1)
        _, topk_inds = _topk(batched_dets[:, :, -1], self.k, self.clamp_k)
        topk_batch_inds = torch.arange(batch_size, dtype=topk_inds.dtype).view(-1, 1)
        return batched_dets[topk_batch_inds, topk_inds, ...], batched_labels[topk_batch_inds, topk_inds, ...]


class MmdeploySingleNms(torch.nn.Module):
    """mmdeploy ``_multiclass_nms_single`` (static batch 1, pre_top_k=-1): dets [1,K,5], labels [1,K]."""

    def __init__(self, per_class=20, iou=0.5, score=0.05, keep_top_k=10, clamp_k=False):
        super().__init__()
        self.per_class, self.iou, self.score, self.k, self.clamp_k = per_class, iou, score, keep_top_k, clamp_k

    def forward(self, boxes, scores):
        scores = scores.permute(0, 2, 1)
        selected = _OnnxNms.apply(boxes, scores, self.per_class, torch.tensor([self.iou], dtype=torch.float32),
                                  torch.tensor([self.score], dtype=torch.float32))
        cls_inds, box_inds = selected[:, 1], selected[:, 2]
        scores = scores[:, cls_inds, box_inds].unsqueeze(2)
        boxes = boxes[:, box_inds, ...]
        dets = torch.cat([boxes, scores], dim=2)
        labels = cls_inds.unsqueeze(0)
        dets = torch.cat((dets, dets.new_zeros((1, 1, 5))), 1)
        labels = torch.cat((labels, labels.new_zeros((1, 1))), 1)
        _, topk_inds = _topk(dets[:, :, -1], self.k, self.clamp_k)
        topk_inds = topk_inds.squeeze(0)
        return dets[:, topk_inds, ...], labels[:, topk_inds, ...]


class _TorchvisionNms(torch.autograd.Function):
    """``torchvision::nms`` with torchvision's symbolic; forward keeps every box, best first."""

    @staticmethod
    def forward(ctx, boxes, scores, iou_threshold):
        return torch.argsort(scores, descending=True)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold):
        import sys
        boxes = g.op("Unsqueeze", boxes, g.op("Constant", value_t=torch.tensor([0])))
        scores = g.op("Unsqueeze", g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([0]))),
                      g.op("Constant", value_t=torch.tensor([0])))
        max_output_per_class = g.op("Constant", value_t=torch.tensor([sys.maxsize], dtype=torch.long))
        iou = g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float))
        nms_out = g.op("NonMaxSuppression", boxes, scores, max_output_per_class, iou)
        column = g.op("Gather", nms_out, g.op("Constant", value_t=torch.tensor([2], dtype=torch.long)), axis_i=1)
        return g.op("Squeeze", column, g.op("Constant", value_t=torch.tensor([1])))


class TorchvisionBatchedNms(torch.nn.Module):
    """A detector's post-processing: ``batched_nms`` (coordinate trick) then the K best kept."""

    def __init__(self, iou=0.5, detections_per_img=10):
        super().__init__()
        self.iou, self.k = iou, detections_per_img

    def forward(self, boxes, scores, labels):
        offsets = labels.to(boxes) * (boxes.max() + 1)
        keep = _TorchvisionNms.apply(boxes + offsets[:, None], scores, self.iou)
        keep = keep[:self.k]
        return boxes[keep], scores[keep], labels[keep]


class TinyDetector(torch.nn.Module):
    """A 1x1-conv head (boxes as corners, sigmoid class scores per pixel) + mmdeploy's tail."""

    def __init__(self, classes=3, **nms):
        super().__init__()
        torch.manual_seed(0)
        self.classes = classes
        self.head = torch.nn.Conv2d(3, 4 + classes, 1)
        self.nms = MmdeployBatchedNms(**nms)

    def forward(self, images):
        y = self.head(images).flatten(2).permute(0, 2, 1)  # [B, H*W, 4 + C]
        b = y.shape[0]
        xy = y[..., :2].sigmoid() * 64
        boxes = torch.cat([xy, xy + y[..., 2:4].exp() * 4], -1).reshape(b, -1, 4)
        scores = y[..., 4:].sigmoid().reshape(b, -1, self.classes)
        return self.nms(boxes, scores)


class _OrtNms(torch.autograd.Function):
    """yolov7's ``ORT_NMS``: the same symbolic (all five inputs passed through)."""

    @staticmethod
    def forward(ctx, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        b, _, n = scores.shape
        idx = torch.arange(b * n)
        return torch.stack([idx // n, torch.zeros_like(idx), idx % n], 1)

    @staticmethod
    def symbolic(g, boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold):
        return g.op("NonMaxSuppression", boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold)


class Yolov7OrtNms(torch.nn.Module):
    """yolov7 ``ONNX_ORT``: x [B,N,5+C] -> [num_selected, 7] (batch, x1, y1, x2, y2, class, score)."""

    def __init__(self, max_obj=100, iou_thres=0.45, score_thres=0.25, max_wh=640):
        super().__init__()
        self.max_obj = torch.tensor([max_obj])
        self.iou_threshold = torch.tensor([iou_thres])
        self.score_threshold = torch.tensor([score_thres])
        self.max_wh = max_wh
        self.convert_matrix = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]],
                                           dtype=torch.float32)

    def forward(self, x):
        boxes = x[:, :, :4]
        conf = x[:, :, 4:5]
        scores = x[:, :, 5:]
        scores *= conf
        boxes @= self.convert_matrix
        max_score, category_id = scores.max(2, keepdim=True)
        dis = category_id.float() * self.max_wh
        nmsbox = boxes + dis
        max_score_tp = max_score.transpose(1, 2).contiguous()
        selected_indices = _OrtNms.apply(nmsbox, max_score_tp, self.max_obj, self.iou_threshold,
                                         self.score_threshold)
        X, Y = selected_indices[:, 0], selected_indices[:, 2]
        selected_boxes = boxes[X, Y, :]
        selected_categories = category_id[X, Y, :].float()
        selected_scores = max_score[X, Y, :]
        X = X.unsqueeze(1).float()
        return torch.cat([X, selected_boxes, selected_categories, selected_scores], 1)


def export(module: torch.nn.Module, inputs: dict[str, torch.Tensor], outputs: list[str], *, opset: int = 11,
           dynamic_batch: bool = True) -> onnx.ModelProto:
    """``module`` exported as the exporters do it (TorchScript exporter, no constant folding)."""
    axes = {name: {0: "batch"} for name, x in inputs.items() if x.dim() > 1} if dynamic_batch else None
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs.values()), f, dynamo=False, do_constant_folding=False,
                          opset_version=opset, input_names=list(inputs), output_names=outputs, dynamic_axes=axes)
    return onnx.load_from_string(f.getvalue())


def mmdeploy_batched(n=50, c=3, opset=11, **kw) -> onnx.ModelProto:
    inputs = {"boxes": torch.rand(2, n, 4), "scores": torch.rand(2, n, c)}
    if kw.get("score_input"):
        inputs["score_threshold"] = torch.tensor([0.05])
    return export(MmdeployBatchedNms(**kw), inputs, ["dets", "labels"], opset=opset)


def mmdeploy_detector(size=8, opset=13, **kw) -> onnx.ModelProto:
    return export(TinyDetector(**kw), {"images": torch.rand(2, 3, size, size)}, ["dets", "labels"], opset=opset)


def mmdeploy_single(n=50, c=3, opset=11, **kw) -> onnx.ModelProto:
    return export(MmdeploySingleNms(**kw), {"boxes": torch.rand(1, n, 4), "scores": torch.rand(1, n, c)},
                  ["dets", "labels"], opset=opset, dynamic_batch=False)


def torchvision_batched(n=50, opset=13, **kw) -> onnx.ModelProto:
    inputs = {"boxes": torch.rand(n, 4), "scores": torch.rand(n), "labels": torch.randint(0, 3, (n,))}
    return export(TorchvisionBatchedNms(**kw), inputs, ["det_boxes", "det_scores", "det_labels"], opset=opset,
                  dynamic_batch=False)


def yolov7_ort(n=50, c=3, opset=12, **kw) -> onnx.ModelProto:
    return export(Yolov7OrtNms(**kw), {"x": torch.rand(2, n, 5 + c)}, ["output"], opset=opset)
