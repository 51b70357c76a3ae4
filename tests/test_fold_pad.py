"""fold-pad: a constant-mode Pad before Conv / AveragePool / MaxPool becomes their own pads.

Property: x is [N, C, 1-3 spatial dims]; the Pad is written in the attribute form
(opset 10) or the input form (opset 11, 13, 17, and 18 with an ``axes`` input), pads only
spatial axes by 0-2 on each side; the reader is a Conv (random kernel, own pads, strides,
dilations, groups incl. depthwise, ``auto_pad`` VALID or NOTSET, bias or none, pad value 0),
an AveragePool (``count_include_pad`` 1, or 0 with no own pads) or a MaxPool (pad value -inf,
or 0 after a Relu, or the min of a Clip); pools get a kernel larger than the merged pads.
After the pass no Pad is left, outputs match at N = 1 and N = 3 and ``inspect`` says so.
Near misses: a non-zero value before Conv, a value that could win a MaxPool window, an
AveragePool with its own pads and ``count_include_pad=0``, reflect mode, channel pads,
``ceil_mode=1``, merged pads reaching the kernel, the padded tensor read elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from hypothesis import given, note, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from tests.helpers import parse
from tests.rewrite_checks import check_pass, dims, header, verdicts

PASS = "fold-pad"
SOME = settings(max_examples=max(settings().max_examples // 2, 1))
NEAR_MISSES = ["value before Conv", "value could win", "own pads uncounted", "reflect", "channel pads",
               "ceil_mode", "pads reach kernel", "read elsewhere"]


def _ints(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def _floats(rng, count: int) -> str:
    return ", ".join(str(float(v)) for v in np.round(rng.standard_normal(count), 3))


@st.composite
def padded(draw, near_miss: str | None = None):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    opset = draw(st.sampled_from([10, 11, 13, 17, 18]))
    spatial = draw(st.integers(1, 3))
    op = draw(st.sampled_from(["Conv", "AveragePool", "MaxPool"]))
    op = {"value before Conv": "Conv", "value could win": "MaxPool", "own pads uncounted": "AveragePool",
          "ceil_mode": draw(st.sampled_from(["AveragePool", "MaxPool"])),
          "pads reach kernel": draw(st.sampled_from(["AveragePool", "MaxPool"]))}.get(near_miss, op)
    channels = draw(st.integers(1, 3))
    begin = [draw(st.integers(0, 2)) for _ in range(spatial)]
    end = [draw(st.integers(0, 2)) for _ in range(spatial)]
    if not any(begin + end):
        begin[0] = 1
    channel_pad = 1 if near_miss == "channel pads" else 0
    own = [draw(st.integers(0, 1)) for _ in range(2 * spatial)]
    attrs, inits, body = [], [], []
    producer = draw(st.sampled_from(["Relu", "Clip", "none"]))
    value = 0.0
    if op == "MaxPool":
        value = draw(st.sampled_from(["-inf", "bound"]))
        if near_miss == "value could win":
            producer, value = draw(st.sampled_from([("none", 0.0), ("Relu", 0.5)]))
        elif value == "bound":
            producer = draw(st.sampled_from(["Relu", "Clip"]))
            value = -0.25 if producer == "Clip" else 0.0
    elif near_miss == "value before Conv":
        value = draw(st.sampled_from([1.0, -0.5]))
    if op == "Conv":
        kernel = [draw(st.integers(1, 3)) for _ in range(spatial)]
        group = draw(st.sampled_from([1, channels + channel_pad]))
        cout = (channels + channel_pad) * draw(st.integers(1, 2)) if group > 1 else draw(st.integers(1, 3))
        strides = [draw(st.integers(1, 2)) for _ in range(spatial)]
        dilations = [draw(st.integers(1, 2)) for _ in range(spatial)]
        weight = [cout, (channels + channel_pad) // group] + kernel
        inits.append(f"float[{dims(weight)}] w = {{{_floats(rng, math.prod(weight))}}}")
        operands = ["p", "w"]
        if draw(st.booleans()):
            inits.append(f"float[{cout}] bias = {{{_floats(rng, cout)}}}")
            operands.append("bias")
        valid = draw(st.integers(0, 3)) == 0
        if valid:
            own = [0] * (2 * spatial)
            attrs.append('auto_pad = "VALID"')
        else:
            attrs.append(f"pads = [{_ints(own)}]")
        attrs += [f"kernel_shape = [{_ints(kernel)}]", f"strides = [{_ints(strides)}]",
                  f"dilations = [{_ints(dilations)}]", f"group = {group}"]
        out_channels = cout
    else:
        dilations = [1] * spatial
        strides = [draw(st.integers(1, 2)) for _ in range(spatial)]
        if op == "AveragePool":
            counted = near_miss != "own pads uncounted" and draw(st.booleans())
            if near_miss == "own pads uncounted":
                own[0] = 1
            elif not counted:
                own = [0] * (2 * spatial)
            attrs.append(f"count_include_pad = {int(counted)}")
        merged = [own[i] + begin[i] for i in range(spatial)], [own[spatial + i] + end[i] for i in range(spatial)]
        kernel = [max(merged[0][i], merged[1][i]) + draw(st.integers(1, 2)) for i in range(spatial)]
        if near_miss == "pads reach kernel":
            own = [0] * (2 * spatial)
            kernel = [max(begin[i], end[i], 1) for i in range(spatial)]
            begin[0] = kernel[0]
        attrs += [f"pads = [{_ints(own)}]", f"kernel_shape = [{_ints(kernel)}]", f"strides = [{_ints(strides)}]"]
        if near_miss == "ceil_mode":
            attrs.append("ceil_mode = 1")
        operands = ["p"]
        out_channels = channels + channel_pad
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    size = [max(e - b - n - o1 - o2, 0) + draw(st.integers(1, 4))
            for e, b, n, o1, o2 in zip(effective, begin, end, own[:spatial], own[spatial:])]
    shape = ["N", channels] + size
    padded_size = [s + b + n for s, b, n in zip(size, begin, end)]
    ceil = near_miss == "ceil_mode"
    out = []
    for i in range(spatial):
        span = padded_size[i] + own[i] + own[spatial + i] - effective[i]
        # ceil_mode sizes differ between onnx's inference and runtimes: left symbolic
        out.append(f"o{i}" if ceil else span // strides[i] + 1)
    # the Pad
    full_begin, full_end = [0, 0] + begin, [0, channel_pad] + end
    mode = "reflect" if near_miss == "reflect" else "constant"
    if mode == "reflect":
        size = [max(s, max(b, n) + 1) for s, b, n in zip(size, begin, end)]
        shape, padded_size = ["N", channels] + size, [s + b + n for s, b, n in zip(size, begin, end)]
        out = [(p + own[i] + own[spatial + i] - effective[i]) // strides[i] + 1 for i, p in enumerate(padded_size)]
    value_text = "-12345.0" if value == "-inf" else str(value)
    mode_attr = f'mode = "{mode}"' if mode != "constant" or draw(st.booleans()) else ""
    if opset == 10:
        pad_attrs = ", ".join(a for a in (mode_attr, f"pads = [{_ints(full_begin + full_end)}]",
                                          f"value = {value_text}" if value != 0.0 else "") if a)
        body.append(f"  [pad] p = Pad<{pad_attrs}>(a)")
    else:
        operands_pad = ["a", "pads"]
        if opset >= 18 and draw(st.booleans()) and not channel_pad:
            axes = list(range(2, 2 + spatial))
            spelled = [ax - (2 + spatial) if draw(st.booleans()) else ax for ax in axes]
            inits.append(f"int64[{2 * spatial}] pads = {{{_ints(begin + end)}}}")
            inits.append(f"int64[{spatial}] axes = {{{_ints(spelled)}}}")
            operands_pad += ["cv", "axes"]
            inits.append(f"float cv = {{{value_text}}}")
        else:
            inits.append(f"int64[{2 * len(shape)}] pads = {{{_ints(full_begin + full_end)}}}")
            if value != 0.0 or draw(st.booleans()):
                inits.append(f"float cv = {{{value_text}}}")
                operands_pad.append("cv")
        mode_part = f"<{mode_attr}>" if mode_attr else ""
        body.append(f"  [pad] p = Pad{mode_part}({', '.join(operands_pad)})")
    source = "x"
    if producer == "Relu":
        body.insert(0, "  a = Relu(x)")
    elif producer == "Clip":
        if opset >= 11:
            inits += ["float lo = {-0.25}", "float hi = {1.5}"]
            body.insert(0, "  a = Clip(x, lo, hi)")
        else:
            body.insert(0, "  a = Clip<min = -0.25, max = 1.5>(x)")
    else:
        body.insert(0, "  a = Identity(x)" if near_miss == "value could win" else "  a = Neg(x)")
    del source
    body.append(f"  y = {op}<{', '.join(attrs)}>({', '.join(operands)})")
    outputs = f"float[{dims(['N', out_channels] + out)}] y"
    if near_miss == "read elsewhere":
        body.append("  z = Sigmoid(p)")
        outputs += f", float[{dims(['N', channels + channel_pad] + padded_size)}] z"
    text = header(opset) + f"g (float[{dims(shape)}] x) => ({outputs}) <{', '.join(inits)}> {{\n" + \
        "\n".join(body) + "\n}"
    model = onnx.parser.parse_model(text)
    if value == "-inf":
        _set_minus_inf(model)
    onnx.checker.check_model(model, full_check=True)
    return model, text, op


def _set_minus_inf(model: onnx.ModelProto) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == "cv":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(-np.inf, np.float32), "cv"))
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "Pad" and a.name == "value":
                a.f = -np.inf


@SOME
@given(padded())
def test_pad_folds_into_the_reader(case):
    model, text, op = case
    note(text)
    optimized = check_pass(model, PASS, expect={"Pad": 0, op: 1})
    applies, message = verdicts(model, PASS)["pad"]
    assert applies and f"folded into the {op}'s pads" in message, message
    (node,) = [n for n in optimized.graph.node if n.op_type == op]
    assert all(a.s != b"VALID" for a in node.attribute if a.name == "auto_pad")


@SOME
@given(st.sampled_from(NEAR_MISSES).flatmap(lambda why: st.tuples(st.just(why), padded(near_miss=why))))
def test_near_misses_keep_the_pad(case):
    why, (model, text, op) = case
    note(text)
    check_pass(model, PASS, unchanged=True)
    applies, message = verdicts(model, PASS)["pad"]
    expected = {"value before Conv": "is not 0", "value could win": "could be the max of a window",
                "own pads uncounted": "count_include_pad=0 with pads of its own", "reflect": "is not constant",
                "channel pads": "pads the batch or channel axis", "ceil_mode": "ceil_mode=1",
                "pads reach kernel": "would reach the kernel", "read elsewhere": "is also read by Sigmoid"}[why]
    assert not applies and expected in message, message


def test_maxpool_indices_output_in_use_keeps_the_pad():
    model = parse("g (float[N,1,5,5] x) => (float[N,1,2,2] y, int64[N,1,2,2] i) <int64[8] pads = {0, 0, 1, 1, 0, 0, 0, 0}> {\n"
                  " a = Relu(x)\n [pad] p = Pad(a, pads)\n y, i = MaxPool<kernel_shape = [3, 3], strides = [2, 2]>(p)\n}")
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["pad"] == (False, "the MaxPool's Indices output is used")


def test_negative_pads_crop_and_are_kept():
    model = parse("g (float[N,1,5,5] x) => (float[N,2,2,2] y) <int64[8] pads = {0, 0, -1, -1, 0, 0, 0, 0},"
                  " float[2,1,3,3] w = {" + ", ".join(["0.5"] * 18) + "}> {\n"
                  " [pad] p = Pad(x, pads)\n y = Conv<kernel_shape = [3, 3]>(p, w)\n}")
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["pad"][1].startswith("negative pads")


def test_same_auto_pad_keeps_the_pad():
    model = parse("g (float[N,1,5,5] x) => (float[N,2,6,6] y) <int64[8] pads = {0, 0, 1, 1, 0, 0, 0, 0},"
                  " float[2,1,3,3] w = {" + ", ".join(["0.5"] * 18) + "}> {\n"
                  ' [pad] p = Pad(x, pads)\n y = Conv<kernel_shape = [3, 3], auto_pad = "SAME_UPPER">(p, w)\n}')
    check_pass(model, PASS, unchanged=True)
    assert verdicts(model, PASS)["pad"] == (False, "the Conv uses auto_pad=SAME_UPPER")


def test_zero_pad_then_conv_matches_torch_zeropad2d_export():
    """nn.ZeroPad2d((1, 2, 0, 1)) then a 3x3 Conv with padding 1: pads [1, 1, 1+0, 1+1]... on (H, W)."""
    model = parse(header(14) + "g (float[N,2,6,6] x) => (float[N,3,7,9] y) <int64[8] pads = {0, 0, 0, 1, 0, 0, 1, 2},"
                  " float[3,2,3,3] w = {" + ", ".join(str(i % 5 - 2) for i in range(54)) + "}> {\n"
                  " [pad] p = Pad(x, pads)\n y = Conv<kernel_shape = [3, 3], pads = [1, 1, 1, 1]>(p, w)\n}")
    optimized = check_pass(model, PASS, expect={"Pad": 0})
    (conv,) = optimized.graph.node
    assert [list(a.ints) for a in conv.attribute if a.name == "pads"] == [[1, 2, 2, 3]]
