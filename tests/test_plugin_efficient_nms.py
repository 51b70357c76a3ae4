"""The NMS tail -> EfficientNMS_TRT plugin spec (plugins/efficient_nms.py).

The patterns are the documented "batched NMS -> top-K padded" tail (built by
:func:`nms_tail_model`, dynamic batch) and the tails detector exporters write, re-created
in ``tests/nms_exporters.py`` (mmdeploy's batched multiclass_nms, yolov7's ONNX_ORT). The
spec's NumPy reference (plus, for mmdeploy, the nodes that rebuild dets/labels from the
plugin's outputs, run by onnxruntime) matches onnxruntime running the original at batch
sizes 1 and 3; the substitution is opt-in and declines variants it cannot vouch for; the
optimized models parse with tensorrt_rtx into exactly one PLUGIN_V3 layer named for the
NMS node and build (dynamic batch, in a subprocess).
"""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import fusekit.api as fk
from fusekit import registry
from fusekit.pass_infra import Decline
from fusekit.plugin_infra import PLUGIN_DOMAIN
from tests import nms_exporters
from tests.helpers import run_ort
from tests.plugin_build import parse_and_build

OUTPUTS = ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]


def nms_tail_model(n=6, c=3, k=5, per_class=10, iou=0.5, score=0.1, center=0, batch="B",
                   score_input=False, extra_output=False, topk_sorted=1) -> onnx.ModelProto:
    """boxes [B,N,4], scores [B,N,C] -> NonMaxSuppression + the tail in the spec's docstring."""
    inits = [nh.from_array(np.array([per_class], np.int64), "max_per_class"),
             nh.from_array(np.array([iou], np.float32), "iou_threshold"),
             nh.from_array(np.array(n, np.int64), "num_boxes"),
             nh.from_array(np.array([c * n], np.int64), "num_candidates"),
             nh.from_array(np.array([k], np.int64), "k"),
             nh.from_array(np.array([0], np.int64), "zero_1d"),
             nh.from_array(np.array(-3.0e38, np.float32), "fill"),
             nh.from_array(np.array(0, np.int64), "i0"), nh.from_array(np.array(1, np.int64), "i1"),
             nh.from_array(np.array(2, np.int64), "i2"), nh.from_array(np.array([1], np.int64), "ax1"),
             nh.from_array(np.array([-1], np.int64), "axm1"),
             nh.from_array(np.array(0, np.float32), "f0"), nh.from_array(np.array(0, np.int32), "z32")]
    if not score_input:
        inits.append(nh.from_array(np.array([score], np.float32), "score_threshold"))
    N = h.make_node
    nodes = [
        N("Transpose", ["scores"], ["scores_cn"], perm=[0, 2, 1]),
        N("NonMaxSuppression", ["boxes", "scores_cn", "max_per_class", "iou_threshold", "score_threshold"],
          ["selected"], center_point_box=center, name="nms"),
        N("Gather", ["selected", "i0"], ["sel_b"], axis=1),
        N("Gather", ["selected", "i1"], ["sel_c"], axis=1),
        N("Gather", ["selected", "i2"], ["sel_n"], axis=1),
        N("Mul", ["sel_c", "num_boxes"], ["sel_cn"]),
        N("Add", ["sel_cn", "sel_n"], ["sel_flat"]),
        N("Unsqueeze", ["sel_b", "ax1"], ["sel_b2"]),
        N("Unsqueeze", ["sel_flat", "ax1"], ["sel_flat2"]),
        N("Concat", ["sel_b2", "sel_flat2"], ["scatter_idx"], axis=1),
        N("GatherND", ["scores_cn", "selected"], ["sel_scores"]),
        N("Shape", ["boxes"], ["boxes_shape"]),
        N("Slice", ["boxes_shape", "zero_1d", "ax1"], ["batch"]),
        N("Concat", ["batch", "num_candidates"], ["dense_shape"], axis=0),
        N("Expand", ["fill", "dense_shape"], ["dense_fill"]),
        N("ScatterND", ["dense_fill", "scatter_idx", "sel_scores"], ["dense"]),
        N("TopK", ["dense", "k"], ["top_scores", "top_idx"], axis=1, largest=1, sorted=topk_sorted),
        N("Greater", ["top_scores", "fill"], ["valid"]),
        N("Cast", ["valid"], ["valid32"], to=T.INT32),
        N("ReduceSum", ["valid32", "ax1"], ["num_detections"], keepdims=1),
        N("Div", ["top_idx", "num_boxes"], ["top_c"]),
        N("Mod", ["top_idx", "num_boxes"], ["top_n"]),
        N("Unsqueeze", ["top_n", "axm1"], ["top_n2"]),
        N("GatherND", ["boxes", "top_n2"], ["top_boxes"], batch_dims=1),
        N("Unsqueeze", ["valid", "axm1"], ["valid3"]),
        N("Where", ["valid3", "top_boxes", "f0"], ["detection_boxes"]),
        N("Where", ["valid", "top_scores", "f0"], ["detection_scores"]),
        N("Cast", ["top_c"], ["top_c32"], to=T.INT32),
        N("Where", ["valid", "top_c32", "z32"], ["detection_classes"]),
    ]
    inputs = [h.make_tensor_value_info("boxes", T.FLOAT, [batch, n, 4]),
              h.make_tensor_value_info("scores", T.FLOAT, [batch, n, c])]
    if score_input:
        inputs.append(h.make_tensor_value_info("score_threshold", T.FLOAT, [1]))
    outputs = [h.make_tensor_value_info("num_detections", T.INT32, [batch, 1]),
               h.make_tensor_value_info("detection_boxes", T.FLOAT, [batch, k, 4]),
               h.make_tensor_value_info("detection_scores", T.FLOAT, [batch, k]),
               h.make_tensor_value_info("detection_classes", T.INT32, [batch, k])]
    if extra_output:
        outputs.append(h.make_tensor_value_info("selected", T.INT64, ["S", 3]))
    graph = h.make_graph(nodes, "nms_tail", inputs, outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def random_inputs(rng, batch: int, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 10, size=(batch, n, 2))
    wh = rng.uniform(1, 6, size=(batch, n, 2))
    boxes = np.concatenate([xy, xy + wh], -1)
    return boxes.astype(np.float32), rng.uniform(0, 1, size=(batch, n, c)).astype(np.float32)


def plugin_node(m: onnx.ModelProto) -> onnx.NodeProto:
    [node] = [n for n in m.graph.node if n.op_type == "EfficientNMS_TRT"]
    return node


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_substitution_is_opt_in_and_replaces_the_whole_tail():
    m = nms_tail_model(k=7, iou=0.4375, score=0.171875)
    assert "NonMaxSuppression" in [n.op_type for n in fk.optimize(m).graph.node]
    out = fk.optimize(m, plugins=["efficient-nms"])
    assert [(n.op_type, n.name, n.domain) for n in out.graph.node] == [("EfficientNMS_TRT", "nms", PLUGIN_DOMAIN)]
    node = plugin_node(out)
    assert list(node.input) == ["boxes", "scores"] and list(node.output) == OUTPUTS
    assert [o.name for o in out.graph.output] == OUTPUTS
    assert attrs(node) == {"background_class": -1, "max_output_boxes": 7, "score_threshold": 0.171875,
                           "iou_threshold": 0.4375, "score_activation": 0, "class_agnostic": 0, "box_coding": 0,
                           "plugin_version": b"1", "plugin_namespace": b""}
    assert plugin_node(fk.optimize(m, plugins="auto")).name == "nms"


@pytest.mark.parametrize("variant, reason", [
    (dict(per_class=3, k=5), "max_output_boxes_per_class 3 < K 5"),
    (dict(extra_output=True), "the NMS reaches 5 graph outputs"),
    (dict(score_input=True), "must be constants"),
    (dict(center=1), "outputs corner boxes"),
    (dict(topk_sorted=0), "(TopK) has sorted=0")])
def test_variants_it_cannot_vouch_for_are_declined(variant, reason):
    import onnx_graphsurgeon as gs

    from fusekit.pass_infra import Decline

    graph = gs.import_onnx(nms_tail_model(**variant))
    [nms] = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
    verdict = registry.discover_plugins()[0]["efficient-nms"].obj().match(graph, nms)
    assert isinstance(verdict, Decline) and reason in verdict.reason
    out = fk.optimize(nms_tail_model(**variant), plugins="auto")
    assert "NonMaxSuppression" in [n.op_type for n in out.graph.node]
    assert "EfficientNMS_TRT" not in [n.op_type for n in out.graph.node]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), c=st.integers(1, 4), k=st.integers(1, 8), iou=st.sampled_from([0.2, 0.5, 0.7]),
       score=st.sampled_from([0.0, 0.3, 0.8]), seed=st.integers(0, 999))
