"""fusekit build --triton-repo: the model repository entry, its config.pbtxt parsed with
protobuf text format against Triton's own schema (tests/data/triton/model_config.proto,
compiled here with grpcio-tools), real engines from tensorrt_rtx."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import onnx
import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
)

from fusekit import triton
from fusekit.builder.layers import TensorInfo
from fusekit.builder.report import BuildReport
from fusekit.cli import main
from fusekit.errors import InputError
from tests.test_builder import schema
from tests.test_builder_cli import sha256

PROTO = Path(__file__).parent / "data" / "triton" / "model_config.proto"
# Two inputs and outputs of different element types; N is the batch.
TWO_IO = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x, int32[N,5] ids) => (float[N,4,8,8] y, int32[N,5] z) {
    w = Constant<value = float[4,3,1,1] {1,2,3,4,5,6,7,8,9,10,11,12}>()
    c = Conv(x, w)
    y = Relu(c)
    z = Add(ids, ids)
}"""
STATIC = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2,8] x) => (float[2,8] y) { y = Relu(x) }"""


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    """Triton's ``inference.ModelConfig`` message class, compiled from the shipped .proto."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("triton") / "model_config.pb"
    assert protoc.main(["protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", str(PROTO)]) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(cls, path: Path):
    return text_format.Parse(path.read_text(), cls())


def write(tmp_path: Path, text: str, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(onnx.parser.parse_model(text), path)
    return path


def tensors(config, field: str) -> list[tuple[str, str, list[int]]]:
    return [(t.name, t.DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number[t.data_type].name,
             list(t.dims)) for t in getattr(config, field)]


@pytest.mark.trt
def test_batched_model_gets_plan_sidecar_and_a_config_triton_parses(tmp_path, model_config, capsys, caplog):
    model, repo = write(tmp_path, TWO_IO), tmp_path / "repo"
    repo.mkdir()
    assert main(["build", str(model), "--dynamic", "N=1:8:32", "--triton-repo", str(repo),
                 "--model-name", "detector"]) == 0
    plan = repo / "detector" / "1" / "model.plan"
    sidecar = json.loads((repo / "detector" / "1" / "model.plan.json").read_text())
    jsonschema.validate(sidecar, schema("engine-sidecar"))
    assert sidecar["engine"] == {"file": "model.plan", "bytes": plan.stat().st_size, "sha256": sha256(plan)}
    config = parse_config(model_config, repo / "detector" / "config.pbtxt")
    assert config.name == "detector" and config.platform == "tensorrt_plan"
    assert config.max_batch_size == 32
    assert tensors(config, "input") == [("x", "TYPE_FP32", [3, 8, 8]), ("ids", "TYPE_INT32", [5])]
    assert tensors(config, "output") == [("y", "TYPE_FP32", [4, 8, 8]), ("z", "TYPE_INT32", [5])]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    captured = capsys.readouterr()
    warning = [r.getMessage() for r in caplog.records if "tensorrt_plan backend" in r.getMessage()]
    if sidecar["backend"]["name"] == "tensorrt_rtx":
        assert len(warning) == 1 and "tensorrt_rtx plans do not load" in warning[0] and "\n" not in warning[0]
    else:
        assert not warning
    assert str(plan) in captured.out.replace("\n", "")
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "detector/1/model.plan", "detector/1/model.plan.json", "detector/1/model.plan.report.json",
        "detector/config.pbtxt"]


@pytest.mark.trt
def test_static_model_has_no_batching_and_whole_dims(tmp_path, model_config):
    model, repo = write(tmp_path, STATIC, "static.onnx"), tmp_path / "repo"
    repo.mkdir()
    assert main(["build", str(model), "--triton-repo", str(repo)]) == 0  # the name defaults to the file stem
    config = parse_config(model_config, repo / "static" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert tensors(config, "input") == [("x", "TYPE_FP32", [2, 8])]


@pytest.mark.trt
def test_rebuild_into_an_existing_entry_replaces_it(tmp_path, model_config):
    model, repo = write(tmp_path, TWO_IO), tmp_path / "repo"
    repo.mkdir()
    for batch in ("N=1:4:16", "N=1:2:4"):
        assert main(["build", str(model), "--dynamic", batch, "--triton-repo", str(repo), "--model-name", "m"]) == 0
    config = parse_config(model_config, repo / "m" / "config.pbtxt")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [2, 4]


@pytest.mark.parametrize("argv, message", [
    (["--triton-repo", "{tmp}/missing"], "--triton-repo {tmp}/missing: not an existing folder"),
    (["--triton-repo", "{tmp}", "--model-name", "a/b"], "--model-name 'a/b'"),
    (["--triton-repo", "{tmp}", "-o", "{tmp}/m.engine"], "-o and --triton-repo: give one"),
    ([], "-o ENGINE or --triton-repo DIR"),
])
def test_bad_repository_options_exit_2_before_any_build(argv, message, tmp_path, capsys):
    model = write(tmp_path, TWO_IO)  # no --dynamic: a build would fail asking for N's range
    before = sorted(tmp_path.rglob("*"))
    assert main(["build", str(model), *[a.format(tmp=tmp_path) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(tmp=tmp_path) in err[0]
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.trt
def test_failed_build_leaves_no_model_folder(tmp_path):
    model, repo = write(tmp_path, TWO_IO), tmp_path / "repo"
    repo.mkdir()
    assert main(["build", str(model), "--triton-repo", str(repo)]) == 2  # N has no range
    assert list(repo.iterdir()) == []


def report_with(inputs, outputs, profile) -> BuildReport:
    return BuildReport(model="m", backend="tensorrt", backend_version="10", optimized=True, onnx_ops={},
                       network=[], engine=None, layer_source=None, profile=profile, inputs=inputs, outputs=outputs)


def test_config_of_a_scalar_per_item_output_and_names_needing_quotes(model_config, tmp_path):
    profile = [{"input": 'in"1', "min": [2, 3], "opt": [4, 3], "max": [8, 3]}]
    report = report_with([TensorInfo('in"1', [-1, 3], "bfloat16")], [TensorInfo("score\\s", [-1], "float16")], profile)
    path = tmp_path / "config.pbtxt"
    path.write_text(triton.config_text(report, "m"))
    config = parse_config(model_config, path)
    assert tensors(config, "input") == [('in"1', "TYPE_BF16", [3])]
    assert tensors(config, "output") == [("score\\s", "TYPE_FP16", [1])]
    assert list(config.output[0].reshape.shape) == [] and config.output[0].HasField("reshape")
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [4, 8]


def test_output_whose_first_dim_is_fixed_turns_batching_off():
    profile = [{"input": "x", "min": [1, 3], "opt": [2, 3], "max": [4, 3]}]
    report = report_with([TensorInfo("x", [-1, 3], "float32")], [TensorInfo("y", [1, 3], "float32")], profile)
    assert triton.batching(report) == (0, [])
    assert "max_batch_size: 0" in triton.config_text(report, "m") and "dynamic_batching" not in triton.config_text(report, "m")


def test_a_tensor_triton_cannot_type_is_refused_by_name():
    report = report_with([TensorInfo("x", [-1, 3], "float8")], [TensorInfo("y", [-1, 3], "float32")], [])
    with pytest.raises(InputError, match="x: element type float8 has no Triton data type"):
        triton.config_text(report, "m")
