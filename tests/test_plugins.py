"""Plugin substitution (--plugins) and the builder's generated creators, with the real
tensorrt_rtx parser and builder: parse succeeds, exactly the expected nodes become
PLUGIN_V3 layers, the creator gets the expected fields, the engine bytes hold the plugin
name and field values; without a creator the parser says "Plugin not found". The specs'
NumPy references match onnxruntime on the original patterns (hypothesis).

Anything that registers creators (process-wide in TensorRT) or parses plugin nodes runs in
a subprocess: registrations would leak into other tests, and a missing
libtensorrt_rtx.so would abort the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnx.parser
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusekit.api as fk
from fusekit import registry
from fusekit.errors import InputError
from fusekit.plugin_infra import PLUGIN_DOMAIN, validate_spec_class
from tests.helpers import run_ort
from tests.plugin_build import parse_and_build

HEADER = '<ir_version: 8, opset_import: ["" : 17, "my.ops": 1]>\n'
MODEL = HEADER + """g (float[B,4,8,8] x, float[3,4] r, int64[3] b) => (float[3,4,2,3] y, float[B,4,8,8] z) {
  y = RoiAlign<output_height=2, output_width=3, spatial_scale=0.5, sampling_ratio=2>(x, r, b)
  z = my.ops.Swish3<beta=1.5, tags=[7,9], flavour="fast">(x)
}"""


def model(text: str = MODEL) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


def test_specs_are_found_through_entry_points():
    found, problems = registry.discover_plugins()
    assert {"roi-align", "custom-op"} <= set(found) and not problems
    assert all(validate_spec_class(e.obj) is None for e in found.values())
    assert validate_spec_class(int) is not None


def test_plugins_are_opt_in():
    default = fk.optimize(model())
    assert [n.op_type for n in default.graph.node] == ["RoiAlign", "Swish3"]
    out, report = fk.optimize(model(), plugins="auto", return_report=True)
    nodes = {n.name: n for n in out.graph.node}
    roi = nodes["RoiAlign_0"]
    assert (roi.op_type, roi.domain) == ("ROIAlign_TRT", PLUGIN_DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in roi.attribute}
    assert attrs == {"coordinate_transformation_mode": 1, "mode": 1, "output_height": 2, "output_width": 3,
                     "sampling_ratio": 2, "spatial_scale": 0.5, "plugin_version": b"1", "plugin_namespace": b""}
    assert nodes["RoiAlign_0/Cast"].op_type == "Cast"
    swish = {a.name for a in nodes["Swish3_0"].attribute}
    assert swish == {"beta", "tags", "flavour", "plugin_version", "plugin_namespace"}
    assert [e.node for e in report.events if e.pass_name == "substitute-plugins"] == ["RoiAlign_0", "Swish3_0"]
    only = fk.optimize(model(), plugins=["roi-align"])
    assert sorted(n.op_type for n in only.graph.node if n.op_type != "Cast") == ["ROIAlign_TRT", "Swish3"]
    with pytest.raises(InputError, match="unknown plugin spec nms"):
        fk.optimize(model(), plugins="nms")


def test_each_match_is_made_against_the_graph_as_it_is_when_rewritten():
    """The second RoiAlign reads the first one's output: matched before the first is
    substituted, its plugin would read the removed node's tensor (stale match)."""
    text = HEADER + """g (float[2,4,8,8] x, float[3,4] r, int64[3] b, float[2,4] r2, int64[2] b2) => (float[2,4,2,2] y) {
      t = RoiAlign<output_height=4, output_width=4, sampling_ratio=2>(x, r, b)
      y = RoiAlign<output_height=2, output_width=2, sampling_ratio=2>(t, r2, b2)
    }"""
    out = fk.optimize(model(text), plugins="roi-align")
    onnx.checker.check_model(out)
    first, second = [n for n in out.graph.node if n.op_type == "ROIAlign_TRT"]
    produced = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    assert all(i in produced for n in out.graph.node for i in n.input)
    assert second.input[0] == first.output[0]


def test_max_mode_roi_align_is_declined():
    text = MODEL.replace("sampling_ratio=2>", 'sampling_ratio=2, mode="max">')
    out = fk.optimize(model(text), plugins="roi-align")
    assert "RoiAlign" in [n.op_type for n in out.graph.node]


@given(batch=st.integers(1, 3), rois=st.integers(1, 4), size=st.integers(3, 9), out_h=st.integers(1, 3),
       out_w=st.integers(1, 3), ratio=st.integers(0, 3), scale=st.sampled_from([0.25, 0.5, 1.0]),
       half=st.booleans(), seed=st.integers(0, 999))
def test_roi_align_reference_matches_onnxruntime(batch, rois, size, out_h, out_w, ratio, scale, half, seed):
    rng = np.random.default_rng(seed)
    ctm = "half_pixel" if half else "output_half_pixel"
    text = HEADER + f"""g (float[{batch},3,{size},{size}] x, float[{rois},4] r, int64[{rois}] b)
        => (float[{rois},3,{out_h},{out_w}] y) {{
      y = RoiAlign<output_height={out_h}, output_width={out_w}, spatial_scale={scale}, sampling_ratio={ratio},
                   coordinate_transformation_mode="{ctm}">(x, r, b) }}"""
    m = model(text)
    x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    corners = rng.uniform(-2, size / scale + 2, size=(rois, 2, 2))
    r = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
    b = rng.integers(0, batch, size=rois).astype(np.int64)
    expected = run_ort(m, {"x": x, "r": r, "b": b})["y"]
    spec = registry.discover_plugins()[0]["roi-align"].obj()
    out = fk.optimize(m, plugins="roi-align")
    node = next(n for n in out.graph.node if n.op_type == "ROIAlign_TRT")
    fields = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    [got] = spec.reference([x, r, b.astype(np.int32)], fields)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)