def test_reference_matches_onnxruntime_at_batch_1_and_3(n, c, k, iou, score, seed):
    k = min(k, n * c)
    m = nms_tail_model(n=n, c=c, k=k, per_class=k + 2, iou=iou, score=score)
    spec = registry.discover_plugins()[0]["efficient-nms"].obj()
    fields = attrs(plugin_node(fk.optimize(m, plugins="efficient-nms")))
    rng = np.random.default_rng(seed)
    for batch in (1, 3):
        boxes, scores = random_inputs(rng, batch, n, c)
        expected = run_ort(m, {"boxes": boxes, "scores": scores})
        got = spec.reference([boxes, scores], fields)
        for name, value in zip(OUTPUTS, got):
            assert value.dtype == expected[name].dtype and value.shape == expected[name].shape, name
            np.testing.assert_array_equal(value, expected[name], err_msg=name)




@pytest.mark.trt
def test_optimized_model_parses_and_builds_with_tensorrt(tmp_path):
    out = fk.optimize(nms_tail_model(k=7, iou=0.4375, score=0.171875), plugins="efficient-nms")
    names = ["EfficientNMS_TRT", "background_class", "max_output_boxes", "score_threshold", "iou_threshold",
             "score_activation", "class_agnostic", "box_coding"]
    values = [np.float32(0.4375).tobytes().decode("latin-1"), np.float32(0.171875).tobytes().decode("latin-1"),
              np.int32(-1).tobytes().decode("latin-1")]
    profile = {"boxes": ((1, 6, 4), (2, 6, 4), (3, 6, 4)), "scores": ((1, 6, 3), (2, 6, 3), (3, 6, 3))}
    result = parse_and_build(tmp_path, out, creators=("EfficientNMS_TRT",), profile=profile, words=names + values)
    assert result["parsed"], result["errors"]
    assert result["plugin_layers"] == ["nms"] and result["layers"] == 1
    assert result["fields"]["EfficientNMS_TRT"] == [{"background_class": -1, "max_output_boxes": 7, "score_threshold": 0.171875,
                                 "iou_threshold": 0.4375, "score_activation": 0, "class_agnostic": 0,
                                 "box_coding": 0}]
    assert result["outputs"] == [["num_detections", "DataType.INT32", [-1, 1]],
                                 ["detection_boxes", "DataType.FLOAT", [-1, 7, 4]],
                                 ["detection_scores", "DataType.FLOAT", [-1, 7]],
                                 ["detection_classes", "DataType.INT32", [-1, 7]]]
    assert result["built"]
    assert result["in_engine"] == names + values


