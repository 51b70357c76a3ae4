"""The TensorRT builder on real models: real parser, real builder (tensorrt_rtx builds on a
CPU-only machine), never a mock. Engine layers come from the builder's log there."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jsonschema
import onnx
import pytest

import fusekit.api as fk
from fusekit.builder import backend as backends
from fusekit.builder import layers
from fusekit.builder.progress import ProgressEvent
from fusekit.builder.report import BuildReport, Comparison
from fusekit.errors import InputError, ParseFailedError, TensorRTError
from tests.zoo_models import zoo_model

BACKEND = backends.installed()
pytestmark = pytest.mark.trt
SCHEMAS = Path(fk.__file__).parent / "schemas"
DYNAMIC = {"resnet-tiny": ["batch=1:2:4"], "mobilenet": ["batch=1:2:4"], "convnext": ["batch=1:2:4"],
           "encoder-tiny": ["batch=1:2:4", "seq=4:16:32"], "resnet50": ["batch=1:8:32"]}
BATCH_32 = ("batch=1:8:32",)


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


@functools.cache
def built(name: str, optimize: bool, dynamic: tuple[str, ...] | None = None):
    """One build per (zoo model, optimized?, profile) per test process; no engine written."""
    return fk.build(zoo_model(name), optimize=optimize, dynamic=list(dynamic or DYNAMIC[name]))


def layer_with(report, node: str):
    found = [layer for layer in report.engine if node in layer.onnx_nodes]
    assert found, f"{node} is in no engine layer"
    return found[0]


def test_conv_bn_relu_become_one_engine_layer():
    report = built("resnet-tiny", False).report
    assert report.layer_source in ("builder-log", "engine-inspector")
    stem = layer_with(report, "/stem/stem.0/Conv")
    assert stem.onnx_nodes == ["/stem/stem.0/Conv", "/stem/stem.1/BatchNormalization", "/stem/stem.2/Relu"]
    assert report.ops_of(stem) == ["Conv", "BatchNormalization", "Relu"]
    assert stem.precisions == ["float32"] and stem.kind == "compute"
    block = layer_with(report, "/blocks/blocks.0/conv1/Conv")
    assert report.ops_of(block) == ["Conv", "BatchNormalization", "Relu"]
    # the residual: conv3 + bn3 + Add + Relu in one layer
    assert set(report.ops_of(layer_with(report, "/blocks/blocks.0/bn3/BatchNormalization"))) >= {"Conv", "Add"}
    # the network as parsed has one layer per node (plus constants): fusion happens in the builder
    assert {"CONVOLUTION", "SCALE", "ACTIVATION"} <= {layer.type for layer in report.network}
    assert len(report.network) > report.compute_layers


def test_every_mapped_node_is_a_model_node():
    for name in ("resnet-tiny", "encoder-tiny"):
        report = built(name, False).report
        mapped = set(report.layer_of())
        assert mapped and mapped <= set(report.onnx_ops), mapped - set(report.onnx_ops)
        heavy = {n for n, op in report.onnx_ops.items() if op in ("Conv", "MatMul", "Gemm")}
        assert heavy and heavy <= mapped, heavy - mapped  # what computes is never lost
        assert set(report.unmapped_nodes()) == set(report.onnx_ops) - mapped


@pytest.mark.parametrize("name, dynamic", [("resnet-tiny", None), ("mobilenet", None), ("encoder-tiny", None),
                                           ("convnext", None), ("resnet-tiny", BATCH_32)])
def test_optimized_model_never_has_more_engine_layers(name, dynamic):
    raw, optimized = built(name, False, dynamic).report, built(name, True, dynamic).report
    assert optimized.engine_layers <= raw.engine_layers
    assert optimized.compute_layers <= raw.compute_layers
    assert len(optimized.onnx_ops) <= len(raw.onnx_ops)
    assert optimized.optimized and not raw.optimized


def test_mobilenet_head_fuses_as_in_the_raw_export():
    """The raw export's head is Conv, BN, HardSwish, ReduceMean: TensorRT runs BN + HardSwish +
    ReduceMean as one kernel. With BN folded, a HardSwish op before the pool's ReduceMean over
    [2, 3] stays a kernel of its own (tensorrt_rtx 1.7.1, 256 channels at 8x8: one layer more).
    With the pool as a channels-last mean (channels-last-mean) the HardSwish joins its Conv's
    kernel and the Transpose the mean's: as many compute layers as the raw export."""
    raw = built("mobilenet", False).report
    pool = layer_with(raw, "/ReduceMean")
    assert {"BatchNormalization", "HardSwish", "ReduceMean"} <= set(raw.ops_of(pool)), raw.ops_of(pool)
    report = built("mobilenet", True).report
    pool = next(layer for layer in report.engine if "ReduceMean" in report.ops_of(layer))
    assert report.ops_of(pool) == ["Transpose", "ReduceMean"]
    before = report.engine[report.engine.index(pool) - 1]
    assert report.ops_of(before) == ["Conv", "HardSwish"]
    assert report.compute_layers == raw.compute_layers


