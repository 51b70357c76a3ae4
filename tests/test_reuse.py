"""fusekit build reuses an engine built from the same inputs (cache key in the sidecar,
report stored beside the engine); anything changed rebuilds; --force always does. Real
engines from tensorrt_rtx."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import fusekit.api as fk
from fusekit.cli import main
from tests.test_builder import schema
from tests.test_builder_cli import sha256

pytestmark = pytest.mark.trt
CONV = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,16,16] x) => (float[N,8,16,16] y) {
    w = Constant<value = float[8,3,1,1] {%s}>()
    c = Conv(x, w)
    y = Relu(c)
}"""


def write(tmp_path: Path, scale: float = 1.0, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(onnx.parser.parse_model(CONV % ",".join(str(scale * i) for i in range(24))), path)
    return path


def state(engine: Path) -> tuple:
    """What a rebuild changes: the engine file's mtime and the sidecar's creation time."""
    return engine.stat().st_mtime_ns, json.loads(engine.with_name(engine.name + ".json").read_text())["created"]


def build(model: Path, engine: Path, *extra: str) -> tuple[int, float]:
    start = time.perf_counter()
    code = main(["build", str(model), "-o", str(engine), "--dynamic", "N=1:2:4", *extra])
    return code, time.perf_counter() - start


def test_second_build_is_a_hit_with_the_same_engine_and_report(tmp_path, capsys, record_property):
    model, engine = write(tmp_path), tmp_path / "m.engine"
    code, first_seconds = build(model, engine, "--report-json", str(tmp_path / "first.json"))
    assert code == 0
    before, content = state(engine), engine.read_bytes()
    time.sleep(0.01)
    capsys.readouterr()
    code, hit_seconds = build(model, engine, "--report-json", str(tmp_path / "second.json"), "--report")
    assert code == 0
    captured = capsys.readouterr()
    assert f"reused {engine}" in captured.err and "--force rebuilds" in captured.err
    assert "engine layers of" in captured.out and "Conv" in captured.out  # --report on a hit
    assert state(engine) == before and engine.read_bytes() == content
    first, second = (json.loads((tmp_path / n).read_text()) for n in ("first.json", "second.json"))
    assert first == second == json.loads(engine.with_name("m.engine.report.json").read_text())
    jsonschema.validate(json.loads(engine.with_name("m.engine.json").read_text()), schema("engine-sidecar"))
    record_property("build_seconds", round(first_seconds, 3))
    record_property("hit_seconds", round(hit_seconds, 3))
    assert hit_seconds < first_seconds


@pytest.mark.parametrize("change", [
    ["--opt-level", "1"],
    ["--dynamic", "x:0=1:2:8"],
    ["--no-optimize"],
    ["--plugins", "auto"],
])
def test_a_changed_option_rebuilds(change, tmp_path):
    model, engine = write(tmp_path), tmp_path / "m.engine"
    assert build(model, engine)[0] == 0
    before = state(engine)
    key = json.loads(engine.with_name("m.engine.json").read_text())["cache_key"]
    assert main(["build", str(model), "-o", str(engine), "--dynamic", "N=1:2:4", *change]) == 0
    assert state(engine) != before
    assert json.loads(engine.with_name("m.engine.json").read_text())["cache_key"] != key


def test_a_changed_model_rebuilds_and_force_always_does(tmp_path):
    model, engine = write(tmp_path), tmp_path / "m.engine"
    assert build(model, engine)[0] == 0
    before = state(engine)
    write(tmp_path, scale=2.0)  # same graph, other weights
    assert build(model, engine)[0] == 0
    assert state(engine) != before
    again = state(engine)
    assert build(model, engine)[0] == 0 and state(engine) == again  # now a hit
    assert build(model, engine, "--force")[0] == 0 and state(engine) != again


@pytest.mark.parametrize("damage", ["engine bytes", "report", "sidecar"])
def test_a_damaged_engine_or_missing_report_rebuilds(damage, tmp_path):
    model, engine = write(tmp_path), tmp_path / "m.engine"
    assert build(model, engine)[0] == 0
    if damage == "engine bytes":
        engine.write_bytes(engine.read_bytes()[:-1] + b"\0")
    elif damage == "report":
        engine.with_name("m.engine.report.json").unlink()
    else:
        engine.with_name("m.engine.json").write_text("{}")
    before = state(engine) if damage != "sidecar" else None
    assert build(model, engine)[0] == 0
    if before is not None:
        assert state(engine) != before
    data = json.loads(engine.with_name("m.engine.json").read_text())
    assert data["engine"]["sha256"] == sha256(engine)
    assert engine.with_name("m.engine.report.json").is_file()


def test_changed_external_data_rebuilds(tmp_path):
    weights = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(8, 3, 1, 1), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8, 16, 16])], [weights])
    model = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model,
              save_as_external_data=True, location="ext.data", size_threshold=0)
    engine = tmp_path / "m.engine"
    # --no-optimize: the default build of an external-data model fails today (absolute location
    # after optimize; not an engine-reuse matter)
    assert build(model, engine, "--no-optimize")[0] == 0
    before = state(engine)
    assert build(model, engine, "--no-optimize")[0] == 0 and state(engine) == before
    data = bytearray((tmp_path / "ext.data").read_bytes())
    data[0:4] = np.float32(5).tobytes()
    (tmp_path / "ext.data").write_bytes(bytes(data))
    assert build(model, engine, "--no-optimize")[0] == 0 and state(engine) != before


def test_api_reuse_from_a_model_proto(tmp_path):
    proto = onnx.parser.parse_model(CONV % ",".join(map(str, range(24))))
    engine = tmp_path / "m.engine"
    first = fk.build(proto, engine, dynamic=["N=1:2:4"])
    second = fk.build(proto, engine, dynamic=["N=1:2:4"])
    assert not first.reused and second.reused
    assert bytes(second.engine) == bytes(first.engine) and second.report.to_dict() == first.report.to_dict()
    assert second.sidecar == json.loads(engine.with_name("m.engine.json").read_text())
    assert not fk.build(proto, engine, dynamic=["N=1:2:4"], force=True).reused


def test_triton_entry_is_reused_and_its_config_rewritten(tmp_path):
    model, repo = write(tmp_path), tmp_path / "repo"
    repo.mkdir()
    argv = ["build", str(model), "--dynamic", "N=1:2:4", "--triton-repo", str(repo), "--model-name", "m"]
    assert main(argv) == 0
    plan = repo / "m" / "1" / "model.plan"
    before = state(plan)
    (repo / "m" / "config.pbtxt").unlink()
    assert main(argv) == 0
    assert state(plan) == before and (repo / "m" / "config.pbtxt").is_file()