# --- detector exporters' tails (tests/nms_exporters.py) ----------------------------------

def efficient_nms_spec():
    return registry.discover_plugins()[0]["efficient-nms"].obj()


def verdict_on(model: onnx.ModelProto):
    """The spec's verdict on the model as fusekit's default pipeline leaves it."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(fk.optimize(model))
    [nms] = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
    return efficient_nms_spec().match(graph, nms)


def without_plugin(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.NodeProto]:
    """The substituted model with the plugin node cut out: its four outputs become graph
    inputs, so onnxruntime runs the rebuild nodes on the NumPy reference's outputs."""
    node = plugin_node(model)
    types = [T.INT32, T.FLOAT, T.FLOAT, T.INT32]
    inputs = [h.make_tensor_value_info(name, t, None) for name, t in zip(node.output, types)]
    known, rebuild = set(node.output) | {i.name for i in model.graph.initializer}, []
    for n in model.graph.node:  # topological: the nodes computed from the plugin's outputs
        if n is not node and any(i in set(node.output) | {o for r in rebuild for o in r.output} for i in n.input) \
                and all(i in known or i == "" for i in n.input):
            rebuild.append(n)
            known |= set(n.output)
    graph = h.make_graph(rebuild, "rebuild", inputs, list(model.graph.output), list(model.graph.initializer))
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return h.make_model(graph, opset_imports=opsets, ir_version=model.ir_version), node