def test_resnet_pool_is_one_engine_layer_with_batch_1_8_32():
    """With BN folded the last Conv absorbs the residual Add and Relu; its channels-last output
    then needs a transpose before the pool, which tensorrt_rtx 1.7.1 ran as a kernel of its
    own at this profile (compute layers 21 -> 22 against the raw export). channels-last-mean
    writes the pool as Transpose + ReduceMean over [1, 2]: one kernel again."""
    report = built("resnet-tiny", True, BATCH_32).report
    pool = layer_with(report, "/pool/ReduceMean")
    assert set(report.ops_of(pool)) == {"Transpose", "ReduceMean"}
    assert report.compute_layers == built("resnet-tiny", False, BATCH_32).report.compute_layers


def test_convnext_pointwise_linears_fuse_with_gelu_and_residual():
    """Issue 9: at most onnxsim's engine layers on the zoo ConvNeXt.

    Measured here (tensorrt_rtx 1.7.1, CPU-only, batch 1:2:4): raw export 43 engine layers;
    onnxsim 0.8.1 37 (it writes each Linear as Reshape to 2-D + Gemm + Reshape back, and a
    2-D gemm fuses with the GELU after it); fusekit before linear-to-pointwise-conv 43 (the
    MatMul on the 4-D NHWC activation is a plain gemm layer, bias and GELU another kernel);
    with it 32: per block, pw1 as a 1x1 Conv fuses with the GELU, pw2 with the residual Add.
    """
    onnxsim_engine_layers = 37  # measured as above; onnxsim is not a test dependency
    raw, optimized = built("convnext", False).report, built("convnext", True).report
    gelus = sorted(n for n, op in optimized.onnx_ops.items() if op == "Erf")
    assert len(gelus) == sum(op == "Erf" for op in raw.onnx_ops.values()) == 6
    for erf in gelus:
        block = erf.rsplit("/", 1)[0]
        assert "Conv" in optimized.ops_of(layer_with(optimized, erf)), erf
        assert "Conv" in optimized.ops_of(layer_with(optimized, f"{block}/Add_1")), block
    assert not any(op == "MatMul" for op in optimized.onnx_ops.values())
    assert optimized.engine_layers <= raw.engine_layers - len(gelus)
    assert optimized.engine_layers <= onnxsim_engine_layers


def test_encoder_builds_with_batch_and_sequence_profile():
    result = built("encoder-tiny", True)
    report = result.report
    assert report.profile == [{"input": "input_ids", "min": [1, 4], "opt": [2, 16], "max": [4, 32]},
                              {"input": "attention_mask", "min": [1, 4], "opt": [2, 16], "max": [4, 32]}]
    assert result.sidecar["profiles"] == [report.profile]
    gemms = [layer for layer in report.engine if layer.type == "gemm"]
    assert gemms and all(any(report.onnx_ops.get(n) in ("MatMul", "Gemm") for n in g.onnx_nodes) for g in gemms)


