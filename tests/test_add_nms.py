"""--add-nms: EfficientNMS_TRT appended to a raw YOLO-style head (passes/add_nms.py).

The heads are tiny torch modules in both layouts (``[B, 4+C, N]`` as Ultralytics' Detect
exports it, ``[B, N, 4+C]``), center-size or corner boxes, exported like a plain
``model.export(format="onnx")``. The proof: the optimized model run by onnxruntime with the
plugin computed by the efficient-nms spec's NumPy reference (tests/nms_reference.py) equals
ONNX's own NonMaxSuppression (the documented top-K tail of test_plugin_efficient_nms, run by
onnxruntime) on the original head's boxes (as corners) and scores, at batch 1 and 3; the
result parses in tensorrt_rtx into one plugin layer and builds with a dynamic batch.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import fusekit.api as fk
from fusekit.builder import backend as backends
from fusekit.cli import main
from fusekit.errors import InputError
from tests.helpers import run_ort
from tests.nms_exporters import export
from tests.nms_reference import run_with_reference
from tests.plugin_build import parse_and_build
from tests.test_plugin_efficient_nms import nms_tail_model

BACKEND = backends.installed()
OUTPUTS = ["num_dets", "det_boxes", "det_scores", "det_classes"]


class YoloHead(torch.nn.Module):
    """A 1x1-conv detector head: per pixel 4 box values (pixels of a 16 x 16 image) and C
    sigmoid scores, as ``[B, 4+C, N]`` (layout cn) or ``[B, N, 4+C]`` (nc)."""

    def __init__(self, classes=3, layout="cn", box="xywh"):
        super().__init__()
        torch.manual_seed(1)
        self.layout, self.box = layout, box
        self.conv = torch.nn.Conv2d(3, 4 + classes, 1)

    def forward(self, images):
        y = self.conv(images).flatten(2)
        xy, wh = y[:, :2].sigmoid() * 16, y[:, 2:4].sigmoid() * 6
        boxes = torch.cat([xy, wh] if self.box == "xywh" else [xy - wh / 2, xy + wh / 2], 1)
        out = torch.cat([boxes, y[:, 4:].sigmoid()], 1)
        return out if self.layout == "cn" else out.transpose(1, 2)


def head_model(classes=3, layout="cn", box="xywh", size=8, dynamic_hw=False) -> onnx.ModelProto:
    """The head exported with a dynamic batch (and height/width), its output declared like
    Ultralytics' ``output0``: ``[batch, 4+C, anchors]`` (or ``[batch, anchors, 4+C]``)."""
    m = export(YoloHead(classes, layout, box), {"images": torch.rand(1, 3, size, size)}, ["output0"], opset=17)
    if dynamic_hw:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    m.graph.ClearField("value_info")
    anchors = "anchors" if dynamic_hw else size * size
    declared = ["batch", 4 + classes, anchors] if layout == "cn" else ["batch", anchors, 4 + classes]
    out = m.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(out, declared):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    return m


def expected_nms(head: np.ndarray, layout: str, box: str, score: float, iou: float, k: int) -> dict:
    """ONNX NonMaxSuppression (+ the documented top-K tail) on the head's boxes and scores."""
    rows = head.transpose(0, 2, 1) if layout == "cn" else head
    boxes, scores = rows[..., :4], rows[..., 4:]
    if box == "xywh":
        center, half = boxes[..., :2], boxes[..., 2:] * np.float32(0.5)
        boxes = np.concatenate([center - half, center + half], -1)
    n, c = scores.shape[1:]
    tail = nms_tail_model(n=n, c=c, k=k, per_class=k, iou=iou, score=score)
    got = run_ort(tail, {"boxes": np.ascontiguousarray(boxes), "scores": np.ascontiguousarray(scores)})
    return dict(zip(OUTPUTS, (got[name] for name in ("num_detections", "detection_boxes", "detection_scores",
                                                      "detection_classes"))))


@pytest.mark.parametrize("layout, box, dynamic_hw", [("cn", "xywh", False), ("nc", "xywh", False),
                                                     ("cn", "xyxy", False), ("cn", "xywh", True)])
@pytest.mark.parametrize("score, iou, k", [(0.25, 0.45, 20), (0.6, 0.3, 5)])
def test_appended_nms_equals_onnx_nms_on_the_head(layout, box, dynamic_hw, score, iou, k):
    m = head_model(layout=layout, box=box, dynamic_hw=dynamic_hw)
    given = f"score={score},iou={iou},max={k}" + (",box=xyxy" if box == "xyxy" else "")
    out, report = fk.optimize(m, add_nms=given, return_report=True)
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == OUTPUTS
    types = [o.type.tensor_type for o in out.graph.output]
    assert [t.elem_type for t in types] == [onnx.TensorProto.INT32, onnx.TensorProto.FLOAT,
                                            onnx.TensorProto.FLOAT, onnx.TensorProto.INT32]
    batch = "batch"
    assert [[d.dim_value or d.dim_param for d in t.shape.dim] for t in types] == \
        [[batch, 1], [batch, k, 4], [batch, k], [batch, k]]
    assert [n.op_type for n in out.graph.node].count("EfficientNMS_TRT") == 1
    assert f"[B, {'4+C, N' if layout == 'cn' else 'N, 4+C'}] (3 classes" in str(report.to_dict())
    for batch in (1, 3):
        feeds = {"images": np.random.default_rng(batch).uniform(-2, 2, (batch, 3, 8, 8)).astype(np.float32)}
        head = run_ort(m, feeds)["output0"]
        expected = expected_nms(head, layout, box, score, iou, k)
        got = run_with_reference(out, feeds)
        for name in OUTPUTS:
            assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert expected["num_dets"].min() > 0