def selections_per_image(boxes, scores, iou, score) -> np.ndarray:
    """How many boxes NonMaxSuppression selects in each image (the reference with K = N*C)."""
    n, c = scores.shape[1:]
    fields = {"background_class": -1, "max_output_boxes": n * c, "score_threshold": score, "iou_threshold": iou,
              "box_coding": 0}
    return efficient_nms_spec().reference([boxes, scores], fields)[0][:, 0]


MMDEPLOY_REBUILD = ["EfficientNMS_TRT", "Less", "ReduceSum", "Equal", "Where", "Cast", "Where", "Unsqueeze", "Concat",
                    "Unsqueeze", "Where"]
RUNTIME_K_SLICE = ["Cast", "Add", "Less", "Where", "Slice", "Slice"]
MMDEPLOY = {"batched": (nms_exporters.mmdeploy_batched, (1, 3)), "single": (nms_exporters.mmdeploy_single, (1,))}


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("runtime_k", [False, True])
@pytest.mark.parametrize("form", sorted(MMDEPLOY))
def test_mmdeploy_tail_becomes_the_plugin_plus_a_rebuild_of_dets_and_labels(form, runtime_k, opset):
    m = MMDEPLOY[form][0](n=50, c=3, per_class=20, iou=0.4375, score=0.171875, keep_top_k=10, opset=opset,
                          clamp_k=runtime_k)
    out, report = fk.optimize(m, plugins=["efficient-nms"], return_report=True)
    onnx.checker.check_model(out, full_check=True)
    assert [o.name for o in out.graph.output] == ["dets", "labels"]
    ops = [n.op_type for n in out.graph.node]
    assert sorted(ops) == sorted(MMDEPLOY_REBUILD + (RUNTIME_K_SLICE if runtime_k else []))
    node = plugin_node(out)
    assert list(node.input) == ["boxes", "scores"]
    assert attrs(node) == {"background_class": -1, "max_output_boxes": 10, "score_threshold": 0.171875,
                           "iou_threshold": 0.4375, "score_activation": 0, "class_agnostic": 0, "box_coding": 0,
                           "plugin_version": b"1", "plugin_namespace": b""}
    said = str(report.to_dict())
    assert f"mmdeploy multiclass_nms ({'dynamic batch' if form == 'batched' else 'batch 1'}" in said
    assert "dets/labels rebuilt from the plugin's outputs" in said
    assert ("sliced to min(K, selections + 1) rows" in said) == runtime_k


K_CHOICES = {  # K from S, the selections in the batch; with a constant K onnxruntime needs K <= S + 1
    False: [lambda s: 10, lambda s: s + 1, lambda s: max(1, s - 3)],
    True: [lambda s: 10, lambda s: s + 1, lambda s: s + 7, lambda s: max(1, s - 3)]}


@pytest.mark.parametrize("form, batch", [("batched", 1), ("batched", 3), ("single", 1)])
@pytest.mark.parametrize("runtime_k", [False, True])
@pytest.mark.parametrize("score", [0.05, 0.6, 0.9])
def test_mmdeploy_reference_and_rebuild_equal_onnxruntime(form, batch, runtime_k, score):
    rng = np.random.default_rng(batch * 100 + int(score * 10) + 7 * runtime_k)
    n, c, iou = 40, 3, 0.5
    for k_of in K_CHOICES[runtime_k]:
        boxes, scores = random_inputs(rng, batch, n, c)
        s = int(selections_per_image(boxes, scores, iou, score).sum())
        k = k_of(s)
        m = MMDEPLOY[form][0](n=n, c=c, per_class=1000, iou=iou, score=score, keep_top_k=k, clamp_k=runtime_k)
        expected = run_ort(m, {"boxes": boxes, "scores": scores})
        rebuild, node = without_plugin(fk.optimize(m, plugins="efficient-nms"))
        reference = efficient_nms_spec().reference([boxes, scores], attrs(node))
        got = run_ort(rebuild, dict(zip(node.output, reference)))
        for name in ("dets", "labels"):
            assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
        assert expected["dets"].shape[1] == min(k, s + 1)
        if k >= s + 1:  # mmdeploy's appended zero row, with label 0
            assert (expected["labels"][:, s] == 0).all() and (expected["dets"][:, s] == 0).all()


