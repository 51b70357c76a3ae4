"""Optimization profiles (fusekit/profiles.py): --dynamic parsing, the stored JSON, resolution."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import onnx
import pytest

from fusekit import profiles
from fusekit.errors import InputError
from fusekit.profiles import DimRange, RangeSpec

SCHEMA = json.loads((Path(profiles.__file__).parent / "schemas" / "profiles.schema.json").read_text())

ENCODER = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[batch,seq] input_ids, int64[batch,seq] mask, float[?,3,H,W] images) => (int64[batch,seq] y) {
  y = Add(input_ids, mask)
}"""


def inputs_of(text: str):
    return profiles.model_inputs(onnx.parser.parse_model(text))


@pytest.mark.parametrize("text, expected", [
    ("batch=1:8:32", RangeSpec("batch", None, DimRange(1, 8, 32))),
    (" seq = 1 : 128 : 512", RangeSpec("seq", None, DimRange(1, 128, 512))),
    ("images:0=1:8:32", RangeSpec("images", 0, DimRange(1, 8, 32))),
    ("input_1:0:2=4:4:4", RangeSpec("input_1:0", 2, DimRange(4, 4, 4))),  # TF-style input name
    ("a:b=0:0:1", RangeSpec("a:b", None, DimRange(0, 0, 1))),  # not an axis: a dim name with a colon
])
def test_parse_dynamic(text, expected):
    spec = profiles.parse_dynamic(text)
    assert spec == expected
    assert profiles.parse_dynamic(f"{spec.target}={spec.range}") == spec  # flag() round-trips
    assert spec.flag() == f"--dynamic {spec.target}={spec.range}"


@pytest.mark.parametrize("text, message", [
    ("batch", "expected DIM=MIN:OPT:MAX"),
    ("batch=1:8", "expected DIM=MIN:OPT:MAX"),
    ("=1:8:32", "expected DIM=MIN:OPT:MAX"),
    ("batch=a:b:c", "expected DIM=MIN:OPT:MAX"),
    ("batch=-1:8:32", "expected DIM=MIN:OPT:MAX"),
    ("batch=8:1:32", "0 <= MIN <= OPT <= MAX, got 8:1:32"),
    ("batch=1:64:32", "0 <= MIN <= OPT <= MAX"),
])
def test_parse_dynamic_rejects(text, message):
    with pytest.raises(InputError, match=message):
        profiles.parse_dynamic(text)


def test_same_dim_twice():
    assert len(profiles.parse_dynamic_args(["batch=1:8:32", "batch=1:8:32"])) == 1
    with pytest.raises(InputError, match="--dynamic batch: given twice"):
        profiles.parse_dynamic_args(["batch=1:8:32", "batch=1:4:32"])


def test_json_round_trip_through_model_metadata_and_schema():
    model = onnx.parser.parse_model(ENCODER)
    model.metadata_props.add(key="other", value="kept")
    specs = profiles.parse_dynamic_args(["batch=1:8:32", "images:2=224:640:1280"])
    profiles.write_profiles(model, specs)
    stored = json.loads(next(p.value for p in model.metadata_props if p.key == profiles.PROFILES_KEY))
    jsonschema.validate(stored, SCHEMA)
    assert stored == {"version": 1, "ranges": [{"dim": "batch", "min": 1, "opt": 8, "max": 32},
                                               {"input": "images", "axis": 2, "min": 224, "opt": 640, "max": 1280}]}
    reloaded = onnx.load_from_string(model.SerializeToString())
    assert profiles.read_profiles(reloaded) == specs
    profiles.write_profiles(reloaded, specs[:1])  # replaces, never duplicates
    assert [p.key for p in reloaded.metadata_props] == ["other", profiles.PROFILES_KEY]
    profiles.write_profiles(reloaded, [])
    assert [p.key for p in reloaded.metadata_props] == ["other"]
    assert profiles.read_profiles(reloaded) == []


@pytest.mark.parametrize("text, message", [
    ("not json", "not valid JSON"),
    ('{"ranges": []}', 'expected {"version": 1'),
    ('{"version": 2, "ranges": []}', 'expected {"version": 1'),
    ('{"version": 1, "ranges": [{"dim": "b", "min": 1, "opt": 2}]}', "ranges\\[0\\]: needs integer min, opt and max"),
    ('{"version": 1, "ranges": [{"dim": "b", "min": 3, "opt": 2, "max": 4}]}', "0 <= MIN <= OPT <= MAX"),
    ('{"version": 1, "ranges": [{"min": 1, "opt": 2, "max": 4}]}', 'either "dim"'),
    ('{"version": 1, "ranges": [{"dim": "b", "input": "x", "axis": 0, "min": 1, "opt": 2, "max": 4}]}', 'either "dim"'),
])
def test_bad_stored_json_is_an_input_error_and_fails_the_schema(text, message):
    model = onnx.parser.parse_model(ENCODER)
    model.metadata_props.add(key=profiles.PROFILES_KEY, value=text)
    with pytest.raises(InputError, match=f"m.onnx: metadata fusekit.profiles.*{message}"):
        profiles.read_profiles(model, "m.onnx")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return
    if "MIN <= OPT" not in message:  # order of sizes is beyond JSON schema
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, SCHEMA)


