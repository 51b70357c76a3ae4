"""Ultralytics' ``nms=True`` export -> EfficientNMS_TRT (plugins/_nms_ultralytics.py).

The export is re-created in ``tests/ultralytics_nms.py`` (a tiny YOLO-style head + NMSModel's
tail, Ultralytics' exporter settings, optionally slimmed by onnxslim). The proof: the
optimized model, with the plugin's outputs given by the spec's NumPy reference and the rest
(head, masked scores, rebuild of output0's rows, Ultralytics' own zeros/ScatterND/Slice)
run by onnxruntime, equals onnxruntime on the original export, at batch 1 and, for dynamic
exports, at larger batches too; tensorrt_rtx parses the result into one plugin layer and
builds it with a dynamic batch.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

import fusekit.api as fk
from fusekit.builder import backend as backends
from fusekit.pass_infra import Decline
from tests import ultralytics_nms
from tests.helpers import run_ort
from tests.nms_exporters import export
from tests.plugin_build import parse_and_build
from tests.nms_reference import run_with_reference
from tests.test_plugin_efficient_nms import attrs, efficient_nms_spec, plugin_node

BACKEND = backends.installed()


def images(batch: int, seed: int, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, size=(batch, 3, size, size)).astype(np.float32)


FORMS = [{"slim": slim, "agnostic": agnostic} for slim in (False, True) for agnostic in (False, True)]
EXPORTS = [  # (export settings, batches to run)
    ({}, (1,)),
    ({"dynamic": True}, (1, 3)),  # the export: dynamic, traced at batch 1 (other images stay zero)
    ({"dynamic": True, "batch": 2}, (1, 2, 3)),  # traced at 2: one tail per image, padded to 2
    ({"batch": 2}, (2,)),
]


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f"slim={f['slim']},agnostic={f['agnostic']}")
@pytest.mark.parametrize("export, batches", EXPORTS, ids=lambda e: str(e))
def test_ultralytics_tail_becomes_the_plugin_and_equals_onnxruntime(form, export, batches):
    m = ultralytics_nms.export(size=20, classes=3, **form, **export)
    out, report = fk.optimize(m, plugins=["efficient-nms"], return_report=True)
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == ["output0"]
    ops = [n.op_type for n in out.graph.node]
    assert "NonMaxSuppression" not in ops and "NonZero" not in ops
    node = plugin_node(out)  # one plugin for every image of the traced batch
    assert attrs(node) == {"background_class": -1, "max_output_boxes": 300, "score_threshold": 0.25,
                           "iou_threshold": pytest.approx(0.45), "score_activation": 0,
                           "class_agnostic": int(form["agnostic"]), "box_coding": 0,
                           "plugin_version": b"1", "plugin_namespace": b""}
    said = str(report.to_dict())
    assert ("images 0, 1 (" if export.get("batch", 1) == 2 else "image 0 (") in said
    # the form as exported, or as the pipeline's cleanup leaves it (", cleaned")
    assert f"Ultralytics NMSModel ({'agnostic' if form['agnostic'] else 'class-aware'}, " \
           f"{'onnxslim' if form['slim'] else 'as exported'}" in said
    for batch in batches:
        for seed in range(3):
            feeds = {"images": images(batch, seed)}
            expected = run_ort(m, feeds)["output0"]
            got = run_with_reference(out, feeds)["output0"]
            assert got.dtype == expected.dtype and got.shape == expected.shape == (batch, 300, 6)
            np.testing.assert_array_equal(got, expected)
            assert (expected[:, :, 4] > 0).sum() > 0  # something was detected


@pytest.mark.parametrize("opset", [14, 17, 19])
@pytest.mark.parametrize("conf, iou, max_det", [(0.25, 0.45, 300), (0.5, 0.3, 7), (0.1, 0.7, 20)])
def test_ultralytics_settings_and_opsets(opset, conf, iou, max_det):
    m = ultralytics_nms.export(size=20, classes=4, opset=opset, dynamic=True, conf=conf, iou=iou, max_det=max_det)
    out = fk.optimize(m, plugins="auto")
    node = plugin_node(out)
    assert attrs(node)["max_output_boxes"] == max_det
    assert attrs(node)["score_threshold"] == pytest.approx(conf) and attrs(node)["iou_threshold"] == pytest.approx(iou)
    for batch in (1, 2):
        feeds = {"images": images(batch, opset)}
        np.testing.assert_array_equal(run_with_reference(out, feeds)["output0"], run_ort(m, feeds)["output0"])


def test_ultralytics_near_misses_are_declined():
    def verdict(graph):
        [nms] = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
        return efficient_nms_spec().match(graph, nms)

    base = fk.optimize(ultralytics_nms.export(size=20))
    graph = gs.import_onnx(base)
    [greater] = [n for n in graph.nodes if n.op == "Greater"]
    greater.inputs[1] = gs.Constant("conf0", np.array(0.0, np.float32))
    v = verdict(graph)
    assert isinstance(v, Decline) and "conf 0 <= 0" in v.reason
    graph = gs.import_onnx(base)  # the rows padded with something else than zeros
    [pad] = [n for n in graph.nodes if n.op == "Pad"]
    pad.inputs[2] = gs.Constant("one", np.array(1.0, np.float32))
    v = verdict(graph)
    assert isinstance(v, Decline) and "the pattern omits it" in v.reason and "torchvision's nms" in v.reason
    graph = gs.import_onnx(base)  # a kept row read elsewhere
    [dets] = [n.outputs[0] for n in graph.nodes if n.op == "Concat" and len(n.inputs) == 4 and n.attrs["axis"] == -1]
    graph.outputs.append(dets)
    v = verdict(graph)
    assert isinstance(v, Decline) and "is read outside the NMS tail" in v.reason
    graph = gs.import_onnx(base)  # boxes not divided by the image side but by a per-coordinate vector
    [div] = [n for n in graph.nodes if n.op == "Div" and n.inputs[0].inputs and n.inputs[0].inputs[0].op == "GatherND"]
    div.inputs[1] = gs.Constant("per_coord", np.array([20, 10, 20, 10], np.float32))
    v = verdict(graph)
    assert isinstance(v, Decline) and "must be constant scalars" in v.reason


@pytest.mark.trt
@pytest.mark.parametrize("slim, traced", [(False, 1), (True, 1), (False, 2)])
def test_ultralytics_substitute_parses_and_builds_with_tensorrt(tmp_path, slim, traced):
    m = ultralytics_nms.export(size=20, dynamic=True, slim=slim, batch=traced)
    out = fk.optimize(m, plugins="efficient-nms")
    profile = {"images": ((1, 3, 20, 20), (2, 3, 20, 20), (4, 3, 20, 20))}
    result = parse_and_build(tmp_path, out, creators=("EfficientNMS_TRT",), profile=profile,
                             words=["EfficientNMS_TRT"])
    assert result["parsed"], result["errors"]
    assert result["plugin_layers"] == [plugin_node(out).name]
    assert result["fields"]["EfficientNMS_TRT"][0]["max_output_boxes"] == 300
    assert result["outputs"] == [["output0", "DataType.FLOAT", [-1, 300, 6]]]
    assert result["built"], result
    assert result["in_engine"] == ["EfficientNMS_TRT"]
    print(f"ultralytics (slim={slim}, traced at {traced}): {len(m.graph.node)} nodes exported, {len(out.graph.node)} after, "
          f"tensorrt layers {result['layers']}")


class _GivenHead(torch.nn.Module):
    """The head output given as the model input ``pred [1, 4+C, N]`` (so tests choose the boxes)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, pred):
        return pred * 1.0