@pytest.mark.parametrize("runtime_k", [False, True])
def test_a_detector_ending_in_mmdeploys_tail_equals_onnxruntime_at_batch_1_and_3(runtime_k):
    """boxes and scores computed by a head (not graph inputs): the head stays, the tail goes."""
    m = nms_exporters.mmdeploy_detector(size=8, per_class=200, iou=0.5, score=0.3, keep_top_k=20,
                                        clamp_k=runtime_k)
    out = fk.optimize(m, plugins="efficient-nms")
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("EfficientNMS_TRT") == 1 and "NonMaxSuppression" not in ops and "Conv" in ops
    node = plugin_node(out)
    probe = fk.optimize(m)  # the same model without the substitution, the NMS inputs as outputs too
    probe.graph.output.extend([h.make_tensor_value_info(name, T.FLOAT, None) for name in node.input])
    rebuild, _ = without_plugin(out)
    rng = np.random.default_rng(11)
    for batch in (1, 3):
        images = rng.uniform(-1, 1, size=(batch, 3, 8, 8)).astype(np.float32)
        expected = run_ort(probe, {"images": images})
        reference = efficient_nms_spec().reference([expected[node.input[0]], expected[node.input[1]]], attrs(node))
        got = run_ort(rebuild, dict(zip(node.output, reference)))
        for name in ("dets", "labels"):
            assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_mmdeploy_batched_near_misses_are_declined():
    import onnx_graphsurgeon as gs

    def verdict(graph):
        [nms] = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
        return efficient_nms_spec().match(graph, nms)

    base = fk.optimize(nms_exporters.mmdeploy_batched(keep_top_k=10))
    # a changed constant: padding labels -2 instead of -1
    graph = gs.import_onnx(base)
    [where] = [n for n in graph.nodes if n.op == "Where" and n.inputs[1].dtype == np.int64]
    where.inputs[2] = gs.Constant("minus_two", np.array([-2], np.int64))
    assert "is not the constant [-1]" in verdict(graph).reason
    # an intermediate computed from the NMS (TopK's indices) read outside the tail
    graph = gs.import_onnx(base)
    [topk] = [n for n in graph.nodes if n.op == "TopK"]
    graph.outputs.append(topk.outputs[1])
    assert "the NMS reaches 3 graph outputs" in verdict(graph).reason
    # run-time K: the K compared with the row count is not the K taken
    graph = gs.import_onnx(fk.optimize(nms_exporters.mmdeploy_batched(keep_top_k=10, clamp_k=True)))
    [less] = [n for n in graph.nodes if n.op == "Less"]
    less.inputs[0] = gs.Constant("other_k", np.array(11, np.int64))
    assert "is not the pattern's k" in verdict(graph).reason
    cases = [
        (dict(score_input=True), "must be constants"),
        (dict(per_class=5, keep_top_k=10), "max_output_boxes_per_class 5 < K 10"),
        (dict(per_class=5, keep_top_k=10, clamp_k=True), "max_output_boxes_per_class 5 < K 10"),
        (dict(score=-0.5), "score_threshold < 0"),
    ]
    for variant, reason in cases:
        m = nms_exporters.mmdeploy_batched(**variant)
        v = verdict_on(m)
        assert isinstance(v, Decline) and reason in v.reason, (variant, v)
        assert "EfficientNMS_TRT" not in [n.op_type for n in fk.optimize(m, plugins="auto").graph.node]