def test_resolve_named_and_axis_ranges():
    inputs = inputs_of(ENCODER)
    assert inputs == [("input_ids", ["batch", "seq"]), ("mask", ["batch", "seq"]), ("images", [None, 3, "H", "W"])]
    specs = profiles.parse_dynamic_args(["batch=1:2:4", "seq=8:16:32", "images:0=1:1:2", "H=32:64:64",
                                         "W=32:64:128", "images:3=16:16:16"])  # axis wins over name
    res = profiles.resolve(inputs, specs)
    assert res.complete and not res.unused
    assert res.shapes == {"input_ids": ([1, 8], [2, 16], [4, 32]), "mask": ([1, 8], [2, 16], [4, 32]),
                          "images": ([1, 3, 32, 16], [1, 3, 64, 16], [2, 3, 64, 16])}
    assert res.to_json()[0] == {"input": "input_ids", "min": [1, 8], "opt": [2, 16], "max": [4, 32]}


def test_every_dynamic_dim_without_a_range_is_listed_with_a_suggestion():
    res = profiles.resolve(inputs_of(ENCODER), profiles.parse_dynamic_args(["batch=1:2:4"]))
    assert not res.complete and "input_ids" not in res.shapes
    assert [(m.name, m.where, m.suggestion) for m in res.missing] == [
        ("seq", (("input_ids", 1), ("mask", 1)), "--dynamic seq=1:8:32"),
        (None, (("images", 0),), "--dynamic images:0=1:8:32"),
        ("H", (("images", 2),), "--dynamic H=1:8:32"),
        ("W", (("images", 3),), "--dynamic W=1:8:32")]
    with pytest.raises(InputError) as info:
        profiles.require_complete(res, "m.onnx")
    message = str(info.value)
    assert message.startswith("m.onnx: 4 dynamic dims without an optimization profile range")
    for part in ("dim 'seq' (input_ids axis 1, mask axis 1): add --dynamic seq=1:8:32",
                 "unnamed dim (images axis 0): add --dynamic images:0=1:8:32", "--dynamic H=1:8:32"):
        assert part in message


def test_static_model_needs_no_profile():
    res = profiles.resolve(inputs_of('<ir_version: 8, opset_import: ["" : 17]> g (float[2,3] x) => (float[2,3] y) '
                                     '{ y = Relu(x) }'), [])
    assert res.complete and res.shapes == {"x": ([2, 3], [2, 3], [2, 3])}


@pytest.mark.parametrize("given, message", [
    ("nope=1:2:3", "the model's inputs have no dim named 'nope' \\(dynamic dims: batch, seq, H, W\\)"),
    ("missing:0=1:2:3", "the model has no input 'missing' \\(inputs: images, input_ids, mask\\)"),
    ("input_ids:5=1:2:3", "input 'input_ids' has rank 2, no axis 5"),
    ("images:1=1:2:3", "axis 1 of input 'images' is fixed at 3"),
])
def test_ranges_that_apply_nowhere(given, message):
    spec = profiles.parse_dynamic(given)
    res = profiles.resolve(inputs_of(ENCODER), [spec])
    assert [s for s, _ in res.unused] == [spec]
    with pytest.raises(InputError, match=f"--dynamic {spec.target}={spec.range}: {message}"):
        profiles.require_complete(res, "m.onnx", given=[spec])
    # the same range stored in the model (e.g. the dim was fixed since) is not the user's error
    with pytest.raises(InputError, match="dynamic dims? without"):
        profiles.require_complete(res, "m.onnx", given=[])


def test_fixed_axis_with_its_own_size_is_accepted():
    res = profiles.resolve(inputs_of(ENCODER), [profiles.parse_dynamic("images:1=3:3:3")])
    assert not res.unused


def test_merge_prefers_given_ranges():
    stored = profiles.parse_dynamic_args(["batch=1:8:32", "seq=1:16:64"])
    merged = profiles.merge(stored, profiles.parse_dynamic_args(["batch=1:2:4"]))
    assert {s.key: str(s.range) for s in merged} == {"batch": "1:2:4", "seq": "1:16:64"}


def test_unknown_rank_and_initializer_inputs():
    model = onnx.parser.parse_model("""<ir_version: 3, opset_import: ["" : 9]>
        g (float x, float[2] w) => (float[2] y) <float[2] w = {1.0, 2.0}> { y = Add(x, w) }""")
    del model.graph.input[0].type.tensor_type.shape.dim[:]
    model.graph.input[0].type.tensor_type.ClearField("shape")
    inputs = profiles.model_inputs(model)
    assert inputs == [("x", None)]  # w is an initializer listed as an input (IR 3)
    res = profiles.resolve(inputs, [])
    with pytest.raises(InputError, match="input 'x' has no shape \\(unknown rank\\)"):
        profiles.require_complete(res, "m.onnx")
