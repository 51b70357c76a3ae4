"""Pass discovery through the fusekit.passes entry-point group, built-in and third-party."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest

from fusekit import api, registry
from fusekit.errors import InputError
from fusekit.manager import sort_pipeline
from fusekit.pass_infra import Stage
from fusekit.verify import session
from tests.distributions import activate, example_distribution, make_distribution

BUILT_IN = {"infer-shapes", "fold-constants", "eliminate-dead-code", "remove-noops",
            "dedupe-initializers", "eliminate-common-subexpressions"}

DOUBLE_NEG = onnx.parser.parse_model("""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) {
  a = Neg(x)
  b = Neg(a)
  y = Relu(b)
}""")


def test_built_in_passes_come_from_the_entry_point_group():
    found = registry.discover()
    assert BUILT_IN <= set(found.passes)
    assert all(found.passes[name].package == "fusekit" for name in BUILT_IN)
    assert all(found.passes[name].entry_point.startswith(name) for name in BUILT_IN)
    assert found.problems == []


def test_pipeline_order_is_stage_priority_name_not_discovery_order():
    found = registry.discover()
    instances = [info.cls() for info in reversed(list(found.passes.values()))]
    ordered = sort_pipeline(instances)
    keys = [(p.stage, p.priority, p.name) for p in ordered]
    assert keys == sorted(keys)
    assert ordered[0].stage == Stage.CLEANUP


def test_select_enables_and_skips_by_name():
    found = registry.discover()
    assert [i.name for i in found.select(["remove-noops"])] == ["remove-noops"]
    assert "fold-constants" not in {i.name for i in found.select(skip=["fold-constants"])}
    with pytest.raises(InputError, match="unknown pass nope; known passes:"):
        found.select(["nope"])


def test_example_third_party_pass_is_discovered_and_runs(tmp_path, monkeypatch):
    activate(monkeypatch, *example_distribution(tmp_path / "site"))
    found = registry.discover()
    info = found.passes["cancel-double-neg"]
    assert info.package == "fusekit-example-pass"
    assert info.cls.stage == Stage.FUSION
    optimized, report = api.optimize(DOUBLE_NEG, return_report=True)
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]
    assert {"cancel-double-neg": 1} == {p.name: p.rewrites for p in report.passes if p.name == "cancel-double-neg"}
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = session(DOUBLE_NEG).run(None, {"x": x})[0]
    np.testing.assert_array_equal(session(optimized).run(None, {"x": x})[0], expected)


def test_disable_autoload_env_keeps_only_fusekit_passes(tmp_path, monkeypatch):
    activate(monkeypatch, *example_distribution(tmp_path / "site"))
    monkeypatch.setenv(registry.DISABLE_AUTOLOAD_ENV, "1")
    found = registry.discover()
    assert "cancel-double-neg" not in found.passes
    assert BUILT_IN <= set(found.passes)


def test_package_that_fails_to_import_is_a_warning_naming_it(tmp_path, monkeypatch, caplog):
    root = make_distribution(tmp_path / "site", "broken-passes", {"broken": "broken_passes_mod:Whatever"},
                             {"broken_passes_mod": "raise ImportError('needs libfoo')\n"})
    activate(monkeypatch, root)
    with caplog.at_level(logging.WARNING):
        found = registry.discover()
    assert BUILT_IN <= set(found.passes)
    assert any("'broken-passes'" in p and "needs libfoo" in p for p in found.problems)
    assert "broken-passes" in caplog.text
    with pytest.raises(InputError, match="broken-passes"):
        registry.discover(strict=True)
    # optimizing still works, and the report carries the warning
    _, report = api.optimize(DOUBLE_NEG, return_report=True)
    assert any("broken-passes" in w for w in report.warnings)


@pytest.mark.parametrize("source, reason", [
    ("class NotAPass:\n    pass\n", "not a subclass"),
    ("from fusekit.pass_infra import Pass\nclass NoStage(Pass):\n    name = 'x'\n"
     "    def run(self, graph, ctx):\n        return 0\n", "has no stage"),
    ("from fusekit.pass_infra import Pass, Stage\nclass NoRun(Pass):\n    name = 'y'\n    stage = Stage.FUSION\n",
     "does not implement run"),
])
def test_broken_pass_class_is_skipped_with_a_warning(tmp_path, monkeypatch, source, reason):
    cls = source.split("class ")[1].split("(")[0].split(":")[0]
    module = f"bad_pass_{cls.lower()}"
    root = make_distribution(tmp_path / "site", "bad-pass", {"bad": f"{module}:{cls}"}, {module: source})
    activate(monkeypatch, root)
    found = registry.discover()
    assert BUILT_IN <= set(found.passes)
    assert any("'bad-pass'" in p and reason in p for p in found.problems)


def test_name_clash_with_a_built_in_keeps_the_built_in(tmp_path, monkeypatch):
    source = ("from fusekit.pass_infra import Pass, Stage\nclass Fake(Pass):\n    name = 'remove-noops'\n"
              "    stage = Stage.CLEANUP\n    def run(self, graph, ctx):\n        return 0\n")
    activate(monkeypatch, make_distribution(tmp_path / "site", "clash", {"c": "clash_mod:Fake"}, {"clash_mod": source}))
    found = registry.discover()
    assert found.passes["remove-noops"].package == "fusekit"
    assert any("already taken" in p for p in found.problems)


def test_top_level_api():
    import fusekit

    optimized = fusekit.optimize(DOUBLE_NEG, passes=["eliminate-dead-code"])
    assert isinstance(optimized, onnx.ModelProto)
    assert callable(fusekit.build) and callable(fusekit.inspect_engine)
