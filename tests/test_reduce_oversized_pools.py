"""reduce-oversized-pools: pools over TensorRT's window limit that cover their input, as global
reductions equal to onnxruntime (hypothesis over ops, ranks, pads, ceil_mode, count_include_pad,
auto_pad; the edge cases by hand), near misses declined, Hugging Face EfficientNet's head
(torch export) optimized, and the real tensorrt_rtx parser rejecting the raw pool and building
the result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit.api as fk
from fusekit.builder import backend as backends
from fusekit.builder.support import check_with_table
from fusekit.errors import ParseFailedError
from fusekit.trt_limits import pool_window_problem
from tests.helpers import assert_same_outputs, inspect_pass, op_counts, optimize_with, parse

BACKEND = backends.installed()
PASS = "reduce-oversized-pools"


def pool_model(op: str, sizes: list[int], kernel: list[int], *, dtype: str = "float", batch: str = "N",
               out: list[int] | None = None, opset: int = 17, **attrs) -> onnx.ModelProto:
    """One pool over ``float[batch, 2, *sizes]``; ``attrs`` are written as ONNX text."""
    text = ", ".join(f"{k}={_text(v)}" for k, v in {"kernel_shape": kernel, **attrs}.items())
    dims = ",".join(map(str, [batch, 2, *sizes]))
    odims = ",".join(map(str, [batch, 2, *(out or [1] * len(sizes))]))
    header = f'<ir_version: {8 if opset < 19 else 9}, opset_import: ["" : {opset}]>\n'
    return parse(f"""g ({dtype}[{dims}] x) => ({dtype}[{odims}] y) {{ y = {op}<{text}>(x) }}""", header)


def _text(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(list(value) if isinstance(value, (list, tuple)) else value)


def check(model: onnx.ModelProto, expect: str, dim_values=(1, 3)) -> onnx.ModelProto:
    """Optimize with the pass; the pool is gone, ``expect`` is there, outputs equal onnxruntime's."""
    optimized, _ = optimize_with(model, ["infer-shapes", PASS])
    counts = op_counts(optimized)
    assert counts[expect] == 1 and not {"AveragePool", "MaxPool", "LpPool"} & set(counts), dict(counts)
    rng = np.random.default_rng(0)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    feeds = [{"x": rng.normal(size=[n if d == 0 else d for d in shape]).astype(dtype)} for n in dim_values]
    assert_same_outputs(model, optimized, feeds, rtol=1e-5, atol=1e-6)
    return optimized


@st.composite
def covering_pools(draw):
    """A pool over the limit whose window covers the padded input (1..3 spatial dims)."""
    rank = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank))
    low = 100_000 if rank == 1 else 317  # 317**2 and 317**3 are over the 2-D and 3-D limits
    kernel = draw(st.lists(st.integers(low, low + 3), min_size=rank, max_size=rank))
    op = draw(st.sampled_from(["AveragePool", "MaxPool", "LpPool"]))
    attrs = {}
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER"]))
    if auto_pad == "NOTSET":
        pads = draw(st.lists(st.integers(0, 3), min_size=2 * rank, max_size=2 * rank))
        attrs["pads"] = pads
        padded = [x + b + e for x, b, e in zip(sizes, pads[:rank], pads[rank:])]
        # the window may reach past the padded input by less than a stride (a single output)
        attrs["strides"] = [draw(st.sampled_from([k, k - p + 1, k + 5])) for k, p in zip(kernel, padded)]
    else:
        attrs["auto_pad"] = auto_pad  # one output when the stride is at least the input
        attrs["strides"] = [draw(st.sampled_from([k, x, x + 1])) for k, x in zip(kernel, sizes)]
    if op != "LpPool":
        attrs["ceil_mode"] = draw(st.integers(0, 1))
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.integers(0, 1))
    if op == "LpPool":
        attrs["p"] = draw(st.integers(1, 3))
    return op, sizes, kernel, attrs, draw(st.sampled_from([11, 17, 19]))


@settings(max_examples=80, deadline=None)
@given(case=covering_pools())
def test_covering_pools_match_onnxruntime(case):
    """Against onnxruntime's kernels of opsets 11-18 and 19 (which count padding differently)."""
    op, sizes, kernel, attrs, opset = case
    model = pool_model(op, sizes, kernel, opset=opset, **attrs)
    padded_counted = op == "AveragePool" and attrs.get("count_include_pad") and \
        (attrs.get("auto_pad", "NOTSET") != "NOTSET" or any(attrs["pads"]) or
         (opset < 19 and not attrs["ceil_mode"]))  # that kernel divides by the window's volume
    expect = "ReduceSum" if padded_counted else {"AveragePool": "GlobalAveragePool", "MaxPool": "GlobalMaxPool",
                                                 "LpPool": "GlobalLpPool"}[op]
    check(model, expect)