def test_agnostic_and_told_layout():
    m = head_model(layout="nc", size=2)  # [B, 4, 7]: the smaller dim is not the box values
    with pytest.raises(InputError, match="layout nc puts 7 values per box|4 values per box"):
        fk.optimize(m, add_nms="max=3")
    out = fk.optimize(m, add_nms="layout=nc,max=3,agnostic=1,score=0.1")
    [node] = [n for n in out.graph.node if n.op_type == "EfficientNMS_TRT"]
    fields = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert fields["class_agnostic"] == 1 and fields["max_output_boxes"] == 3


@pytest.mark.parametrize("given, reason", [
    ("score=0.25,foo=1", "unknown key 'foo'"), ("iou=2", "iou=2 is not within"), ("max=0", "keeps no box"),
    ("layout=bcn", "one of auto, cn, nc"), ("score", "is not KEY=VALUE"), ("max=many", "max='many'")])
def test_bad_settings_are_input_errors(given, reason):
    with pytest.raises(InputError, match=reason):
        fk.optimize(head_model(), add_nms=given)


def test_models_without_a_head_are_declined_with_the_reason():
    two = head_model()
    two.graph.output.append(onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, None))
    with pytest.raises(InputError, match="the model has 2 outputs"):
        fk.optimize(two, add_nms="")
    flat = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 84] x) => (float[1, 84] y) { y = Relu (x) }""")
    with pytest.raises(InputError, match=r"output 'y' \[1, 84\] is not \[B, 4\+C, N\]"):
        fk.optimize(flat, add_nms="")
    square = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 9, 9] x) => (float[1, 9, 9] y) { y = Relu (x) }""")
    with pytest.raises(InputError, match="cannot tell which dim"):
        fk.optimize(square, add_nms="")
    assert [o.name for o in fk.optimize(square, add_nms="layout=cn").graph.output] == OUTPUTS


def test_cli_add_nms(tmp_path, capsys):
    source, target = tmp_path / "yolo.onnx", tmp_path / "e2e.onnx"
    onnx.save(head_model(), source)
    assert main(["optimize", str(source), "-o", str(target), "--add-nms", "score=0.3,iou=0.5,max=10"]) == 0
    assert [o.name for o in onnx.load(target).graph.output] == OUTPUTS
    assert "EfficientNMS_TRT appended to head 'output0'" in capsys.readouterr().out
    assert main(["optimize", str(source), "-o", str(tmp_path / "x.onnx"), "--add-nms", "maxx=3"]) == 2
    assert "unknown key 'maxx'" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_trace_says_what_add_nms_would_do():
    m = head_model()
    [head] = [n.name for n in m.graph.node if "output0" in n.output]
    steps = [s for s in fk.run(m, add_nms="max=5", trace=head).report.trace_steps if s.pass_name == "add-nms"]
    assert len(steps) == 1 and steps[0].verdict == "rewrote"
    assert "EfficientNMS_TRT appended to head 'output0' [B, 4+C, N] (3 classes; score 0.25, iou 0.45, max 5" \
        in steps[0].message


@pytest.mark.trt
@pytest.mark.parametrize("layout", ["cn", "nc"])
def test_appended_nms_parses_and_builds_with_tensorrt(tmp_path, layout):
    m = head_model(layout=layout)
    out = fk.optimize(m, add_nms="score=0.25,iou=0.45,max=20")
    profile = {"images": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}
    result = parse_and_build(tmp_path, out, creators=("EfficientNMS_TRT",), profile=profile,
                             words=["EfficientNMS_TRT"])
    assert result["parsed"], result["errors"]
    [node] = [n for n in out.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert result["plugin_layers"] == [node.name]
    assert result["outputs"] == [["num_dets", "DataType.INT32", [-1, 1]], ["det_boxes", "DataType.FLOAT", [-1, 20, 4]],
                                 ["det_scores", "DataType.FLOAT", [-1, 20]], ["det_classes", "DataType.INT32", [-1, 20]]]
    assert result["built"], result
    print(f"add-nms ({layout}): {len(m.graph.node)} nodes -> {len(out.graph.node)}, tensorrt layers {result['layers']}")
