"""Ultralytics' ``nms=True`` ONNX export (YOLOv5u/v8/11 detection), re-created as a small torch
module and exported the way Ultralytics exports it.

Source read: ``ultralytics/engine/exporter.py`` (``NMSModel.forward``, ``Exporter.export_onnx``)
and ``ultralytics/utils/export.py`` (``export_onnx``): ``torch.onnx.export`` with the
TorchScript exporter (``dynamo=False`` whenever ``dynamic``; Ultralytics' own patch forces it
on torch >= 2.9), ``do_constant_folding=True``, opset ``args.opset`` or the newest torch knows
less one, then ``onnxslim.slim`` when ``simplify`` (Ultralytics' default). The Detect head
outputs ``[B, 4 + C, N]`` with corner boxes (``m.xyxy = True`` under ``nms``); ``NMSModel``
transposes it, takes each box's best class (``max(-1)``), and for each image of the traced
batch keeps the boxes scoring above ``conf`` (boolean indexing: NonZero), divides them by
the larger image side, offsets them by ``class`` (class-aware; not with ``agnostic_nms``),
runs ``torchvision.ops.nms`` (its ONNX symbolic, re-created in ``tests/nms_exporters.py``:
NonMaxSuppression without a score threshold), keeps the first ``max_det`` and zero-pads
``[box, score, class]`` rows to ``max_det``: ``output0 [B, max_det, 6]``. With ``dynamic``
and ``batch > 1`` the predictions are padded with zero images to the traced batch first.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch

from tests.nms_exporters import _TorchvisionNms


class TinyYoloHead(torch.nn.Module):
    """A 1x1-conv stand-in for a YOLO Detect head in export mode: ``[B, 4 + C, H*W]``, corner
    boxes inside the ``size`` x ``size`` image (in pixels), sigmoid class scores."""

    def __init__(self, classes: int = 3, size: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.classes, self.size = classes, size
        self.head = torch.nn.Conv2d(3, 4 + classes, 1)

    def forward(self, images):
        y = self.head(images).flatten(2)  # [B, 4 + C, N]
        x1y1 = y[:, :2].sigmoid() * self.size / 2
        wh = y[:, 2:4].sigmoid() * self.size / 2
        return torch.cat([x1y1, x1y1 + wh, y[:, 4:].sigmoid()], 1)


class UltralyticsNms(torch.nn.Module):
    """``NMSModel.forward`` for a detection model (no extras), ONNX export, not OBB."""

    def __init__(self, model: torch.nn.Module, conf=0.25, iou=0.45, max_det=300, agnostic=False,
                 dynamic=False, batch=1):
        super().__init__()
        self.model, self.conf, self.iou, self.max_det = model, conf, iou, max_det
        self.agnostic, self.dynamic, self.batch = agnostic, dynamic, batch

    def forward(self, x):
        pred = self.model(x)
        kwargs = {"device": pred.device, "dtype": pred.dtype}
        bs = pred.shape[0]
        pred = pred.transpose(-1, -2)
        extra_shape = pred.shape[-1] - (4 + self.model.classes)
        if self.dynamic and self.batch > 1:  # the traced loop always runs `batch` times
            pad = torch.zeros(torch.max(torch.tensor(self.batch - bs), torch.tensor(0)), *pred.shape[1:], **kwargs)
            pred = torch.cat((pred, pad))
        boxes, scores, extras = pred.split([4, self.model.classes, extra_shape], dim=2)
        scores, classes = scores.max(dim=-1)
        max_det = min(pred.shape[1], self.max_det)
        out = torch.zeros(pred.shape[0], max_det, boxes.shape[-1] + 2 + extra_shape, **kwargs)
        for i in range(bs):
            box, cls, score, extra = boxes[i], classes[i], scores[i], extras[i]
            mask = score > self.conf
            box, score, cls, extra = box[mask], score[mask], cls[mask], extra[mask]
            nmsbox = box.clone()
            multiplier = 1  # 8 for OBB
            nmsbox = multiplier * nmsbox / torch.tensor(x.shape[2:], **kwargs).max()
            if not self.agnostic:
                cls_offset = cls.reshape(-1, 1).expand(nmsbox.shape[0], 4)
                offbox = nmsbox[:, :4] + cls_offset * multiplier
                nmsbox = torch.cat((offbox, nmsbox[:, 4:]), dim=-1)
            keep = _TorchvisionNms.apply(nmsbox, score, self.iou)[:max_det]
            dets = torch.cat([box[keep], score[keep].view(-1, 1), cls[keep].view(-1, 1).to(out.dtype), extra[keep]],
                             dim=-1)
            pad = (0, 0, 0, max_det - dets.shape[0])
            out[i] = torch.nn.functional.pad(dets, pad)
        return out[:bs]


def export(*, classes=3, size=16, batch=1, dynamic=False, opset=17, slim=False, **nms) -> onnx.ModelProto:
    """The ONNX file ``model.export(format="onnx", nms=True, batch=batch, dynamic=dynamic,
    opset=opset, simplify=slim)`` writes for a :class:`TinyYoloHead`."""
    module = UltralyticsNms(TinyYoloHead(classes, size), dynamic=dynamic, batch=batch, **nms).eval()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch"}} if dynamic else None
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.rand(batch, 3, size, size),), f, dynamo=False, do_constant_folding=True,
                          opset_version=opset, input_names=["images"], output_names=["output0"], dynamic_axes=axes)
    model = onnx.load_from_string(f.getvalue())
    if slim:
        import onnxslim

        model = onnxslim.slim(model)
    return model