def test_class_aware_equality_ends_where_boxes_leave_the_image():
    """Ultralytics separates classes by offsetting boxes divided by the image side (here the
    traced input's last dim, 4) by their class: boxes within that side never meet across
    classes, boxes far beyond it can. The substitute separates classes exactly, so the two
    agree on the first case and differ on the second, as plugins/_nms_ultralytics.py says."""
    module = ultralytics_nms.UltralyticsNms(_GivenHead(2), conf=0.25, iou=0.45, max_det=4).eval()
    m = export(module, {"pred": torch.rand(1, 6, 4)}, ["output0"], opset=17, dynamic_batch=False)
    out = fk.optimize(m, plugins="efficient-nms")
    assert "EfficientNMS_TRT" in [n.op_type for n in out.graph.node]

    def pred(big: float) -> np.ndarray:  # box 0 (class 0, 0.9) and box 1 (class 1, 0.8) share a corner at 0
        boxes = [[0, 0, big, big], [0, 0, 0.75 * big, 0.75 * big], [3, 3, 4, 4], [2, 2, 3, 3]]
        scores = [[0.9, 0.1], [0.1, 0.8], [0.1, 0.1], [0.1, 0.1]]
        return np.concatenate([np.array(boxes), np.array(scores)], 1).T[None].astype(np.float32)

    inside, beyond = {"pred": pred(4.0)}, {"pred": pred(16.0)}
    np.testing.assert_array_equal(run_with_reference(out, inside)["output0"], run_ort(m, inside)["output0"])
    kept_by_ultralytics = (run_ort(m, beyond)["output0"][0, :, 4] > 0).sum()
    kept_by_plugin = (run_with_reference(out, beyond)["output0"][0, :, 4] > 0).sum()
    assert (kept_by_ultralytics, kept_by_plugin) == (1, 2)  # class 1's box suppressed across classes
