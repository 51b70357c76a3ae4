"""fusekit lint: one model per rule that triggers it and a near miss that must not, the
output formats (SARIF validated against the official 2.1.0 schema), exit codes, config
precedence, --fix, and every onnx light model."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, helper

import fusekit
from fusekit import profiles
from fusekit.cli import main
from fusekit.errors import InputError
from fusekit.lint import LintConfig, checks, lint_model
from fusekit.lint.config import for_model
from fusekit.lint.output import to_github, to_sarif
from fusekit.lint.rules import RULES, Severity, explain

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'
SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
NO_TRT = LintConfig(trt=False)


def parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text if text.lstrip().startswith("<") else HEADER + text)


def codes(model: onnx.ModelProto, config: LintConfig = NO_TRT) -> dict[str, list]:
    found: dict[str, list] = {}
    for f in lint_model(model, config).findings:
        found.setdefault(f.code, []).append(f)
    return found


def graph_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def vi(name, shape=(1, 3), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


# -- one model per rule, and a near miss ------------------------------------------------

CONV_BN = """
g (float[1,2,4,4] x) => (float[1,2,4,4] y)
  <float[2,2,1,1] w = {1.0, 0.5, 0.25, 2.0}, float[2] s = {1.0, 2.0}, float[2] b = {0.0, 1.0},
   float[2] m = {0.5, 0.5}, float[2] v = {1.0, 4.0}> {
  c = Conv(x, w)
  y = BatchNormalization(c, s, b, m, v)
}"""


@pytest.mark.trt
def test_fk101_unsupported_op_and_near_miss():
    found = codes(parse("g (float[4] x) => (float[4] y, int64[4] i) { y, i, inv, cnt = Unique(x) }"),
                  LintConfig())
    assert [f.op for f in found["FK101"]] == ["Unique"]
    assert "FK101" not in codes(parse("g (float[4] x) => (float[4] y) { y = Relu(x) }"), LintConfig())


@pytest.mark.trt
def test_fk102_custom_domain_op_needs_plugin_and_near_miss():
    text = ('<ir_version: 8, opset_import: ["" : 17, "com.acme": 1]>\n'
            'g (float[1,3] x) => (float[1,3] y) {{ y = {op}(x) }}')
    found = codes(parse(text.format(op="com.acme.Foo")), LintConfig())
    assert [f.op for f in found["FK102"]] == ["com.acme.Foo"] and "FK101" not in found
    assert not codes(parse(text.format(op="Relu")), LintConfig()).keys() & {"FK101", "FK102"}


@pytest.mark.trt
def test_fk102_op_whose_only_substitution_is_a_plugin():
    roi = parse("""g (float[1,2,8,8] x, float[3,4] rois, int64[3] idx) => (float[3,2,2,2] y) {
      y = RoiAlign<output_height = 2, output_width = 2, sampling_ratio = 2>(x, rois, idx) }""")
    found = codes(roi, LintConfig())
    if "FK102" not in found and "FK101" not in found:
        pytest.skip("this TensorRT parses RoiAlign as it is")
    assert [f.op for f in found["FK102"]] == ["RoiAlign"] and "FK101" not in found


def test_fk104_opset_range():
    from fusekit.builder.support import supported_opsets

    (low, high), table = supported_opsets()  # the installed TensorRT's table: tensorrt_rtx-1.7 here
    assert (low, high) == (9, 24) and table.startswith(("tensorrt_rtx-", "tensorrt-"))
    old = parse('<ir_version: 3, opset_import: ["" : 7]>\ng (float[1,3] x) => (float[1,3] y) { y = Relu(x) }')
    assert "FK104" in codes(old)
    newer = parse('<ir_version: 10, opset_import: ["" : 25]>\ng (float[1,3] x) => (float[1,3] y) { y = Relu(x) }')
    found = codes(newer)["FK104"]
    assert f"support table {table} 9..24" in found[0].message
    assert "FK104" not in codes(parse("g (float[1,3] x) => (float[1,3] y) { y = Relu(x) }"))
    assert "FK104" in codes(parse("g (float[1,3] x) => (float[1,3] y) { y = Relu(x) }"),
                            LintConfig(trt=False, opset=(9, 16)))


def test_fk201_dynamic_dim_without_profile():
    model = parse("g (float[N,3] x) => (float[N,3] y) { y = Relu(x) }")
    assert [f.node for f in codes(model)["FK201"]] == ["x"]
    profiles.write_profiles(model, profiles.parse_dynamic_args(["N=1:4:8"]))
    assert "FK201" not in codes(model)  # near miss: the range is stored
    assert "FK201" not in codes(parse("g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }"))


def test_fk202_missing_shape():
    no_rank = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    model = graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [no_rank],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert {f.node for f in codes(model)["FK202"]} >= {"x"}
    assert "FK202" not in codes(graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                                            [vi("x")], [vi("y")]))


def test_fk202_intermediate_tensor_without_shape():
    text = ('<ir_version: 8, opset_import: ["" : 17, "com.acme": 1]>\n'
            'g (float[1,3] x) => (float[1,3] y) {{ t = {op}(x)\n y = Relu(t) }}')
    found = codes(parse(text.format(op="com.acme.Foo")))
    assert [f.key for f in found["FK202"]] == ["t"]
    assert "FK202" not in codes(parse(text.format(op="Sigmoid")))


def test_fk301_pass_findings_keyed_by_pass():
    found = codes(parse(CONV_BN))["FK301"]
    assert "fold-batchnorm" in {f.key for f in found} and all(f.fixable for f in found)
    identity = codes(parse("g (float[1,3] x) => (float[1,3] y) { t = Identity(x)\n y = Relu(t) }"))
    assert {f.key for f in identity["FK301"]} == {"remove-noops"}
    # near misses: the Conv output is also a graph output (BN cannot fold); an Identity
    # that links an input straight to an output cannot go
    shared = parse(CONV_BN.replace("=> (float[1,2,4,4] y)", "=> (float[1,2,4,4] y, float[1,2,4,4] c)"))
    assert "fold-batchnorm" not in {f.key for f in codes(shared).get("FK301", [])}
    assert "FK301" not in codes(parse("g (float[1,3] x) => (float[1,3] y) { y = Identity(x) }"))


QDQ = """
g (float[1,2,4,4] x) => (float[1,2,4,4] y)
  <float s = {0.1}, uint8 z = {128}, float[2,2,1,1] w = {1.0, 0.5, 0.25, 2.0}, int8[2,2,1,1] wq = {10, 5, 2, 20},
   float ws = {0.1}, int8 wz = {0}> {
  q = QuantizeLinear(x, s, z)
  d = DequantizeLinear(q, s, z)
  WEIGHT
  y = Conv(d, W)
}"""


def test_fk302_qdq_placement():
    float_weights = parse(QDQ.replace("WEIGHT", "").replace("Conv(d, W)", "Conv(d, w)"))
    assert [f.key for f in codes(float_weights)["FK302"]] == ["float-weights"]
    q_alone = parse("""g (float[1,3] x) => (float[1,3] y) <float s = {0.1}, uint8 z = {128}> {
      q = QuantizeLinear(x, s, z)
      y = Cast<to = 1>(q) }""")
    assert [f.key for f in codes(q_alone)["FK302"]] == ["q-without-dq"]
    paired = parse(QDQ.replace("WEIGHT", "wd = DequantizeLinear(wq, ws, wz)").replace("Conv(d, W)", "Conv(d, wd)"))
    assert "FK302" not in codes(paired)


def test_fk401_int64_beyond_int32_sentinels_excepted():
    text = "g (int64[1] x) => (int64[1] y) <int64[1] c = {VALUE}> { y = Add(x, c) }"
    assert "FK401" in codes(parse(text.replace("VALUE", str(2**40))))
    assert "FK401" not in codes(parse(text.replace("VALUE", str(2**63 - 1))))
    assert "FK401" not in codes(parse(text.replace("VALUE", str(2**31 - 1))))


def test_fk402_fp32_beyond_fp16():
    text = "g (float[2] x) => (float[2] y) <float[2] c = {VALUES}> { y = Add(x, c) }"
    assert "FK402" in codes(parse(text.replace("VALUES", "1.0, -1000000000.0")))
    assert "FK402" not in codes(parse(text.replace("VALUES", "65504.0, -65504.0")))


def test_fk402_names_constant_nodes():
    model = graph_model([helper.make_node("Constant", [], ["m"], name="mask",
                                          value=helper.make_tensor("", TensorProto.FLOAT, [1], [-3.0e38])),
                         helper.make_node("Add", ["x", "m"], ["y"], name="a")], [vi("x", (1,))], [vi("y", (1,))])
    assert [f.node for f in codes(model)["FK402"]] == ["mask"]


def test_fk402_reads_large_weights_from_the_file_and_from_external_data(tmp_path):
    """Weights of 4 KiB and more stay in their file (memory-mapped when checked), inside the
    model file or beside it: both are range-checked."""
    values = np.ones(4096, np.float32)
    values[123] = -1e9
    c = onnx.numpy_helper.from_array(values, "c")
    model = graph_model([helper.make_node("Add", ["x", "c"], ["y"], name="a")], [vi("x", (4096,))],
                        [vi("y", (4096,))], [c])
    onnx.save(model, tmp_path / "inline.onnx")
    onnx.save(model, tmp_path / "external.onnx", save_as_external_data=True, location="external.bin")
    for name in ("inline.onnx", "external.onnx"):
        findings = [f for f in lint_model(tmp_path / name, NO_TRT).findings if f.code == "FK402"]
        assert [f.node for f in findings] == ["c"] and "1 value(s)" in findings[0].message, name


def test_fk402_ignores_infinities():
    c = onnx.numpy_helper.from_array(np.array([np.inf, -np.inf], np.float32), "c")
    model = graph_model([helper.make_node("Add", ["x", "c"], ["y"], name="a")], [vi("x", (2,))], [vi("y", (2,))], [c])
    assert "FK402" not in codes(model)


def test_fk501_inline_weights_over_limit(monkeypatch):
    model = parse(CONV_BN)
    assert "FK501" not in codes(model)
    monkeypatch.setattr(checks, "INLINE_LIMIT", 8)
    assert "FK501" in codes(model)


def test_fk502_unused_initializer():
    text = "g (float[2] x) => (float[2] y) <float[2] c = {1.0, 2.0}, float[2] d = {1.0, 2.0}> { y = Add(x, c) }"
    assert [f.node for f in codes(parse(text))["FK502"]] == ["d"]
    assert "FK502" not in codes(parse(text.replace(", float[2] d = {1.0, 2.0}", "")))


def test_fk503_duplicate_names_and_fk504_empty_names():
    def model(first: str, second: str) -> onnx.ModelProto:
        return graph_model([helper.make_node("Relu", ["x"], ["t"], name=first),
                            helper.make_node("Relu", ["t"], ["y"], name=second)], [vi("x")], [vi("y")])

    assert [f.node for f in codes(model("a", "a"))["FK503"]] == ["a"]
    assert "FK503" not in codes(model("a", "b"))
    assert [f.node for f in codes(model("a", ""))["FK504"]] == ["node_of_y"]
    assert "FK504" not in codes(model("a", "b"))


def test_fk505_random_ops():
    random = graph_model([helper.make_node("RandomNormalLike", ["x"], ["y"], name="r")], [vi("x")], [vi("y")])
    assert [f.node for f in codes(random)["FK505"]] == ["r"]
    assert "FK505" not in codes(graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x")], [vi("y")]))


def test_every_rule_has_a_test_and_an_explanation():
    source = Path(__file__).read_text()
    for code, rule in RULES.items():
        assert f'"{code}"' in source, f"no test for {code}"
        assert code in explain(code.lower()) and rule.name in explain(code)
    with pytest.raises(InputError):
        explain("FK999")


def test_api_lint_is_callable_package():
    found = fusekit.lint(parse("g (float[1,3] x) => (float[1,3] y) { t = Identity(x)\n y = Relu(t) }"),
                         select=["FK3"])
    assert {f.code for f in found} == {"FK301"}


# -- outputs ----------------------------------------------------------------------------

@pytest.fixture
def bn_file(tmp_path) -> Path:
    path = tmp_path / "bn.onnx"
    onnx.save(parse(CONV_BN), path)
    return path


def test_sarif_valid_against_schema_with_stable_ids(bn_file):
    schema = json.loads(SCHEMA.read_text())
    results = [lint_model(bn_file, LintConfig(trt=False)), lint_model(bn_file, LintConfig(trt=False))]
    sarif = to_sarif(results)
    jsonschema.Draft4Validator(schema).validate(sarif)
    items = sarif["runs"][0]["results"]
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert items and all(rules[i["ruleIndex"]]["id"] == i["ruleId"] for i in items)
    half = len(items) // 2
    assert [i["fingerprints"] for i in items[:half]] == [i["fingerprints"] for i in items[half:]]


def test_cli_formats(bn_file, capsys):
    assert main(["lint", str(bn_file), "--format", "json", "--ignore", "FK1"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert {f["code"] for f in data["models"][0]["findings"]} >= {"FK301"}
    report_schema = Path(fusekit.__file__).parent / "schemas" / "lint-report.schema.json"
    jsonschema.Draft202012Validator(json.loads(report_schema.read_text())).validate(data)
    assert main(["lint", str(bn_file), "--format", "github", "--ignore", "FK1"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith(("::warning file=", "::error file=", "::notice file=")) for line in lines)
    assert main(["lint", str(bn_file), "--format", "sarif", "--ignore", "FK1"]) == 1
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(json.loads(capsys.readouterr().out))
    assert main(["lint", str(bn_file), "--ignore", "FK1"]) == 1
    text = capsys.readouterr().out
    assert "FK301 pass-would-rewrite [fold-batchnorm]" in text


def test_text_is_grouped_and_coloured_on_a_terminal():
    from rich.console import Console

    from fusekit.lint.output import render_text

    result = lint_model(parse(CONV_BN), NO_TRT)
    console = Console(force_terminal=True, record=True, width=200)
    render_text([result], console)
    text = console.export_text(clear=False)
    assert "FK301 pass-would-rewrite [fold-batchnorm]: 1 warning" in text
    assert "\x1b[" in console.export_text(styles=True)


def test_pre_commit_hook_definition():
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((Path(__file__).parents[1] / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "fusekit-lint")
    assert hook["entry"] == "fusekit lint" and hook["language"] == "python" and hook["files"] == r"\.onnx$"


def test_github_escapes_newlines_and_commas():
    result = lint_model(parse("g (float[1,3] x) => (float[1,3] y) { t = Identity(x)\n y = Relu(t) }"), NO_TRT)
    text = to_github([result])
    assert text.count("\n") == len(result.findings)


# -- exit codes ----------------------------------------------------------------------------

def test_exit_codes(bn_file, tmp_path, capsys):
    clean = tmp_path / "clean.onnx"
    onnx.save(graph_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x")], [vi("y")]), clean)
    assert main(["lint", str(clean)]) == 0
    assert main(["lint", str(bn_file)]) == 1
    assert main(["lint", str(bn_file), "--exit-zero"]) == 0
    assert main(["lint", str(bn_file), "--fail-on", "error", "--ignore", "FK1"]) == 0
    assert main(["lint", str(bn_file), "--select", "FK504"]) == 0  # nothing of that rule
    missing = str(tmp_path / "missing.onnx")
    assert main(["lint", missing, "--exit-zero"]) == 2
    assert main(["lint", str(clean), missing]) == 2
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    assert main(["lint", str(corrupt)]) == 2
    assert main(["lint", str(clean), "--select", "FK9"]) == 2
    assert main(["lint", str(clean), "--fail-on", "fatal"]) == 2
    assert main(["lint", str(clean), "--format", "xml"]) == 2
    assert main(["lint"]) == 2
    assert main(["lint", "--explain", "FK301"]) == 0
    assert "fold" in capsys.readouterr().out
    assert main(["lint", "--explain", "FK999"]) == 2


# -- configuration ---------------------------------------------------------------------------

def test_config_precedence(tmp_path, capsys):
    models = tmp_path / "models" / "legacy"
    models.mkdir(parents=True)
    path = models / "bn.onnx"
    onnx.save(parse(CONV_BN), path)
    (tmp_path / "pyproject.toml").write_text("""
