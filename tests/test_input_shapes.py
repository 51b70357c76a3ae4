"""Input shape overrides (``input_shapes``, ``--input-shape``), named dims (``dims``, ``--dim``),
profile ranges recorded for ``fusekit build`` (``dynamic``, ``--dynamic``) and the shape
problems TensorRT would refuse, reported as warnings.

Nothing is fixed that the user did not name: every other dim stays as declared.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fusekit import api, profiles
from fusekit.cli import main
from fusekit.errors import InputError
from fusekit.shapes import parse_dim, parse_dims, parse_shape
from tests.helpers import assert_same_outputs, op_counts, optimize_with, parse

TWO_INPUTS = """g (int64[batch,seq] ids, int64[batch,seq] mask, float[3,H] w) => (int64[batch,seq] y, float[3,H] v) <int64 one = {1}> {
  s = Shape(ids)
  n = Gather<axis = 0>(s, one)
  c = Cast<to = 7>(n)
  a = Add(ids, mask)
  y = Mul(a, c)
  v = Relu(w)
}"""


def dims_of(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def io_dims(model: onnx.ModelProto) -> dict[str, list]:
    return {vi.name: dims_of(vi) for vi in [*model.graph.input, *model.graph.output]}


def test_fixing_named_dims_fixes_them_everywhere_and_nothing_else():
    model = parse(TWO_INPUTS)
    optimized, _ = optimize_with(model, dims={"batch": 2, "seq": 5})
    assert io_dims(optimized) == {"ids": [2, 5], "mask": [2, 5], "w": [3, "H"], "y": [2, 5], "v": [3, "H"]}
    assert op_counts(optimized)["Shape"] == 0
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 4, (2, 5)), "mask": rng.integers(0, 4, (2, 5)),
             "w": rng.standard_normal((3, 7)).astype(np.float32)}
    assert_same_outputs(model, optimized, [feeds])


def test_an_input_shape_fixes_that_input_only():
    model = parse(TWO_INPUTS)
    optimized, _ = optimize_with(model, input_shapes={"ids": [2, 5]})
    got = io_dims(optimized)
    assert got["ids"] == [2, 5] and got["mask"] == ["batch", "seq"]  # mask was not named: still dynamic
    rng = np.random.default_rng(2)
    feeds = {"ids": rng.integers(0, 4, (2, 5)), "mask": rng.integers(0, 4, (2, 5)),
             "w": rng.standard_normal((3, 2)).astype(np.float32)}
    assert_same_outputs(model, optimized, [feeds])


def test_names_replaced_in_every_input_are_replaced_in_the_outputs():
    model = parse(TWO_INPUTS)
    optimized, _ = optimize_with(model, input_shapes={"ids": [2, 5], "mask": [2, 5]})
    assert io_dims(optimized)["y"] == [2, 5]
    assert op_counts(optimized)["Shape"] == 0


def test_an_input_shape_can_rename_a_dim_and_keep_it_dynamic():
    model = parse(TWO_INPUTS)
    optimized, _ = optimize_with(model, input_shapes={"ids": ["B", 5], "mask": ["B", 5]})
    got = io_dims(optimized)
    assert got["ids"] == ["B", 5] and got["y"] == ["B", 5]
    rng = np.random.default_rng(1)
    for b in (1, 3):
        feeds = {"ids": rng.integers(0, 4, (b, 5)), "mask": rng.integers(0, 4, (b, 5)),
                 "w": rng.standard_normal((3, 2)).astype(np.float32)}
        assert_same_outputs(model, optimized, [feeds])


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shapes": {"idz": [2, 5]}}, "no such input (inputs: ids [batch,seq], mask [batch,seq], w [3,H])"),
    ({"input_shapes": {"ids": [2, 5, 1]}}, "rank 3 given, the model declares rank 2"),
    ({"input_shapes": {"w": [4, 7]}}, "axis 0 is fixed at 3 in the model, 4 given"),
    ({"input_shapes": {"ids": [0, 5]}}, "a dim is a size >= 1, a name or None"),
    ({"input_shapes": {"ids": "2x5"}}, "expected a list of dims"),
    ({"input_shapes": {"ids": [2, 5], "mask": [3, 5]}}, "give the dim 'batch' different sizes"),
    ({"dims": {"btch": 2}}, "no input has a dim named 'btch' (dim names: batch, seq, H;"),
    ({"dims": {"batch": 0}}, "the size must be an integer >= 1"),
    ({"dims": {"batch": 2}, "input_shapes": {"ids": [3, 5]}}, "fixed at 2 by --dim batch=2, 3 given"),
    ({"dims": {"batch": 2}, "dynamic": ["batch=1:2:4"]}, "'batch' is fixed at 2 by --dim batch=2"),
    ({"dynamic": ["bach=1:2:4"]}, "no dim named 'bach' (dynamic dims: batch, seq, H)"),
    ({"dynamic": ["w:0=1:2:4"]}, "axis 0 of input 'w' is fixed at 3"),
])
def test_clear_errors_naming_what_exists(kwargs, message):
    with pytest.raises(InputError) as info:
        api.optimize(parse(TWO_INPUTS), **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("images:1x3x640x640", ("images", [1, 3, 640, 640])),
    ("images:batchx3x?x?", ("images", ["batch", 3, None, None])),
    ("input:0:2x3", ("input:0", [2, 3])),  # the last colon separates the dims
])
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("text", ["images", "images:", "images:1x-1", "images:0x3", "images:1x3x"])
def test_parse_shape_rejects(text):
    with pytest.raises(InputError, match="--input-shape"):
        parse_shape(text)


def test_parse_dims():
    assert parse_dim("batch=8") == ("batch", 8)
    assert parse_dims(["batch=8", "seq=128", "batch=8"]) == {"batch": 8, "seq": 128}
    for bad in ("batch", "batch=", "batch=0", "batch=x", "=3"):
        with pytest.raises(InputError, match="--dim"):
            parse_dim(bad)
    with pytest.raises(InputError, match="given twice"):
        parse_dims(["batch=8", "batch=4"])


def stored_ranges(model: onnx.ModelProto) -> list:
    return sorted((s.key, s.axis, str(s.range)) for s in profiles.read_profiles(model))


def test_ranges_are_recorded_for_fusekit_build_and_dims_stay_dynamic():
    model = parse(TWO_INPUTS)
    optimized, report = optimize_with(model, dynamic=["batch=1:4:8", "w:1=1:2:16"])
    assert stored_ranges(optimized) == [("batch", None, "1:4:8"), ("w", 1, "1:2:16")]
    assert io_dims(optimized)["ids"] == ["batch", "seq"]
    assert any("'seq'" in w and "--dynamic seq=" in w for w in report.warnings)  # seq has no range yet
    resolution = profiles.resolve(profiles.model_inputs(optimized), profiles.read_profiles(optimized))
    assert [m.name for m in resolution.missing] == ["seq"]
    # ranges given later replace stored ones of the same dim; the others stay
    again, _ = optimize_with(optimized, dynamic=["batch=2:2:2", "seq=1:8:64"])
    assert stored_ranges(again) == [("batch", None, "2:2:2"), ("seq", None, "1:8:64"), ("w", 1, "1:2:16")]


def test_stored_ranges_of_a_dim_fixed_later_are_dropped_with_a_warning():
    recorded, _ = optimize_with(parse(TWO_INPUTS), dynamic=["batch=1:4:8", "seq=1:8:64"])
    fixed, report = optimize_with(recorded, dims={"batch": 2})
    assert stored_ranges(fixed) == [("seq", None, "1:8:64")]
    assert any("stored profile range batch=1:4:8 dropped" in w for w in report.warnings)


def test_metadata_is_untouched_without_ranges_or_overrides():
    model = parse(TWO_INPUTS)
    onnx.helper.set_model_props(model, {"fusekit.profiles": "not json", "author": "me"})
    optimized, report = optimize_with(model)
    assert {(p.key, p.value) for p in optimized.metadata_props} == {("fusekit.profiles", "not json"), ("author", "me")}
    assert not any("profiles" in w for w in report.warnings)


def test_cli_dim_input_shape_and_dynamic(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(parse(TWO_INPUTS), path)
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(path), "-o", str(out), "--dim", "batch=2", "--input-shape", "w:3x7",
                 "--dynamic", "seq=1:8:64", "--verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = onnx.load(out)
    assert io_dims(saved) == {"ids": [2, "seq"], "mask": [2, "seq"], "w": [3, 7], "y": [2, "seq"], "v": [3, 7]}
    assert stored_ranges(saved) == [("seq", None, "1:8:64")]
    assert report["verify"]["ok"]
    for bad, message in ((["--dim", "batch"], "--dim 'batch': expected NAME=SIZE"),
                         (["--input-shape", "nope:2x5"], "the model has no such input"),
                         (["--dynamic", "batch=8:1:32"], "0 <= MIN <= OPT <= MAX")):
        assert main(["optimize", str(path), "-o", str(tmp_path / "bad.onnx"), *bad]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad.onnx").exists()


# -- what TensorRT refuses --------------------------------------------------------------

@pytest.mark.parametrize("source, why", [
    ("t = Cast<to = 7>(v)", "input 1 ('t') depends on runtime data (values of input 'v'), not only on shapes "
                            "and constants: TensorRT's parser rejects shapes computed from float values"),
    ("t = Identity(i)", "input 1 ('t') depends on runtime data (values of input 'i'), not only on shapes and "
                        "constants: a shape-tensor input, which fusekit build cannot give value ranges yet"),
    ("t = Concat<axis = 0>(r, r)", "input 1 ('t') depends on runtime data (values of input 'ids'), not only "
                                   "on shapes and constants: TensorRT must build it as a data-dependent shape"),
])
def test_reshape_from_runtime_data_is_reported(source, why):
    """Measured with tensorrt_rtx 1.7: the float case fails to parse, the integer one builds."""
    model = parse(f"""g (float[N,12] x, float[2] v, int64[2] i, int64[K] ids) => (float[A,B] y) {{
      r = ReduceSum<keepdims = 1>(ids)
      {source}
      y = Reshape(x, t)
    }}""")
    _, report = api.optimize(model, passes=["infer-shapes"], return_report=True)
    assert any(why in w for w in report.warnings), report.warnings


def test_reshape_from_shapes_is_not_reported():
    model = parse("""g (float[N,12] x, float[M,3] z) => (float[A,3] y) {
      s = Shape(z)
      y = Reshape(x, s)
    }""")
    _, report = api.optimize(model, return_report=True)
    assert report.warnings == []


def test_zero_and_negative_input_dims_are_reported():
    model = parse("""g (float[N,4] x) => (float[N,4] y) { y = Relu(x) }""")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    _, report = api.optimize(model, return_report=True)
    assert any("input 'x' axis 0 is declared 0" in w and "--input-shape x:dim0x4" in w for w in report.warnings)
    fixed, _ = optimize_with(model, input_shapes={"x": ["batch", 4]})  # a 0 can be overridden
    assert dims_of(fixed.graph.input[0]) == ["batch", 4]


def test_output_of_unknown_rank_gets_the_inferred_one():
    model = parse("""g (float[N,4] x) => (float[N,4] y) { y = Relu(x) }""")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    optimized = api.optimize(model)
    assert dims_of(optimized.graph.output[0]) == ["N", 4]