@pytest.mark.trt
def test_substituted_model_parses_and_builds_with_generated_creators(tmp_path):
    fixed = model(MODEL.replace("float[B,4,8,8]", "float[2,4,8,8]"))
    out = fk.optimize(fixed, plugins="auto")
    result = parse_and_build(tmp_path, out, creators=("ROIAlign_TRT", "Swish3"),
                             words=["ROIAlign_TRT", "Swish3", "spatial_scale", "output_width", "flavour", "fast",
                                    "tags"])
    assert result["parsed"], result["errors"]
    assert result["plugin_layers"] == ["RoiAlign_0", "Swish3_0"]
    assert result["fields"]["ROIAlign_TRT"] == [{"coordinate_transformation_mode": 1, "mode": 1, "output_height": 2,
                                                  "output_width": 3, "sampling_ratio": 2, "spatial_scale": 0.5}]
    assert result["fields"]["Swish3"] == [{"beta": 1.5, "tags": [7, 9], "flavour": "fast"}]
    assert result["built"]
    assert result["in_engine"] == ["ROIAlign_TRT", "Swish3", "spatial_scale", "output_width", "flavour", "fast",
                                   "tags"]


@pytest.mark.trt
def test_without_a_creator_the_parser_says_plugin_not_found(tmp_path):
    out = fk.optimize(model(MODEL.replace("float[B,4,8,8]", "float[2,4,8,8]")), plugins="auto")
    result = parse_and_build(tmp_path, out, register=False)
    assert not result["parsed"]
    assert any("Plugin not found" in e for e in result["errors"])


@pytest.mark.trt
def test_fusekit_build_registers_creators_and_reports_the_plugins(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(model(MODEL.replace("float[B,4,8,8]", "float[2,4,8,8]")), path)
    code = textwrap.dedent(f"""
        import json
        import fusekit.api as fk
        r = fk.build({str(path)!r}, {str(tmp_path / 'm.engine')!r}, plugins="auto")
        print(json.dumps({{"plugins": r.plugins, "notes": r.report.notes,
                          "types": [l.type for l in r.report.network]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {(p["name"], p["spec"]) for p in data["plugins"]} == {("ROIAlign_TRT", "roi-align"), ("Swish3", "custom-op")}
    assert data["types"].count("PLUGIN_V3") == 2
    assert any("the engine needs TensorRT plugins" in n for n in data["notes"])
    assert (tmp_path / "m.engine").stat().st_size > 0


def test_cli_check_trt_names_the_plugin_substitution(tmp_path, capsys):
    from fusekit.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(model(), path)
    assert main(["check-trt", str(path), "--table", "tensorrt_rtx-1.7"]) == 1
    text = capsys.readouterr().out
    assert "RoiAlign -> ROIAlign_TRT" in text and "passed through as plugin 'Swish3'" in text
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--plugins", "bogus"]) == 2


def test_unsupported_op_without_substitution_is_reported_not_crashed(tmp_path, capsys):
    from fusekit.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(model(HEADER + "g (float[2,4,4] x) => (float[2] y) { y = Det(x) }"), path)
    assert main(["check-trt", str(path), "--table", "tensorrt-10.15"]) == 1
    text = capsys.readouterr().out
    assert "Det_0 (Det)" in text and "none (no rewrite or plugin in fusekit)" in text


def test_library_link_is_created_or_explained(tmp_path, monkeypatch):
    import importlib.util
    import os
    from types import SimpleNamespace

    from fusekit.builder import plugins
    from fusekit.errors import TensorRTError

    libs = tmp_path / "tensorrt_rtx_libs"
    libs.mkdir()
    (libs / "libtensorrt_rtx.so.1").write_bytes(b"")
    fake = SimpleNamespace(submodule_search_locations=[str(libs)])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "tensorrt_rtx_libs" else real(name, *a))
    rtx = SimpleNamespace(is_rtx=True)
    assert plugins.ensure_library_link(SimpleNamespace(is_rtx=False)) is None
    note = plugins.ensure_library_link(rtx)
    assert "created" in note and os.readlink(libs / "libtensorrt_rtx.so") == "libtensorrt_rtx.so.1"
    assert plugins.ensure_library_link(rtx) is None  # already there
    (libs / "libtensorrt_rtx.so").unlink()

    def refuse(self, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(plugins.Path, "symlink_to", refuse)
    with pytest.raises(TensorRTError, match="ln -s libtensorrt_rtx.so.1"):
        plugins.ensure_library_link(rtx)


def test_cli_optimize_lists_every_substitution(tmp_path, capsys):
    from fusekit.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(model(), path)
    assert main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--plugins", "auto"]) == 0
    text = capsys.readouterr().out
    assert "plugin: RoiAlign_0: RoiAlign -> ROIAlign_TRT" in text and "plugin: Swish3_0:" in text
    assert main(["optimize", str(path), "-o", str(tmp_path / "p.onnx")]) == 0
    assert "plugin:" not in capsys.readouterr().out