def test_report_and_comparison_json_validate_against_their_schemas():
    for name, optimize in (("resnet-tiny", False), ("encoder-tiny", True)):
        data = json.loads(json.dumps(built(name, optimize).report.to_dict()))
        jsonschema.validate(data, schema("build-report"))
        assert data["engine"]["layers"] == len(data["layers"])
        assert data["engine"]["compute_layers"] <= data["engine"]["layers"]
        assert data["network"]["layers"] == len(data["network_layers"])
    data = Comparison(built("resnet-tiny", False).report, built("resnet-tiny", True).report).to_dict()
    jsonschema.validate(data, schema("build-comparison"))
    assert data["engine_layers_difference"] <= 0


def test_report_carries_the_onnx_graph_and_round_trips_through_json():
    report = built("resnet-tiny", False).report
    edges = set(report.onnx_edges)
    assert ("/stem/stem.0/Conv", "/stem/stem.1/BatchNormalization", "/stem/stem.0/Conv_output_0") in edges
    assert {e[0] for e in edges} - {None} <= set(report.onnx_ops) and {e[1] for e in edges} - {None} <= set(report.onnx_ops)
    [x] = report.inputs
    assert x.dtype == "float32" and x.dims[0] == -1 and all(d > 0 for d in x.dims[1:])
    assert [(None, x.name)] == [(p, t) for p, c, t in edges if p is None][:1]  # the input feeds the stem
    assert [o.name for o in report.outputs] == [t for p, c, t in edges if c is None]
    data = json.loads(json.dumps(report.to_dict()))
    again = BuildReport.from_dict(data)
    assert again.to_dict() == data and again.compute_layers == report.compute_layers
    assert again.layer_of() == report.layer_of() and again.unmapped_nodes() == report.unmapped_nodes()


def test_progress_monitor_reports_phases():
    events: list[ProgressEvent] = []
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8] x) => (float[1,8] y) { r = Relu(x)  y = Sigmoid(r) }""")
    before = model.SerializeToString()
    result = fk.build(model, optimize=False, progress=events.append)
    assert model.SerializeToString() == before  # a caller's ModelProto is never modified
    assert result.report.engine_layers >= 1 and result.sidecar["source_model"]["path"] is None
    starts = [e for e in events if e.kind == "start"]
    assert starts and starts[0].phase == "Building engine" and starts[0].parent is None
    assert any(e.kind == "step" for e in events)
    assert {e.phase for e in events if e.kind == "finish"} == {e.phase for e in starts}


def test_progress_callback_error_cancels_the_build_and_is_raised():
    def cancel(event: ProgressEvent) -> None:
        if event.kind == "step":
            raise KeyboardInterrupt

    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8] x) => (float[1,8] y) { y = Relu(x) }""")
    with pytest.raises(KeyboardInterrupt):
        fk.build(model, optimize=False, progress=cancel)


TWO_UNIQUES_AND_A_CONTRIB_OP = """
<ir_version: 8, opset_import: ["" : 17, "com.microsoft": 1]>
g (float[4] x) => (float[4] y, float[4] z, float[4] w) {
  r = Relu(x)
  y, i1, i2, c1 = Unique <sorted: int = 1> (r)
  z, j1, j2, c2 = Unique <sorted: int = 1> (x)
  w = com.microsoft.FastGelu(x)
}"""


def unparseable_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(TWO_UNIQUES_AND_A_CONTRIB_OP)
    for i, node in enumerate(model.graph.node):
        node.name = f"my_{node.op_type}_{i}"
    return model


def test_parse_failure_lists_every_error_with_node_op_and_reason():
    with pytest.raises(ParseFailedError) as info:
        fk.build(unparseable_model(), optimize=False)
    exc = info.value
    assert isinstance(exc, TensorRTError) and exc.unsupported
    assert "rejected the model (3 errors)" in exc.summary
    assert exc.problems[0].startswith("node my_Unique_1 (Unique): not supported")
    assert exc.problems[1].startswith("node my_Unique_2 (Unique): ")
    assert exc.problems[2].startswith("node my_FastGelu_3 (com.microsoft.FastGelu): no TensorRT importer or "
                                      "plugin creator") and "Plugin not found" in exc.problems[2]
    assert all(p in str(exc) for p in exc.problems)  # the API's message carries them all too


