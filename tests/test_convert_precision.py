"""convert-precision: fp16/bf16 conversion in the graph, with FP32 kept where it is needed.

Every conversion is run before and after through onnxruntime (which runs fp16 nodes it has
no CPU kernel for through Casts it inserts itself); the documented tolerance is
``max|x - y| / (1 + max|x|) <= 1e-2`` per output.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.printer
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusekit.api as fk
from fusekit.errors import InputError
from fusekit.precision_data import output_errors
from tests.helpers import feeds_for, parse
from tests.strategies import onnx_models
from tests.zoo_models import zoo_model

F16, F32, BF16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.BFLOAT16
TOLERANCE = 1e-2  # max|x - y| / (1 + max|x|), per output


def convert(model, precision="fp16", **kwargs):
    """Only the precision pass; returns (converted proto, the report's precision summary)."""
    proto, report = fk.optimize(model, passes=["convert-precision"], precision=precision, return_report=True,
                                **kwargs)
    onnx.checker.check_model(proto, full_check=True)
    return proto, report.precision


def kept(summary) -> dict[str, str]:
    return {k["node"]: k["reason"] for k in summary["kept"]}


def types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value (inputs, outputs, value infos, initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    found = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.value_info, *g.output)}
    found.update({t.name: t.data_type for t in g.initializer})
    return found