def test_values_before_the_nms_that_the_tail_shares_stay():
    """The batch size (Shape(scores)[0]) read elsewhere too: the tail goes, the Shape stays."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(fk.optimize(nms_exporters.mmdeploy_batched(keep_top_k=10)))
    [batch] = [n.outputs[0] for n in graph.nodes if n.op == "Gather" and n.inputs[0].inputs
               and n.inputs[0].inputs[0].op == "Shape" and n.inputs[0].inputs[0].inputs[0].name == "scores"]
    seen = gs.Variable("batch_seen", dtype=np.int64, shape=[])
    graph.nodes.append(gs.Node("Identity", "seen", inputs=[batch], outputs=[seen]))
    graph.outputs.append(seen)
    m = gs.export_onnx(graph)
    out = fk.optimize(m, plugins="efficient-nms")
    assert sorted(n.op_type for n in out.graph.node) == sorted(MMDEPLOY_REBUILD + ["Shape", "Gather"])
    assert [o.name for o in out.graph.output] == ["dets", "labels", "batch_seen"]
    [shape] = [n for n in out.graph.node if n.op_type == "Shape"]
    assert list(shape.input) == ["scores"]


def test_mmdeploy_single_near_misses_are_declined():
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(fk.optimize(nms_exporters.mmdeploy_single(keep_top_k=10, clamp_k=True)))
    [concat] = [n for n in graph.nodes if n.op == "Concat" and n.inputs[1].dtype == np.int64]
    concat.inputs[1] = gs.Constant("label_three", np.array([[3]], np.int64))  # the appended row's label
    [nms] = [n for n in graph.nodes if n.op == "NonMaxSuppression"]
    assert "is not the constant [[0]]" in efficient_nms_spec().match(graph, nms).reason
    v = verdict_on(nms_exporters.mmdeploy_single(per_class=5, keep_top_k=10))
    assert isinstance(v, Decline) and "max_output_boxes_per_class 5 < K 10" in v.reason


@pytest.mark.parametrize("model, reason", [
    (lambda: nms_exporters.yolov7_ort(n=40, c=3), "has one row per selected box"),
    (lambda: nms_exporters.torchvision_batched(n=40), "torchvision's nms exports four")])
def test_tails_with_one_row_per_kept_box_are_declined(model, reason):
    m = model()
    verdict = verdict_on(m)
    assert isinstance(verdict, Decline) and reason in verdict.reason
    ops = [n.op_type for n in fk.optimize(m, plugins="auto").graph.node]
    assert "NonMaxSuppression" in ops and "EfficientNMS_TRT" not in ops


@pytest.mark.trt
@pytest.mark.parametrize("form, runtime_k", [("batched", False), ("batched", True), ("single", True)])
def test_mmdeploy_substitute_parses_and_builds_with_tensorrt(tmp_path, form, runtime_k):
    out = fk.optimize(MMDEPLOY[form][0](n=50, c=3, per_class=20, iou=0.4375, score=0.171875, keep_top_k=10,
                                        clamp_k=runtime_k), plugins="efficient-nms")
    profile = {"boxes": ((1, 50, 4), (2, 50, 4), (4, 50, 4)),
               "scores": ((1, 50, 3), (2, 50, 3), (4, 50, 3))} if form == "batched" else None
    result = parse_and_build(tmp_path, out, creators=("EfficientNMS_TRT",), profile=profile,
                             words=["EfficientNMS_TRT"])
    assert result["parsed"], result["errors"]
    assert result["plugin_layers"] == [plugin_node(out).name]
    assert result["fields"]["EfficientNMS_TRT"][0]["max_output_boxes"] == 10
    batch, rows = (-1 if form == "batched" else 1), (-1 if runtime_k else 10)
    assert result["outputs"] == [["dets", "DataType.FLOAT", [batch, rows, 5]],
                                 ["labels", "DataType.INT64", [batch, rows]]]
    assert result["built"], result
    assert result["in_engine"] == ["EfficientNMS_TRT"]
    print(f"tensorrt layers ({form}, runtime_k={runtime_k}):", result["layers"])


def test_pattern_constants_leave_lazy_weights_unread_on_the_tensor():
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from fusekit.plugins._nms_pattern import const, single_value

    lazy = gs.Constant("k", LazyValues(nh.from_array(np.array([7], np.int64), "k")))
    assert single_value(lazy) == 7 and isinstance(const(lazy), np.ndarray)
    assert isinstance(lazy._values, LazyValues)  # read, not cached on the tensor
    out = gs.Variable("out")
    gs.Node("Constant", attrs={"value": gs.Constant("v", np.array([1.5, 2.5], np.float32))}, outputs=[out])
    assert const(out).tolist() == [1.5, 2.5] and const(gs.Variable("free")) is None