[tool.fusekit.lint]
ignore = ["FK1"]
fail-on = "error"
severity = {FK502 = "warning"}

[tool.fusekit.lint.per-model."models/legacy/*.onnx"]
severity = {FK301 = "error"}
""")
    config = for_model(path)
    assert config.fail_on is Severity.ERROR and config.severity["FK301"] is Severity.ERROR
    assert not config.enabled("FK101") and config.enabled("FK301")
    assert main(["lint", str(path)]) == 1  # per-model: FK301 is an error
    assert main(["lint", str(path), "--ignore", "FK301"]) == 0  # flags add to ignore
    flagged = for_model(path, select=("FK5",), fail_on=Severity.INFO)
    assert flagged.select == ("FK5",) and flagged.fail_on is Severity.INFO and not flagged.enabled("FK301")
    other = tmp_path / "other.onnx"  # not matched by the per-model glob
    onnx.save(parse(CONV_BN), other)
    assert for_model(other).severity.get("FK301") is None
    assert main(["lint", str(other)]) == 0  # FK301 stays a warning, below fail-on error
    (tmp_path / "pyproject.toml").write_text('[tool.fusekit.lint]\nselct = ["FK1"]\n')
    assert main(["lint", str(other)]) == 2
    capsys.readouterr()


def test_config_found_upward_nearest_table_wins(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert for_model(deep / "m.onnx").source is None  # nothing under /tmp
    (tmp_path / "pyproject.toml").write_text('[tool.fusekit.lint]\nignore = ["FK504"]\n')
    (tmp_path / "a" / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no lint table: skipped
    config = for_model(deep / "m.onnx")
    assert config.source == str(tmp_path / "pyproject.toml") and not config.enabled("FK504")
    (deep / "pyproject.toml").write_text('[tool.fusekit.lint]\nselect = ["FK5"]\n')
    config = for_model(deep / "m.onnx")
    assert config.source == str(deep / "pyproject.toml") and config.enabled("FK504")


# -- --fix ----------------------------------------------------------------------------------

def test_fix_writes_output_never_over_input(bn_file, tmp_path):
    before = bn_file.read_bytes()
    out = tmp_path / "fixed.onnx"
    assert main(["lint", str(bn_file), "--ignore", "FK1", "--fix", "-o", str(out)]) == 0
    assert bn_file.read_bytes() == before
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(out).graph.node}
    assert main(["lint", str(out), "--select", "FK301"]) == 0  # nothing left to fix
    assert main(["lint", str(bn_file), "--fix", "-o", str(bn_file)]) == 2
    assert main(["lint", str(bn_file), "--fix"]) == 2
    assert main(["lint", str(bn_file), "-o", str(out)]) == 2
    assert bn_file.read_bytes() == before


def test_fix_repeats_while_rewrites_open_the_way_for_other_passes(tmp_path):
    # Mul by 1 needs shapes (remove-noops), and folding exposes equal initializers (dedupe)
    path = tmp_path / "m.onnx"
    onnx.save(parse("""g (float[2,3] x) => (float[2,3] y) <float[3] a = {1.0, 1.0, 1.0}, float[3] b = {2.0, 2.0, 2.0},
                       float[3] c = {1.0, 1.0, 1.0}> {
      s = Add(a, c)
      t = Mul(x, a)
      u = Add(t, s)
      y = Add(u, b) }"""), path)
    out = tmp_path / "fixed.onnx"
    assert main(["lint", str(path), "--select", "FK3", "--fix", "-o", str(out)]) == 0
    assert main(["lint", str(out), "--select", "FK301"]) == 0


def test_fix_keeps_the_last_lint_of_the_written_file(bn_file, tmp_path, monkeypatch):
    from fusekit.lint import command, fix

    result = lint_model(bn_file, LintConfig())
    out = tmp_path / "fixed.onnx"
    fixed = fix.fix(result, out)
    assert fixed.passes and fixed.remaining is not None
    assert fixed.remaining.findings == lint_model(out, result.config).findings
    calls = []
    real = command.lint_model
    monkeypatch.setattr(command, "lint_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert main(["lint", str(bn_file), "--ignore", "FK1", "--fix", "-o", str(out)]) == 0
    assert len(calls) == 1  # the input only: --fix hands back the lint of the fixed file


def test_fix_output_dir_and_in_place(bn_file, tmp_path):
    second = tmp_path / "second.onnx"
    onnx.save(parse("g (float[1,3] x) => (float[1,3] y) { t = Identity(x)\n y = Relu(t) }"), second)
    out_dir = tmp_path / "fixed"
    out_dir.mkdir()
    assert main(["lint", str(bn_file), str(second), "--ignore", "FK1", "--fix", "-o", str(out_dir / "a.onnx")]) == 2
    assert main(["lint", str(bn_file), str(second), "--ignore", "FK1", "--fix", "--output-dir", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["bn.onnx", "second.onnx"]
    assert main(["lint", str(second), "--ignore", "FK1", "--fix", "--in-place"]) == 0
    assert "Identity" not in {n.op_type for n in onnx.load(second).graph.node}


# -- every onnx light model --------------------------------------------------------------------

def test_every_onnx_light_model_lints(capsys):
    paths = sorted(LIGHT.glob("*.onnx"))
    assert paths
    for path in paths:
        result = lint_model(path, LintConfig())
        assert all(f.code in RULES for f in result.findings)
    assert main(["lint", *map(str, paths), "--format", "sarif", "--exit-zero"]) == 0
    jsonschema.Draft4Validator(json.loads(SCHEMA.read_text())).validate(json.loads(capsys.readouterr().out))


def test_fk301_says_what_optimize_changes_on_the_readme_model(tmp_path):
    """The README's model has 3 BatchNorms, two reading their scale through Identity nodes:
    lint reports all 3 (what the pipeline really folds, not what fold-batchnorm's inspect
    sees before the cleanup), and lint --fix and optimize give the same graph."""
    import sys

    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_model import export

    model = tmp_path / "model.onnx"
    export(str(model))
    found = [f for f in lint_model(model, LintConfig(trt=False, select=("FK301",))).findings]
    folded = sorted(f.node for f in found if f.key == "fold-batchnorm")
    bns = sorted(n.name for n in onnx.load(model).graph.node if n.op_type == "BatchNormalization")
    assert len(bns) == 3 and folded == bns
    before = {n.name for n in onnx.load(model).graph.node}
    assert {f.node for f in found} <= before
    proto = onnx.load(model)
    text = proto.SerializeToString()
    assert len([f for f in lint_model(proto, LintConfig(trt=False, select=("FK301",))).findings
                if f.key == "fold-batchnorm"]) == 3
    assert proto.SerializeToString() == text  # the pipeline ran on lint's own copy
    fixed, optimized = tmp_path / "fixed.onnx", tmp_path / "optimized.onnx"
    assert main(["lint", str(model), "--select", "FK301", "--fix", "-o", str(fixed)]) == 0
    assert main(["optimize", str(model), "-o", str(optimized)]) == 0
    ops = [[n.op_type for n in onnx.load(p).graph.node] for p in (fixed, optimized)]
    assert ops[0] == ops[1] and "BatchNormalization" not in ops[0]
    # every node lint named is gone or rewritten in both results; every node optimize removed was named
    after = {n.name for n in onnx.load(optimized).graph.node}
    assert before - after <= {f.node for f in found}
