"""fusekit check-trt / fusekit.api.check_trt: the real tensorrt_rtx parser says which nodes it
rejects and why; the shipped support tables answer without TensorRT; exit codes 0/1/2."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx.parser
import pytest

import fusekit.api as fk
from fusekit.builder import backend as backends
from fusekit.builder import support
from fusekit.cli import main
from fusekit.errors import InputError

BACKEND = backends.installed()

HEADER = '<ir_version: 8, opset_import: ["" : 17, "com.microsoft": 1]>\n'
MIXED = HEADER + """g (float[2,8] x) => (float[2,8] y, float[1] z) {
  t = com.microsoft.FastGelu(x)
  y = Relu(t)
  s = Constant<value=int64[3] {1,4,4}>()
  x2 = Reshape(x, s)
  z = Det(x2)
}"""
CLEAN = HEADER + "g (float[2,8] x) => (float[2,8] y) { y = Relu(x) }"
RESTRICTED = HEADER + """g (float[1,1,4,4] x, int64[1] a) => (float[1,1,2,2] y, int64[1,1,2,2] i, float[1,1,4,1] r) {
  y, i = MaxPool<kernel_shape=[2,2], strides=[2,2]>(x)
  r = ReduceSum(x, a)
}"""


def model(text: str) -> onnx.ModelProto:
    m = onnx.parser.parse_model(text)
    onnx.checker.check_model(m)
    return m


def save(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(model(text), path)
    return path


@pytest.mark.trt
def test_parser_names_each_rejected_node_with_its_reason():
    found = fk.check_trt(model(MIXED))
    assert [(u.node, u.op, u.domain) for u in found] == [("FastGelu_0", "FastGelu", "com.microsoft"),
                                                         ("Det_0", "Det", "")]
    fast, det = found
    assert "plugin" in fast.reason and "FastGelu" in fast.reason
    assert "checkDet" in det.reason
    assert all(u.checked_by.startswith(BACKEND.name) for u in found)
    assert det.substitution is None  # decompose-det stops at 3x3
    assert fast.substitution.startswith("decompose-contrib-ops: com.microsoft.FastGelu decomposed")


@pytest.mark.parametrize("table", ["tensorrt-10.15", "tensorrt_rtx-1.7"])
def test_tables_answer_without_tensorrt(table):
    found = fk.check_trt(model(MIXED), table=table)
    assert [u.op for u in found] == ["FastGelu", "Det"]
    assert all(u.checked_by == f"table {table}" for u in found)
    assert "custom-domain" in found[0].reason
    assert fk.check_trt(model(CLEAN), table=table) == []


def test_tables_differ_where_measured():
    ops = HEADER + """g (float[1,4,8,8] x, float[3,4] r, int64[3] b) => (float[3,4,2,2] y) {
      y = RoiAlign<output_height=2, output_width=2>(x, r, b) }"""
    assert fk.check_trt(model(ops), table="tensorrt-10.15") == []
    [roi] = fk.check_trt(model(ops), table="tensorrt_rtx-1.7")
    assert "ROIAlign plugin" in roi.reason


def test_table_checks_restrictions():
    found = {u.op: u.reason for u in fk.check_trt(model(RESTRICTED), table="tensorrt-10.15")}
    assert "Indices" in found["MaxPool"]
    assert "axes" in found["ReduceSum"]


@pytest.mark.trt
def test_parser_rejects_the_same_restrictions():
    found = {u.op: u.reason for u in fk.check_trt(model(RESTRICTED))}
    assert set(found) == {"MaxPool", "ReduceSum"}
    assert "build-time" in found["ReduceSum"]


def test_unknown_table_is_an_input_error():
    known = "tensorrt-10.0, tensorrt-10.1, tensorrt-10.15, tensorrt_rtx-1.7"  # in release order
    with pytest.raises(InputError, match=f"known tables: {known}"):
        fk.check_trt(model(CLEAN), table="tensorrt-9")


def test_shipped_tables_are_consistent():
    for name in support.table_names():
        data = support.load_table(name)
        assert not set(data["supported"]) & set(data["unsupported"]), name
        assert {"Unique", "Det", "MaxUnpool", "Col2Im"} <= set(data["unsupported"])
        assert name == f"{data['backend']}-{data['version']}"
        low, high = data["opset"]
        assert 9 <= low < high


@pytest.mark.parametrize(("backend", "version", "table"), [
    ("tensorrt", "10.0.1.6", "tensorrt-10.0"),
    ("tensorrt", "10.1.0", "tensorrt-10.1"),
    ("tensorrt", "10.8.0.43", "tensorrt-10.1"),  # no 10.2..10.14 table: the closest older release
    ("tensorrt", "10.15.1.29", "tensorrt-10.15"),
    ("tensorrt", "10.16.0", "tensorrt-10.15"),
    ("tensorrt", "8.6.1", "tensorrt-10.0"),  # older than every table: the oldest
    ("tensorrt_rtx", "1.7.1.116", "tensorrt_rtx-1.7"),
    ("tensorrt_rtx", "1.9.0", "tensorrt_rtx-1.7"),
    ("other", "1.0", support.DEFAULT_TABLE),
])
def test_table_for_picks_the_closest_release_at_or_below(backend, version, table):
    assert support.table_for(backends.Backend(backend, None, version)) == table


def test_no_backend_uses_the_default_table():
    assert support.table_for(None) == support.DEFAULT_TABLE == "tensorrt-10.15"


@pytest.mark.parametrize(("version", "opsets"), [("10.0.1", (9, 20)), ("10.1.0", (9, 20)), ("10.15.1", (9, 24))])
def test_opset_range_follows_the_installed_release(monkeypatch, version, opsets):
    monkeypatch.setattr(backends, "installed", lambda: backends.Backend("tensorrt", None, version))
    assert support.supported_opsets()[0] == opsets


DEFORM = HEADER.replace('"" : 17', '"" : 19') + """
g (float[1,1,4,4] x, float[1,1,2,2] w, float[1,8,3,3] o) => (float[1,1,3,3] y) {
  y = DeformConv<kernel_shape=[2,2]>(x, w, o) }"""
HANN = HEADER + """g (float[8] x) => (float[8] y) {
  n = Constant<value_int=8>()
  w = HannWindow(n)
  y = Mul(x, w) }"""


def test_tables_follow_ops_added_between_releases():
    """DeformConv: onnx-tensorrt lists it from the 10.1 GA release on; HannWindow and STFT
    after 10.1 (supported in 10.15)."""
    [deform] = fk.check_trt(model(DEFORM), table="tensorrt-10.0")
    assert deform.op == "DeformConv" and deform.reason == "not in the support table of TensorRT 10.0"
    assert fk.check_trt(model(DEFORM), table="tensorrt-10.1") == []
    assert fk.check_trt(model(DEFORM), table="tensorrt-10.15") == []
    for table in ("tensorrt-10.0", "tensorrt-10.1"):
        assert [u.op for u in fk.check_trt(model(HANN), table=table)] == ["HannWindow"]
    assert fk.check_trt(model(HANN), table="tensorrt-10.15") == []
    older, newer = support.load_table("tensorrt-10.1"), support.load_table("tensorrt-10.15")
    added = set(newer["supported"]) - set(older["supported"])
    assert {"STFT", "HannWindow", "RMSNormalization", "Attention"} <= added
    assert not set(older["supported"]) - set(newer["supported"])  # nothing dropped from 10.1 to 10.15


def test_cli_exit_codes_and_json(tmp_path, capsys):
    bad = save(tmp_path, MIXED)
    assert main(["check-trt", str(bad), "--table", "tensorrt-10.15"]) == 1
    text = capsys.readouterr().out
    assert "FastGelu_0 (com.microsoft.FastGelu)" in text and "Det_0 (Det)" in text
    assert "substitution:" in text
    assert main(["check-trt", str(bad), "--json", "--table", "tensorrt-10.15"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["parses"] is False and [u["op"] for u in data["unsupported"]] == ["FastGelu", "Det"]
    clean = tmp_path / "clean.onnx"
    onnx.save(model(CLEAN), clean)
    assert main(["check-trt", str(clean), "--table", "tensorrt-10.15"]) == 0
    assert main(["check-trt", str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["check-trt", str(tmp_path / "junk.onnx")]) == 2


@pytest.mark.trt
def test_cli_with_the_real_parser(tmp_path, capsys):
    assert main(["check-trt", str(save(tmp_path, MIXED))]) == 1
    assert "checkDet" in capsys.readouterr().out
    clean = tmp_path / "clean.onnx"
    onnx.save(model(CLEAN), clean)
    assert main(["check-trt", str(clean)]) == 0


@pytest.mark.trt
def test_computed_reduction_axes_are_fixed_by_the_default_pipeline():
    text = HEADER + """g (float[2,3] x) => (float[2,1] y) {
      a = Constant<value=int64[1] {0}>()
      b = Constant<value=int64[1] {1}>()
      c = Add(a, b)
      y = ReduceSum(x, c) }"""
    [found] = fk.check_trt(model(text))
    assert "build-time" in found.reason
    assert found.substitution == "fusekit optimize: the node parses once the default passes have run"
    assert fk.check_trt(fk.optimize(model(text))) == []


@pytest.mark.trt
def test_topk_beyond_the_builder_limit_is_reported():
    text = HEADER + """g (float[1,5000] x) => (float[1,4000] v, int64[1,4000] i) {
      k = Constant<value=int64[1] {4000}>()
      v, i = TopK(x, k) }"""
    [found] = fk.check_trt(model(text))
    assert found.op == "TopK" and "less than 3840" in found.reason and found.substitution.startswith("split-topk:")
    assert fk.check_trt(fk.optimize(model(text))) == []
    assert fk.check_trt(model(text.replace("4000", "100"))) == []
    [table] = fk.check_trt(model(text), table="tensorrt-10.15")
    assert "3840" in table.reason


@pytest.mark.trt
def test_dequantize_of_a_constant_int32_bias_is_folded_by_the_default_pipeline():
    text = HEADER + """g (float[1,4] x) => (float[1,4] y) {
      b = Constant<value=int32[4] {10, -20, 30, 40}>()
      s = Constant<value=float {0.5}>()
      bf = DequantizeLinear(b, s)
      y = Add(x, bf) }"""
    [found] = fk.check_trt(model(text))
    assert found.op == "DequantizeLinear" and found.substitution == "fold-constants: folded into a constant"
    assert fk.check_trt(fk.optimize(model(text))) == []