def test_option_errors_come_before_any_work():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,8] x) => (float[1,8] y) { y = Relu(x) }""")
    for kwargs, message in (({"opt_level": 6}, "--opt-level 6: expected 0..5"),
                            ({"workspace_mib": 0}, "--workspace 0"),
                            ({"compute_capabilities": ["x"]}, "--compute-capability 'x'"),
                            ({"compute_capabilities": ["7.0"]}, "--compute-capability 7.0: .* targets"),
                            ({"dynamic": ["batch=2:1:1"]}, "0 <= MIN <= OPT <= MAX")):
        with pytest.raises(InputError, match=message):
            fk.build(model, optimize=False, **kwargs)
    with pytest.raises(InputError, match="--fp16 and --bf16: choose one"):
        fk.build(model, optimize=False, fp16=True, bf16=True)


def test_builder_options_reach_the_builder(tmp_path):
    result = fk.build(zoo_model("resnet-tiny"), optimize=False, dynamic=DYNAMIC["resnet-tiny"], opt_level=0,
                      workspace_mib=64, compute_capabilities=["8.6", "sm89"], timing_cache=tmp_path / "cache")
    assert result.sidecar["compute_capability"] == {"targets": ["8.6", "8.9"], "or_later": False,
                                                    "chosen_by": "--compute-capability"}
    if BACKEND.is_rtx:
        assert "no effect" in result.report.notes[0] and not (tmp_path / "cache").exists()
    else:
        assert (tmp_path / "cache").stat().st_size == result.timing_cache.saved_bytes > 0


def test_log_record_parsing_keeps_names_types_and_metadata():
    line = ("Name: a, b+c, LayerType: runtime_fusion, Inputs: [ { Name: x, Dimensions: [-1,3,8,8], Strides: "
            "[1,2], StrideOrder: [1,0], Datatype: Half, Format: (NHWC) Channel major format }], Constants: [], "
            "Outputs: [ { Name: y, Dimensions: [-1,4], Strides: [4,1], StrideOrder: [1,0], Datatype: Float, "
            "Format: (Linear) Row major }], TacticName: t1, StreamId: 0, Metadata: [ONNX Layer: n/1]\x1f"
            "[ONNX Layer: n, 2]\x1f[ONNX Layer: n/1]")
    layer = layers.parse_log_line(line)
    assert (layer.name, layer.type, layer.tactic) == ("a, b+c", "runtime_fusion", "t1")
    assert layer.onnx_nodes == ["n/1", "n, 2"]
    assert layer.inputs[0].dims == [-1, 3, 8, 8] and layer.inputs[0].dtype == "float16"
    assert layer.precisions == ["float32"]
    assert layers.from_log(["x", "Layers:\n" + line + "\n\nI/O Tensors:\n Name: x"])[0].name == "a, b+c"
    assert layers.from_log(["no record"]) is None


@pytest.mark.slow
def test_resnet50_export_engine_layers_raw_vs_fusekit(record_property):
    """The issue's figure: other optimizers take such an export from 73 to 58 engine layers.

    Measured here (tensorrt_rtx 1.7.1, CPU-only, batch 1:8:32): raw 74 engine layers (57
    computing, 16 stream signal/wait), fusekit with fold-batchnorm 59 (58 computing, no
    stream sync), onnxsim 0.8.1 59 (58).
    """
    raw, optimized = built("resnet50", False).report, built("resnet50", True).report
    for key, report in (("raw", raw), ("fusekit", optimized)):
        record_property(f"{key}_engine_layers", report.engine_layers)
        record_property(f"{key}_compute_layers", report.compute_layers)
        record_property(f"{key}_build_seconds", report.seconds["build"])
    print(f"resnet50 engine layers: raw {raw.engine_layers} ({raw.compute_layers} computing), "
          f"fusekit {optimized.engine_layers} ({optimized.compute_layers} computing)")
    assert optimized.engine_layers < raw.engine_layers
    assert optimized.compute_layers <= raw.compute_layers + 1