def casts(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Cast"]


def assert_no_cancelling_casts(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """No Cast reads a Cast's output (adjacent Casts are merged, pairs that cancel removed);
    pairs of Casts both in ``original`` are the model's own and left alone."""
    own = {n.name for n in original.graph.node} if original is not None else set()
    made_by = {o: n.name for n in casts(model) for o in n.output}
    assert not [n.name for n in casts(model) if n.input[0] in made_by and not {n.name, made_by[n.input[0]]} <= own]


def assert_close(original, converted, feeds_list=None) -> dict:
    errors = output_errors(original, converted, feeds_list)
    assert all(e["relative_error"] <= TOLERANCE for e in errors.values()), errors
    return errors


CHAIN = """
g (float[N,8] x) => (float[N,8] y) {
    w = Constant<value = float[8,8] {%s}>()
    [mm] a = MatMul(x, w)
    [relu] r = Relu(a)
    [the_exp] e = Exp(r)
    [mul] b = Mul(e, r)
    [tanh] y = Tanh(b)
}""".replace("%s", ", ".join(str(round(0.05 * ((i * 7) % 11 - 5), 3)) for i in range(64)))


def test_casts_only_at_region_boundaries_and_io_keeps_its_type():
    model = parse(CHAIN)
    converted, summary = convert(model)
    t = types(converted)
    assert t["x"] == F32 and t["y"] == F32  # graph I/O as declared
    assert t["a"] == F16 and t["r"] == F16 and t["b"] == F16
    assert t["e"] == F32 and kept(summary) == {"the_exp": "Exp overflows the target type for inputs above ~11"}
    # x -> fp16 (input), r -> fp32 (into Exp), e -> fp16 (out of Exp), y back to fp32: four Casts
    assert len(casts(converted)) == summary["casts_added"] == 4
    assert_no_cancelling_casts(converted)
    assert [o.name for o in converted.graph.output] == ["y"]
    assert_close(model, converted, feeds_for(model, (1, 2)))


def test_io_converted_with_precision_io():
    model = parse(CHAIN)
    converted, summary = convert(model, precision_io=True)
    t = types(converted)
    assert t["x"] == F16 and t["y"] == F16 and summary["io"] == "fp16"
    assert len(casts(converted)) == 2  # only around the kept Exp
    assert_close(model, converted, feeds_for(model, (1, 2)))


def test_keep_float_by_op_and_by_name():
    model = parse(CHAIN)
    by_op, summary = convert(model, keep_float="Relu,Tanh")
    assert {n: r for n, r in kept(summary).items() if "keep-float" in r} == {
        "relu": "--keep-float names the op Relu", "tanh": "--keep-float names the op Tanh"}
    assert types(by_op)["r"] == F32
    by_name, summary = convert(model, keep_float=["mm"])
    assert kept(summary)["mm"] == "--keep-float names this node" and types(by_name)["a"] == F32
    assert_no_cancelling_casts(by_name)
    assert_close(model, by_name)


def test_keep_float_by_weights_beyond_the_range_and_flushed_to_zero():
    model = parse("""
    g (float[N,4] x) => (float[N,4] y) {
        big = Constant<value = float[4] {1e6, 2, 3, 4}>()
        tiny = Constant<value = float[1] {1e-12}>()
        [scale] a = Mul(x, big)
        [eps] b = Add(a, tiny)
        [fine] y = Relu(b)
    }""")
    converted, summary = convert(model)
    reasons = kept(summary)
    assert "beyond fp16's range" in reasons["scale"] and "would be 0 in fp16" in reasons["eps"]
    assert "fine" not in reasons
    assert_close(model, converted)


def test_keep_float_by_data(tmp_path):
    model = parse("""
    g (float[N,4] x) => (float[N,4] y) {
        k = Constant<value = float[1] {1000}>()
        [grow] a = Mul(x, k)
        [square] b = Mul(a, a)
        [shrink] y = Div(b, k)
    }""")
    plain, summary = convert(model)
    assert kept(summary) == {}
    data = tmp_path / "data.npz"
    np.savez(data, x=np.full((3, 2, 4), 10.0, np.float32))  # 3 samples of [2, 4]: b reaches 1e8
    converted, summary = convert(model, data=data)
    reasons = kept(summary)
    assert set(reasons) == {"square", "shrink"}
    assert "'b' reached 1e+08 on the data" in reasons["square"]
    assert summary["error_inputs"] == "data" and summary["data_samples"] == 3
    out = output_errors(model, converted, [{"x": np.full((2, 4), 10.0, np.float32)}])
    assert out["y"]["relative_error"] < 1e-3
    # onnxruntime computes fp16 Mul through its own Casts to FP32, so only the types show it
    assert types(plain)["b"] == F16 and types(converted)["b"] == F32 and types(converted)["a"] == F16


def test_data_errors_name_the_option(tmp_path):
    model = parse(CHAIN)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, z=np.zeros((1, 8), np.float32))
    with pytest.raises(InputError, match="--data .*wrong.npz: no model input named z; no array for input x"):
        convert(model, data=wrong)
    with pytest.raises(InputError, match=r"\(--data\): .*missing.npz: no such file"):
        convert(model, data=tmp_path / "missing.npz")
    with pytest.raises(InputError, match=r"\(--precision\): expected fp16 or bf16 .*'fp8'"):
        convert(model, precision="fp8")
    with pytest.raises(InputError, match="need --precision"):
        fk.optimize(model, keep_float="Relu")


def test_attributes_that_set_a_float_type_follow_the_data():
    model = parse("""
    g (int64[N,4] ids, float[N,4] x) => (float[N,4] y, int64[2] s) {
        s = Shape(x)
        [fill] z = ConstantOfShape<value = float[1] {0.5}>(s)
        [as_float] f = Cast<to = 1>(ids)
        [eye] e = EyeLike<dtype = 1>(x)
        [noise] r = RandomUniformLike<dtype = 1, low = 0.0, high = 0.0>(x)
        a = Add(x, z)
        b = Add(a, f)
        c = Add(b, r)
        ones = Constant<value_float = 1.0>()
        d = Mul(c, ones)
        y = Add(d, e)
    }""")
    converted, summary = convert(model)
    nodes = {n.name: n for n in converted.graph.node}
    attr = {n: {a.name: a for a in nodes[n].attribute} for n in ("fill", "as_float", "eye", "noise")}
    assert attr["fill"]["value"].t.data_type == F16 and attr["as_float"]["to"].i == F16
    assert types(converted)["ones"] == F16
    assert types(converted)["s"] == onnx.TensorProto.INT64  # integers untouched
    # EyeLike/RandomUniformLike: onnxruntime has no fp16 kernel and cannot Cast around them
    assert set(kept(summary)) == {"eye", "noise"} and "onnxruntime has no fp16" in kept(summary)["eye"]
    assert attr["eye"]["dtype"].i == F32 and types(converted)["e"] == F32
    assert_close(model, converted)


def test_a_cast_feeding_both_regions_is_merged_not_chained():
    model = parse("""
    g (int64[N,4] ids) => (float[N,4] y) {
        [as_float] f = Cast<to = 1>(ids)
        [to16] a = Relu(f)
        [to32] b = Exp(f)
        y = Add(a, b)
    }""")
    converted, summary = convert(model, keep_float="Add")
    assert {k["op"] for k in summary["kept"]} == {"Exp", "Add"}
    assert_no_cancelling_casts(converted)
    made = {o: n for n in casts(converted) for o in n.output}
    exp = next(n for n in converted.graph.node if n.op_type == "Exp")
    # Exp (kept) reads a Cast of the integers themselves, not a Cast of the fp16 Cast
    assert made[exp.input[0]].input[0] == "ids" and made[exp.input[0]].attribute[0].i == F32
    assert_close(model, converted)


def test_ops_without_the_type_in_the_spec_keep_float32():
    model = parse("""
    g (float[1,6,4] boxes, float[1,1,6] scores, float[1,3,8,8] img) => (int64[K,3] sel, float[1,3,16,16] up) {
        m = Constant<value = int64[1] {3}>()
        [nms] sel = NonMaxSuppression(boxes, scores, m)
        roi = Constant<value = float[0] {}>()
        scales = Constant<value = float[4] {1, 1, 2, 2}>()
        [resize] up = Resize(img, roi, scales)
    }""")
    converted, summary = convert(model)
    assert "ONNX opset 17 has no fp16 for NonMaxSuppression input 'boxes'" in kept(summary)["nms"]
    assert "resize" not in kept(summary)  # converted; its scales stay float32 (the spec's only type)
    assert types(converted)["scales"] == F32
    assert_close(model, converted)


def test_trace_and_inspect_give_each_kept_node_its_reason(tmp_path):
    model = parse(CHAIN)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    result = fk.run(path, passes=["convert-precision"], precision="fp16", trace="the_exp")
    assert {s.message for s in result.report.trace_steps} == {  # each round that ran says so
        "kept FP32: Exp overflows the target type for inputs above ~11"}
    assert [e.action for e in result.report.events if e.node == "the_exp"] == [
        "kept FP32: Exp overflows the target type for inputs above ~11"]


def test_bf16_converts_what_opset_17_allows_and_keeps_conv():
    model = parse("""
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
        w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
        [conv] c = Conv(x, w)
        [act] y = Relu(c)
    }""")
    converted, summary = convert(model, precision="bf16")
    assert "ONNX opset 17 has no bf16 for Conv" in kept(summary)["conv"]
    assert types(converted)["y"] == F32 and summary["type"] == "bf16"
    relu = next(n for n in converted.graph.node if n.op_type == "Relu")
    assert types(converted)[relu.input[0]] == BF16  # Relu runs in bf16 between two Casts
    # onnxruntime has no CPU bf16 Relu: the report says the comparison could not run
    assert summary["outputs"] == {} and "onnxruntime cannot run" in summary["error_skipped"]


@pytest.mark.parametrize("name", ["resnet-tiny", "encoder-tiny"])
def test_zoo_models_within_tolerance_at_batch_1_and_2(name):
    model = onnx.load(zoo_model(name))
    converted, summary = fk.optimize(model, precision="fp16", return_report=True)
    summary = summary.precision
    assert all(e["relative_error"] <= TOLERANCE for e in summary["outputs"].values()), summary["outputs"]
    t = types(converted)
    floats = Counter(t[i.name] for i in converted.graph.initializer if t[i.name] in (F16, F32))
    assert floats[F16] > 0 and floats[F32] <= 1  # weights are fp16 (at most a constant kept)
    if name == "encoder-tiny":
        assert t["words.weight"] == F16 and t["input_ids"] == onnx.TensorProto.INT64
        sess_feeds = [{"input_ids": np.random.default_rng(b).integers(0, 1000, (b, 16)).astype(np.int64),
                       "attention_mask": np.ones((b, 16), np.int64)} for b in (1, 2)]
        assert_close(model, converted, sess_feeds)
    else:
        assert_close(model, converted, [{"images": np.random.default_rng(b).standard_normal(
            (b, 3, 64, 64)).astype(np.float32)} for b in (1, 2)])
    assert_no_cancelling_casts(converted)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(onnx_models())
def test_random_graphs_keep_their_outputs_within_tolerance(model):
    converted, _ = convert(model)
    assert_no_cancelling_casts(converted, model)
    assert [o.name for o in converted.graph.output] == [o.name for o in model.graph.output]
    assert_close(model, converted, feeds_for(model, (1, 3)))


# -- TensorRT (tensorrt_rtx builds on this CPU-only machine) -------------------------

def _backend():
    from fusekit.builder import backend as backends

    return backends.installed()


needs_trt = pytest.mark.skipif(_backend() is None, reason="no TensorRT backend imports")


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("name, dynamic", [("resnet-tiny", ["batch=1:2:4"]),
                                           ("encoder-tiny", ["batch=1:2:4", "seq=4:16:32"])])
def test_build_fp16_is_a_strongly_typed_fp16_engine(name, dynamic, tmp_path):
    fp32 = fk.build(zoo_model(name), optimize=False, dynamic=dynamic)
    fp16 = fk.build(zoo_model(name), fp16=True, dynamic=dynamic, output=tmp_path / "m.engine")
    precisions = Counter(p for layer in fp16.report.engine for p in layer.precisions)
    assert precisions["float16"] > precisions.get("float32", 0), precisions
    assert fp16.report.compute_layers <= fp32.report.compute_layers
    assert fp16.report.engine_bytes < fp32.report.engine_bytes
    assert fp16.sidecar["precision"] == "fp32+fp16"  # fp32 I/O around an fp16 graph
    assert any(note.startswith("converted to fp16 in the graph") for note in fp16.report.notes)


@pytest.mark.trt
@needs_trt
def test_build_bf16_parses_and_builds():
    result = fk.build(zoo_model("encoder-tiny"), bf16=True, dynamic=["batch=1:2:4", "seq=4:16:32"])
    assert Counter(p for layer in result.report.engine for p in layer.precisions)["bfloat16"] > 0
    assert result.sidecar["precision"] == "fp32+bf16"


def test_strongly_typed_network_flag_is_used_where_it_exists():
    from types import SimpleNamespace

    from fusekit.builder.parse import network_flags

    assert network_flags(SimpleNamespace()) == 0  # TensorRT 11 / tensorrt_rtx: no flag, always strong
    trt10 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    assert network_flags(trt10) == 2


def test_bf16_data_movement_runs_in_onnxruntime():
    """onnxruntime's CPU bf16 kernels are few (Cast and data movement): what runs is checked."""
    model = parse("""
    g (float[N,4,6] x) => (float[N,24] y) {
        w = Constant<value = float[6,6] {1,0,0,0,0,0, 0,1,0,0,0,0, 0,0,1,0,0,0, 0,0,0,1,0,0, 0,0,0,0,1,0, 0,0,0,0,0,1}>()
        [mm] a = MatMul(x, w)
        [t] b = Transpose<perm = [0, 2, 1]>(a)
        shape = Constant<value = int64[2] {0, -1}>()
        [r] y = Reshape(b, shape)
    }""")
    converted, summary = convert(model, precision="bf16", keep_float="MatMul")
    t = types(converted)
    assert t["b"] == BF16 and t["a"] == F32 and t["w"] == F32
    errors = summary["outputs"]
    assert set(errors) == {"y"} and errors["y"]["relative_error"] <= 2 ** -8


@pytest.mark.parametrize("body, node, reason", [
    ("e = Constant<value = float[1] {3}>()\n [p] y = Pow(x, e)", "p", "Pow with an exponent above 1"),
    ("e = Constant<value = float[1] {0.5}>()\n [p] y = Pow(x, e)", "p", None),
    ("e = Constant<value = float[1] {1e-5}>()\n [d] y = Div(x, e)", "d", "Div by a constant below fp16's smallest normal"),
    ("e = Constant<value = float[1] {8}>()\n [d] y = Div(x, e)", "d", None),
    ("a = Constant<value = int64[1] {1}>()\n [s] r = ReduceSum<keepdims = 1>(x, a)\n y = Add(x, r)", "s",
     "ReduceSum accumulates over an axis of 2048 elements (> 1024)"),
    ("a = Constant<value = int64[1] {0}>()\n [s] r = ReduceSum<keepdims = 1>(x, a)\n y = Add(x, r)", "s", None),
    ("[m] r = ReduceMean<axes = [1]>(x)\n y = Add(x, r)", "m", None),
    ("[sm] y = Softmax<axis = -1>(x)", "sm", None),
    ("[l] y = Log(x)", "l", "Log of small values"),
])
def test_keep_float_by_op(body, node, reason):
    model = parse(f"g (float[2,2048] x) => (float[2,2048] y) {{\n {body}\n}}")
    _, summary = convert(model)
    assert kept(summary).get(node, "").startswith(reason) if reason else node not in kept(summary)


def test_detector_coordinate_path_and_topk_stay_fp32():
    model = parse("""
    g (float[1,8,4] deltas, float[1,1,8] scores) => (int64[K,3] sel, float[1,3] top) {
        stride = Constant<value = float[1] {16}>()
        offset = Constant<value = float[1] {0.5}>()
        [scale] s = Mul(deltas, stride)
        [shift] boxes = Add(s, offset)
        m = Constant<value = int64[1] {5}>()
        [nms] sel = NonMaxSuppression(boxes, scores, m)
        k = Constant<value = int64[1] {3}>()
        flat = Constant<value = int64[2] {1, 8}>()
        [flatten] f = Reshape(scores, flat)
        [topk] top, idx = TopK(f, k)
    }""")
    converted, summary = convert(model)
    reasons = kept(summary)
    assert reasons["scale"] == reasons["shift"] == "on the coordinate path into NonMaxSuppression 'nms'"
    assert reasons["topk"].startswith("TopK: ties")
    assert_close(model, converted)


def test_grid_sample_and_its_grid_path_stay_fp32():
    model = parse("""
    g (float[1,2,8,8] x, float[1,4,4,2] offsets) => (float[1,2,4,4] y) {
        half = Constant<value = float[1] {0.5}>()
        [to_grid] grid = Mul(offsets, half)
        [sample] y = GridSample(x, grid)
    }""")
    converted, summary = convert(model)
    reasons = kept(summary)
    assert reasons["to_grid"] == "on the coordinate path into GridSample 'sample'"
    assert reasons["sample"].startswith("GridSample reads coordinates ('grid')")
    assert_close(model, converted)


def test_ranges_are_observed_a_chunk_of_tensors_at_a_time(monkeypatch):
    """The same ranges whether every tensor comes from one run or one run per tensor."""
    import fusekit.precision_data as data
    from fusekit.model_io import load_model

    graph = load_model(parse(CHAIN)).graph
    names = ["a", "r", "e", "b"]
    samples = [{"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)}]
    whole = data.observe_ranges(graph, names, samples)
    monkeypatch.setattr(data, "OUTPUTS_PER_RUN", 1)
    assert data.observe_ranges(graph, names, samples) == whole
    assert whole["r"].max_abs > 0 and whole["r"].min_abs > 0


def test_keep_float_by_data_underflow(tmp_path):
    model = parse("""
    g (float[N,4] x) => (float[N,4] y) {
        k = Constant<value = float[1] {0.0001}>()
        [tiny] a = Mul(x, k)
        [tinier] b = Mul(a, k)
        [back] y = Div(b, k)
    }""")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.full((2, 4), 1.0, np.float32))  # a peaks at 1e-4 (normal), b at 1e-8 (not)
    _, summary = convert(model, data=data)
    reasons = kept(summary)
    assert set(reasons) == {"tinier", "back"}
    assert reasons["tinier"] == "output 'b' peaked at 1e-08 on the data, under fp16's smallest normal value"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(onnx_models(), st.data())
def test_random_kept_regions_get_casts_only_at_their_boundaries(model, data):
    """Keep a random set of op types in FP32: every Cast added changes the type, none reads
    another Cast, and outputs stay within tolerance."""
    ops = sorted({n.op_type for n in model.graph.node})
    keep = data.draw(st.lists(st.sampled_from(ops), unique=True, max_size=len(ops)))
    converted, summary = convert(model, keep_float=keep)
    assert_no_cancelling_casts(converted, model)
    t = types(converted)
    original = {o for n in model.graph.node if n.op_type == "Cast" for o in n.output}
    for cast in casts(converted):
        if cast.output[0] not in original:
            assert t.get(cast.input[0]) != cast.attribute[0].i, f"{cast.name} casts to the type it reads"
    assert {k["op"] for k in summary["kept"] if "keep-float" in k["reason"]} <= set(keep)
    assert_close(model, converted, feeds_for(model, (1, 3)))


def test_converting_a_converted_model_changes_nothing():
    model = parse(CHAIN)
    once, _ = convert(model)
    twice, summary = convert(once)
    assert summary["converted_nodes"] == 0 and summary["casts_added"] == 0
    assert onnx.printer.to_text(twice.graph) == onnx.printer.to_text(once.graph)


def test_custom_domain_ops_stay_fp32_behind_casts():
    model = parse("""<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g (float[N,4] x) => (float[N,4] y) {
        [pre] a = Relu(x)
        [custom] b = com.microsoft.Gelu(a)
        [post] y = Neg(b)
    }""")
    converted, summary = convert(model)
    # shape inference cannot type the custom op's output: its reader is kept too (no guessing)
    assert kept(summary) == {"custom": "op of the custom domain 'com.microsoft': its kernels' types are unknown",
                             "post": "the type of one of its tensors is unknown"}
    assert types(converted)["a"] == F16
    made = {o: n for n in casts(converted) for o in n.output}
    custom = next(n for n in converted.graph.node if n.name == "custom")
    assert made[custom.input[0]].attribute[0].i == F32  # the custom op reads FP32
    assert_no_cancelling_casts(converted)
    assert_close(model, converted)