def test_efficientnet_head_pool_divides_by_the_input_size():
    """ceil_mode=1, count_include_pad=1 without pads: onnxruntime divides by 7*7, not 2560*2560."""
    model = pool_model("AveragePool", [7, 7], [2560, 2560], strides=[2560, 2560], ceil_mode=1, count_include_pad=1)
    check(model, "GlobalAveragePool")


@pytest.mark.parametrize("opset, ceil_mode, count_include_pad, divisor", [
    (17, 0, 0, None), (17, 1, 0, None), (19, 0, 0, None), (19, 1, 0, None),
    (17, 1, 1, 8 * 7), (19, 0, 1, 8 * 7), (19, 1, 1, 8 * 7), (17, 0, 1, 400 * 400),
])
def test_padding_counts_as_onnxruntime_counts_it(opset, ceil_mode, count_include_pad, divisor):
    """Pads [1, 0, 2, 3] around 5x4 under a 400x400 window: onnxruntime divides by the 20
    inputs, or, counting padding, by the padded 8x7, except its opset 11-18 kernel with
    ceil_mode=0, which divides by the whole window."""
    model = pool_model("AveragePool", [5, 4], [400, 400], strides=[400, 400], pads=[1, 0, 2, 3], opset=opset,
                       ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    optimized = check(model, "GlobalAveragePool" if divisor is None else "ReduceSum")
    if divisor is not None:
        [stored] = [t for t in optimized.graph.initializer if "divisor" in t.name]
        assert onnx.numpy_helper.to_array(stored) == divisor


def test_window_equal_to_the_input_just_over_the_limit():
    model = pool_model("MaxPool", [317, 317], [317, 317], batch="1")
    check(model, "GlobalMaxPool", dim_values=(1,))


def test_three_spatial_dims_over_the_limit():
    model = pool_model("AveragePool", [3, 2, 4], [317, 317, 317], strides=[317, 317, 317], ceil_mode=1)
    check(model, "GlobalAveragePool")


def _message(model: onnx.ModelProto, node: str = "") -> tuple[bool, str]:
    found = inspect_pass(model, PASS)
    [finding] = found[node] if node else next(iter(found.values()))
    return finding.applies, finding.message


def test_near_misses_are_declined():
    # under the limit: TensorRT takes it as it is
    assert _message(pool_model("AveragePool", [7, 7], [316, 316], strides=[316, 316], ceil_mode=1)) == \
        (False, "window [316, 316] and strides [316, 316] are within TensorRT's pooling limits")
    # a window just shorter than the input: several outputs
    applies, message = _message(pool_model("MaxPool", [318, 318], [317, 317], batch="1", out=[2, 2],
                                           strides=[1, 1]))
    assert not applies and "shorter than the padded input (318) on spatial axis 0" in message
    # the padding makes the input longer than the window
    applies, message = _message(pool_model("AveragePool", [317, 317], [317, 317], batch="1", out=[2, 1],
                                           pads=[1, 0, 0, 0]))
    assert not applies and "shorter than the padded input (318)" in message
    applies, message = _message(pool_model("MaxPool", [5, 5], [400, 400], dilations=[2, 2], strides=[800, 800],
                                           ceil_mode=1))
    assert not applies and "dilations" in message
    applies, message = _message(pool_model("AveragePool", [5, 5], [400, 400], dtype="float16", strides=[400, 400],
                                           pads=[1, 1, 1, 1], count_include_pad=1))
    assert not applies and "not float32/float64" in message
    dynamic = parse("""g (float[N,2,H,W] x) => (float[N,2,1,1] y) {
      y = AveragePool<kernel_shape=[400,400], strides=[400,400], ceil_mode=1>(x) }""")
    applies, message = _message(dynamic)
    assert not applies and "not static" in message
    indices = parse("""g (float[1,2,5,5] x) => (float[1,2,1,1] y, int64[1,2,1,1] i) {
      y, i = MaxPool<kernel_shape=[400,400], strides=[400,400], ceil_mode=1>(x) }""")
    applies, message = _message(indices)
    assert not applies and "Indices" in message


def test_float16_without_padding_is_rewritten():
    model = pool_model("AveragePool", [5, 5], [400, 400], dtype="float16", strides=[400, 400], ceil_mode=1,
                       count_include_pad=1)
    optimized, _ = optimize_with(model, ["infer-shapes", PASS])
    assert op_counts(optimized)["GlobalAveragePool"] == 1


def test_limits_match_what_tensorrt_rtx_measured():
    assert pool_window_problem([316, 316]) is None and pool_window_problem([1, 99_999]) is None
    assert "volume 100489" in pool_window_problem([317, 317])
    assert pool_window_problem([99_999]) is None and pool_window_problem([100_000]) is not None
    assert pool_window_problem([1, 1, 31_622_775]) is None and pool_window_problem([1, 1, 31_622_776]) is not None
    assert "stride 100001" in pool_window_problem([3, 3], [1, 100_001])


def test_support_table_reports_the_window():
    model = pool_model("AveragePool", [7, 7], [2560, 2560], strides=[2560, 2560], ceil_mode=1, count_include_pad=1)
    [found] = check_with_table(model)
    assert found.op == "AveragePool" and "volume 6553600" in found.reason
    assert check_with_table(pool_model("AveragePool", [7, 7], [7, 7])) == []


class EfficientNetHead(torch.nn.Module):
    """The end of Hugging Face's EfficientNet: 1x1 conv, BN, SiLU, then
    ``nn.AvgPool2d(config.hidden_dim, ceil_mode=True)`` (hidden_dim 2560 for B7) over 7x7."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 16, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(16)
        self.pool = torch.nn.AvgPool2d(2560, ceil_mode=True)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.pool(torch.nn.functional.silu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture(scope="module")
def efficientnet_head(tmp_path_factory) -> onnx.ModelProto:
    torch.manual_seed(0)
    module = EfficientNetHead().eval()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-1, 1)
        module.bn.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("efficientnet") / "head.onnx"
    torch.onnx.export(module, (torch.randn(1, 8, 7, 7),), str(path), dynamo=False, do_constant_folding=False,
                      opset_version=17, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    model = onnx.load(str(path))
    [pool] = [n for n in model.graph.node if n.op_type == "AveragePool"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pool.attribute}
    assert attrs["kernel_shape"] == [2560, 2560] and attrs["ceil_mode"] == 1 and attrs.get("count_include_pad") == 1
    return model


def test_efficientnet_head_optimizes_exactly(efficientnet_head):
    optimized, _ = optimize_with(efficientnet_head)
    assert op_counts(optimized)["AveragePool"] == 0
    rng = np.random.default_rng(1)
    assert_same_outputs(efficientnet_head, optimized,
                        [{"x": rng.normal(size=(n, 8, 7, 7)).astype(np.float32)} for n in (1, 2)])


@pytest.mark.trt
def test_tensorrt_rtx_rejects_the_raw_pool_and_builds_the_result(efficientnet_head):
    if BACKEND is None:
        pytest.skip("no TensorRT backend imports")
    [found] = fk.check_trt(efficientnet_head)
    assert found.op == "AveragePool" and "maxKernelDimsProduct" in found.reason
    assert found.substitution.startswith(f"{PASS}:")
    with pytest.raises(ParseFailedError):
        fk.build(efficientnet_head, optimize=False, dynamic=["batch=1:1:2"])
    optimized = fk.optimize(efficientnet_head)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False, dynamic=["batch=1:1:2"]).engine.nbytes > 0


@pytest.mark.trt
@pytest.mark.parametrize("op, sizes, kernel, attrs", [
    ("MaxPool", [5, 5], [400, 400], {"strides": [400, 400], "ceil_mode": 1}),
    ("LpPool", [5, 5], [400, 400], {"strides": [400, 400], "p": 3}),
    ("AveragePool", [5, 4], [400, 400], {"strides": [400, 400], "pads": [1, 0, 2, 3], "count_include_pad": 1}),
    ("AveragePool", [6], [100_000], {"strides": [100_000], "ceil_mode": 1}),
])
def test_tensorrt_rtx_builds_every_form(op, sizes, kernel, attrs):
    if BACKEND is None:
        pytest.skip("no TensorRT backend imports")
    model = pool_model(op, sizes, kernel, batch="1", **attrs)
    assert fk.check_trt(model), "the raw pool should be rejected"
    optimized = fk.optimize(model)
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0


@pytest.mark.trt
def test_lint_reports_oversized_windows():
    """FK301 where the pass rewrites the pool; FK101 (the parser's reason) where it cannot."""
    if BACKEND is None:
        pytest.skip("no TensorRT backend imports")
    from fusekit.lint import LintConfig, lint_model

    def found(model):
        return {(f.code, f.op): f.message for f in lint_model(model, LintConfig()).findings}

    covering = found(pool_model("AveragePool", [7, 7], [2560, 2560], strides=[2560, 2560], ceil_mode=1,
                                count_include_pad=1))
    assert "GlobalAveragePool" in covering[("FK301", "AveragePool")] and ("FK101", "AveragePool") not in covering
    short = found(pool_model("MaxPool", [318, 318], [317, 317], batch="1", out=[2, 2], strides=[1, 1]))
    assert "maxKernelDimsProduct" in short[("FK101", "MaxPool")]
