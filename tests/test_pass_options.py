"""Declared pass options: checked by the manager (unknown name or wrong type: InputError,
exit 2), taken by the API as ``options=`` or keywords, and generated as CLI flags of
``fusekit optimize`` / ``build``; giving an opt-in pass's option turns that pass on."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fusekit import api, registry
from fusekit.cli import main
from fusekit.errors import InputError
from fusekit.pass_infra import Option, Pass, PassContext, Stage, resolve_options
from fusekit.verify import session
from tests.distributions import activate, example_distribution

TOPK = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[2,12] x) => (float[2,5] v, int64[2,5] i) <int64[1] k = {5}> { v, i = TopK<axis=1>(x, k) }""")
DOUBLE_NEGS = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) { a = Neg(x)  b = Neg(a)  c = Relu(b)  d = Neg(c)  e = Neg(d)  y = Relu(e) }""")


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_keyword_and_options_mapping_reach_the_pass():
    assert "TopK" in ops(api.optimize(TOPK))  # K = 5 is far below the default limit
    for optimized in (api.optimize(TOPK, topk_k_limit=4), api.optimize(TOPK, options={"topk_k_limit": 4})):
        assert "TopK" not in ops(optimized)
        x = np.random.default_rng(0).standard_normal((2, 12)).astype(np.float32)
        want, got = session(TOPK).run(None, {"x": x}), session(optimized).run(None, {"x": x})
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("given, message", [
    ({"topk_k_limt": 4}, "unknown option topk_k_limt: no pass in the pipeline takes it"),
    ({"topk_k_limit": "4"}, r"option topk_k_limit \(--topk-k-limit\): expected int, got str '4'"),
    ({"topk_k_limit": True}, "expected int, got bool"),
    ({"layer_norm_raise_opset": 1}, "expected bool, got int"),
    ({"plugins": "nms"}, r"option plugins \(--plugins\): unknown plugin spec nms"),
])
def test_unknown_option_or_wrong_type_is_an_input_error_naming_it(given, message):
    with pytest.raises(InputError, match=message):
        api.optimize(TOPK, **given)


def test_option_of_a_pass_left_out_of_the_pipeline_is_refused():
    with pytest.raises(InputError, match="option topk_k_limit: split-topk, which takes it, is not in the pipeline"):
        api.optimize(TOPK, skip=["split-topk"], topk_k_limit=4)
    with pytest.raises(InputError, match="option plugins: substitute-plugins, which takes it, is not in the pipeline"):
        api.optimize(TOPK, skip=["substitute-plugins"], plugins="auto")
    assert "TopK" in ops(api.optimize(TOPK, skip=["split-topk"], topk_k_limit=3840))  # the default: harmless


def test_an_opt_in_pass_is_turned_on_by_its_option_only_off_its_default():
    found = registry.discover()
    assert "substitute-plugins" not in {i.name for i in found.select()}
    assert "substitute-plugins" not in {i.name for i in found.select(options={"plugins": "none"})}
    assert "substitute-plugins" not in {i.name for i in found.select(options={"plugins": None})}  # as before
    assert "substitute-plugins" in {i.name for i in found.select(options={"plugins": "auto"})}
    assert "substitute-plugins" in {i.name for i in found.select(["remove-noops"], options={"plugins": ["roi-align"]})}


def test_context_reads_the_default_when_not_given():
    limit = Option("x_limit", int, 7, "a limit")
    assert PassContext().get(limit) == 7 and PassContext(options={"x_limit": 3}).get(limit) == 3
    assert Option("ratio", float, 0.5, "").convert(2) == 2.0


def test_two_passes_may_share_an_option_only_declared_alike():
    def make(name: str, option: Option) -> type[Pass]:
        return type(name, (Pass,), {"name": name, "stage": Stage.CLEANUP, "options": (option,),
                                    "run": lambda self, graph, ctx: 0})

    a, b = make("a", Option("n", int, 1, "n")), make("b", Option("n", int, 1, "n"))
    assert resolve_options([a, b], {"n": 2}) == {"n": 2}
    with pytest.raises(InputError, match="option n: declared differently by passes a and c"):
        resolve_options([a, make("c", Option("n", int, 2, "n"))], {})


def test_registry_refuses_options_that_are_not_declarations():
    bad = type("Bad", (Pass,), {"name": "bad", "stage": Stage.CLEANUP, "options": ("plugins",),
                               "run": lambda self, graph, ctx: 0})
    assert "options is not a tuple of fusekit.pass_infra.Option" in registry.validate_pass_class(bad)


def test_cli_flags_are_generated_from_the_declarations(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # help lines unwrapped
    model = tmp_path / "m.onnx"
    onnx.save(TOPK, model)
    assert main(["optimize", str(model), "-o", str(tmp_path / "a.onnx"), "--topk-k-limit", "4"]) == 0
    assert "TopK" not in ops(onnx.load(tmp_path / "a.onnx"))
    assert main(["optimize", "--help"]) == 0
    text = capsys.readouterr().out
    assert "Pass options" in text and "--topk-k-limit" in text and "--plugins" in text
    assert "--fold-max-bytes" in text and "default 1048576" in text


@pytest.mark.parametrize("args, message", [
    (["--topk-k-limt", "4"], "No such option: --topk-k-limt"),
    (["--topk-k-limit", "many"], "Invalid value for '--topk-k-limit'"),
    (["--plugins", "nms"], "unknown plugin spec nms"),
])
def test_cli_misspelt_or_bad_pass_option_exits_2(tmp_path, capsys, args, message):
    model = tmp_path / "m.onnx"
    onnx.save(TOPK, model)
    assert main(["optimize", str(model), "-o", str(tmp_path / "a.onnx"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()


def test_third_party_pass_declares_an_option_with_its_flag(tmp_path, monkeypatch, capsys):
    activate(monkeypatch, *example_distribution(tmp_path / "site"))
    assert ops(api.optimize(DOUBLE_NEGS)).count("Neg") == 0
    assert ops(api.optimize(DOUBLE_NEGS, double_neg_limit=1, max_iterations=1)).count("Neg") == 2
    model = tmp_path / "m.onnx"
    onnx.save(DOUBLE_NEGS, model)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model), "-o", str(out), "--double-neg-limit", "1", "--max-iterations", "1"]) == 0
    assert ops(onnx.load(out)).count("Neg") == 2
    capsys.readouterr()
    assert main(["passes", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["cancel-double-neg"]["options"] == [
        {"name": "double_neg_limit", "flag": "--double-neg-limit", "type": "int", "default": 0,
         "help": "Cancel at most this many Neg pairs per run (0: all)."}]
