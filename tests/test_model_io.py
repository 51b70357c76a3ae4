"""Loading and saving: what is preserved, what is never copied or touched, external data."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_graphsurgeon.ir.tensor import LazyValues

from fusekit import api
from fusekit.cli import main
from fusekit.errors import InputError
from fusekit.model_io import MappedValues, load_model, save_model, to_model_proto
from fusekit.model_io.save import atomic_write
from fusekit.verify import session

RICH = """
<ir_version: 8, opset_import: ["" : 17, "com.acme" : 2, "local" : 1], producer_name: "tests",
 producer_version: "1.0", domain: "ai.example", model_version: 7, doc_string: "model doc">
g (float[N,4] x) => (float[N,4] y) <float[4] w = {1.0, 2.0, 3.0, 4.0}> {
  t = Identity(x)
  u = local.Double(t)
  v = com.acme.Thing(u)
  y = Mul(v, w)
}
<domain: "local", opset_import: ["" : 17]>
Double (a) => (b) { b = Add(a, a) }
"""


def rich_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(RICH)
    onnx.helper.set_model_props(model, {"author": "me", "fusekit.profiles": "{}"})
    model.graph.doc_string = "graph doc"
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("u", onnx.TensorProto.FLOAT, ["N", 4]))
    return model


def test_roundtrip_keeps_metadata_opsets_functions_docs_and_custom_domains():
    model = rich_model()
    loaded = load_model(model)
    out = to_model_proto(loaded.graph, loaded.shell)
    assert {(p.key, p.value) for p in out.metadata_props} == {("author", "me"), ("fusekit.profiles", "{}")}
    assert (out.doc_string, out.domain, out.model_version) == ("model doc", "ai.example", 7)
    assert (out.producer_name, out.producer_version, out.ir_version) == ("tests", "1.0", 8)
    assert {(o.domain, o.version) for o in out.opset_import} == {("", 17), ("com.acme", 2), ("local", 1)}
    assert [f.name for f in out.functions] == ["Double"]
    assert out.graph.doc_string == "graph doc"
    assert "u" in {vi.name for vi in out.graph.value_info}
    assert [n.op_type for n in out.graph.node] == ["Identity", "Double", "Thing", "Mul"]


def test_optimize_never_modifies_a_model_proto_it_is_given():
    model = rich_model()
    before = model.SerializeToString()
    optimized = api.optimize(model)
    assert model.SerializeToString() == before
    assert [n.op_type for n in optimized.graph.node] == ["Double", "Thing", "Mul"]
    assert {(p.key, p.value) for p in optimized.metadata_props} >= {("author", "me")}


def big_weight_model(n: int = 512) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n,)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["t"]), onnx.helper.make_node("MatMul", ["t", "w"], ["m"]),
         onnx.helper.make_node("Add", ["m", "b"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", n])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", n])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def test_loading_does_not_materialize_weights(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(big_weight_model(), path)
    loaded = load_model(path)
    w = loaded.graph.tensors()["w"]
    assert isinstance(w._values, LazyValues)
    api.run(path)  # a whole run reads no weight it does not rewrite
    assert isinstance(load_model(path).graph.tensors()["w"]._values, LazyValues)


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> None:
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=1024)


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_external_data_in_and_out_memory_mapped_and_input_untouched(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    model = big_weight_model()
    save_external(model, src / "m.onnx")
    before = tree_digest(src)
    loaded = load_model(src / "m.onnx")
    assert isinstance(loaded.graph.tensors()["w"]._values, MappedValues)
    out = tmp_path / "out" / "m.onnx"
    out.parent.mkdir()
    assert main(["optimize", str(src / "m.onnx"), "-o", str(out), "--external-data", "--verify"]) == 0
    assert tree_digest(src) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    saved = onnx.load(out, load_external_data=False)
    assert onnx.external_data_helper.uses_external_data(next(t for t in saved.graph.initializer if t.name == "w"))
    x = np.random.default_rng(2).standard_normal((3, 512)).astype(np.float32)
    expected = session(big_weight_model()).run(None, {"x": x})[0]  # onnx.save made `model` external
    np.testing.assert_allclose(session(out).run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)  # Gemm fusion reorders float math
    # and back into a single file
    single = tmp_path / "single.onnx"
    assert main(["optimize", str(out), "-o", str(single), "--no-external-data"]) == 0
    np.testing.assert_allclose(session(onnx.load(single)).run(None, {"x": x})[0], expected, rtol=1e-4, atol=1e-5)  # Gemm fusion reorders float math


@pytest.mark.trt
def test_small_weights_in_external_data_optimize_verify_and_build(tmp_path):
    """Every initializer external, the small ones too (size_threshold 0): loading gives them an
    absolute location, which onnx's checker refuses in the weightless export; they are inlined
    there."""
    model = big_weight_model(200)  # w 160 KB (stubbed), b 800 bytes (inlined)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(tmp_path / "m.onnx"), "-o", str(out), "--verify"]) == 0
    assert main(["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.engine"), "--dynamic", "N=1:2:4"]) == 0
    assert (tmp_path / "m.engine").stat().st_size > 0


@pytest.mark.parametrize("location, message", [
    ("../outside.bin", "points outside the model folder"),
    ("{outside}", "absolute external data location"),  # any file on the machine, e.g. /etc/passwd
    ("missing.bin", "is missing"),
])
def test_unsafe_or_missing_external_data_is_refused(tmp_path, location, message):
    src = tmp_path / "src"
    src.mkdir()
    save_external(big_weight_model(), src / "m.onnx")
    model = onnx.load(src / "m.onnx", load_external_data=False)
    (tmp_path / "outside.bin").write_bytes((src / "weights.bin").read_bytes())
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location.format(outside=tmp_path / "outside.bin")
    onnx.save(model, src / "evil.onnx")
    with pytest.raises(InputError, match=message):
        load_model(src / "evil.onnx")


def test_truncated_external_data_is_refused(tmp_path):
    save_external(big_weight_model(), tmp_path / "m.onnx")
    data = tmp_path / "weights.bin"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(InputError, match="runs past the end"):
        load_model(tmp_path / "m.onnx")


def test_save_is_atomic_when_writing_fails(tmp_path):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"old")

    def disk_fills_up(f):
        f.write(b"half of a model")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(out, disk_fills_up)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["o.onnx"]


def big_transformer_ffn(folder: Path, layers: int, hidden: int, ff: int) -> Path:
    """A raw-export-style stack (``x @ Transpose(W)``, weights stored [out, in] in one
    external data file, written chunk by chunk): ``layers`` x (up, ReLU, down)."""
    rng = np.random.default_rng(0)
    nodes, init, x = [], [], "x"
    with open(folder / "big.bin", "wb") as data:
        for i in range(layers):
            for kind, (rows, cols) in (("up", (ff, hidden)), ("down", (hidden, ff))):
                name = f"{kind}{i}"
                tensor = onnx.TensorProto(name=name, dims=[rows, cols], data_type=onnx.TensorProto.FLOAT)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                offset = data.tell()
                for start in range(0, rows, 1024):
                    block = rng.random((min(1024, rows - start), cols), dtype=np.float32)
                    data.write(((block - 0.5) * np.float32(3.5 / np.sqrt(cols))).astype(np.float32).tobytes())
                for key, value in (("location", "big.bin"), ("offset", str(offset)), ("length", str(rows * cols * 4))):
                    tensor.external_data.add(key=key, value=value)
                init.append(tensor)
                nodes.append(onnx.helper.make_node("Transpose", [name], [f"{name}_t"], perm=[1, 0]))
                nodes.append(onnx.helper.make_node("MatMul", [x, f"{name}_t"], [f"{name}_y"]))
                x = f"{name}_y"
                if kind == "up":
                    nodes.append(onnx.helper.make_node("Relu", [x], [f"{name}_r"]))
                    x = f"{name}_r"
    nodes.append(onnx.helper.make_node("Identity", [x], ["y"]))
    graph = onnx.helper.make_graph(
        nodes, "ffn", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", hidden])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", hidden])], init)
    path = folder / "big.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def peak_rss_of(argv: list[str]) -> tuple[int, int]:
    """(exit code, peak resident bytes) of a command run in a fresh process."""
    probe = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    code, peak = done.stdout.split()[-2:]
    return int(code), int(peak)


@pytest.mark.slow
def test_3gb_model_optimizes_within_memory_target(tmp_path):
    """A 3.2 GB model (external data): every weight is rewritten (its Transpose folded),
    the result streams into external data, and peak memory stays under 1.5x the model."""
    src = big_transformer_ffn(tmp_path, layers=6, hidden=4096, ff=16384)
    size = src.stat().st_size + (tmp_path / "big.bin").stat().st_size
    assert size > 3 * 10**9
    out = tmp_path / "out" / "big.onnx"
    out.parent.mkdir()
    code, peak = peak_rss_of([sys.executable, "-m", "fusekit", "optimize", str(src), "-o", str(out)])
    assert code == 0
    assert peak <= 1.5 * size, f"peak {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB model"
    saved = onnx.load(out, load_external_data=False)
    assert [n.op_type for n in saved.graph.node] == ["MatMul", "Relu", "MatMul"] * 6
    assert (out.parent / "big.onnx.data").stat().st_size >= size - src.stat().st_size
    x = np.random.default_rng(1).standard_normal((2, 4096)).astype(np.float32)
    want = session(src).run(None, {"x": x})[0]
    got = session(out).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_ir3_model_keeps_its_initializers_listed_as_inputs():
    # IR < 4 requires every initializer to be a graph input; onnx-graphsurgeon drops them.
    model = onnx.parser.parse_model("""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2] x, float[2] w) => (float[2] y) <float[2] w = {1.0, 2.0}> { y = Add(x, w) }""")
    onnx.checker.check_model(model, full_check=True)
    optimized = api.optimize(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert [i.name for i in optimized.graph.input] == ["x", "w"]


def test_constant_node_values_of_a_given_model_are_not_touched():
    # onnx-graphsurgeon's exporter writes a name into each TensorProto it exports, and
    # fold-constants exports nodes: an unnamed Constant value must not gain name: "".
    value = onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32))
    assert not value.HasField("name")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["c"], value=value), onnx.helper.make_node("Neg", ["c"], ["d"]),
         onnx.helper.make_node("Add", ["x", "d"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    before = model.SerializeToString()
    optimized = api.optimize(model)
    assert model.SerializeToString() == before
    assert [n.op_type for n in optimized.graph.node] == ["Add"]


def test_optional_and_sequence_types_and_type_attributes_survive():
    # onnx-graphsurgeon cannot export optional-typed values and skips TYPE_PROTO attributes.
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 16]>
        g (bool c, optional(seq(float[5])) o) => (optional(seq(float[5])) r, seq(float[1]) s) {
          r = If (c) <then_branch = t () => (optional(seq(float[5])) e) {
                          e = Optional <type = seq(float[5])> ()
                      }, else_branch = f () => (optional(seq(float[5])) o2) { o2 = Identity(o) }>
          x = Constant <value = float[1] {1.0}> ()
          s = SequenceConstruct (x)
        }""")
    onnx.checker.check_model(model, full_check=True)
    optimized = api.optimize(model)
    onnx.checker.check_model(optimized, full_check=True)
    types = {vi.name: vi.type for vi in (*optimized.graph.input, *optimized.graph.output)}
    assert types == {vi.name: vi.type for vi in (*model.graph.input, *model.graph.output)}
    then = next(a.g for a in optimized.graph.node[0].attribute if a.name == "then_branch")
    assert then.node[0].attribute[0].type == onnx.AttributeProto.TYPE_PROTO


def test_initializer_listed_as_input_stays_an_overridable_input():
    """IR >= 4: an initializer that is also a graph input is a default the user may feed."""
    vi = lambda name: onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2])  # noqa: E731
    ones = lambda name: onnx.numpy_helper.from_array(np.ones(2, np.float32), name)  # noqa: E731
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["a"]), onnx.helper.make_node("Add", ["a", "w2"], ["y"])], "g",
        [vi("x"), vi("w"), vi("w2")], [vi("y")], [ones("w"), ones("w2")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    optimized = api.optimize(model)
    assert [i.name for i in optimized.graph.input] == ["x", "w", "w2"]
    assert sorted(t.name for t in optimized.graph.initializer) == ["w", "w2"]
    x = np.ones(2, np.float32)
    overridden = {"x": x, "w": np.full(2, 5, np.float32), "w2": np.full(2, 7, np.float32)}
    for feeds in ({"x": x}, overridden):
        np.testing.assert_array_equal(session(optimized).run(None, feeds)[0], session(model).run(None, feeds)[0])


def test_written_files_get_normal_permissions(tmp_path):
    out = tmp_path / "o.onnx"
    save_model(big_weight_model(8), out)
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def sliced_model(ir_version: int = 8, subgraph: bool = True) -> onnx.ModelProto:
    """Large and small initializers, a large overridable default, a float_data tensor, a
    large weight inside a subgraph, doc strings and metadata: what loading by file slices
    and streamed saving must keep."""
    rng = np.random.default_rng(3)
    big = lambda name, *shape: onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)  # noqa: E731
    inner = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "sub_w"], ["z"])], "then", [],
                                   [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [64, 64])],
                                   [big("sub_w", 64)])
    other = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["z2"])], "else", [],
                                   [onnx.helper.make_tensor_value_info("z2", onnx.TensorProto.FLOAT, [64, 64])])
    w = big("w", 64, 64)
    w.doc_string = "a weight"
    as_floats = onnx.helper.make_tensor("f", onnx.TensorProto.FLOAT, [64, 32], rng.standard_normal(64 * 32).tolist())
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["m"]), onnx.helper.make_node("Add", ["m", "default"], ["a"]),
         onnx.helper.make_node("Mul", ["a", "small"], ["s"]), onnx.helper.make_node("MatMul", ["s", "f"], ["y"]),
         *[onnx.helper.make_node("If", ["cond"], ["k"], then_branch=inner, else_branch=other)] * subgraph], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64, 64]),
         *[onnx.helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])] * subgraph,
         onnx.helper.make_tensor_value_info("default", onnx.TensorProto.FLOAT, [64, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64, 32]),
         *[onnx.helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [64, 64])] * subgraph],
        [w, big("default", 64, 64), big("small", 64), as_floats])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=ir_version)
    onnx.helper.set_model_props(model, {"author": "me"})
    model.doc_string = "model doc"
    return model


def test_large_in_file_weights_are_memory_mapped_slices_and_come_back_inline(tmp_path):
    from fusekit.model_io import FileSliceValues

    model = sliced_model()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    tensors = loaded.graph.tensors()
    assert type(tensors["w"]._values) is FileSliceValues
    assert type(tensors["small"]._values) is LazyValues  # under 4 KiB: parsed as before
    exported = to_model_proto(loaded.graph, loaded.shell)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in exported.graph.initializer)
    reference = load_model(onnx.load(path))  # parsed whole, as before
    assert exported == to_model_proto(reference.graph, reference.shell)
    np.testing.assert_array_equal(tensors["w"].values, onnx.numpy_helper.to_array(model.graph.initializer[0]))
    read = to_model_proto(loaded.graph, loaded.shell)  # values read (and cached by onnx-graphsurgeon)
    assert onnx.numpy_helper.to_array(read.graph.initializer[0]).tobytes() == model.graph.initializer[0].raw_data
    assert not read.graph.initializer[0].HasField("data_location")


@pytest.mark.parametrize("ir_version", [3, 8])
def test_streamed_save_reads_back_as_the_exported_model(tmp_path, ir_version):
    model = sliced_model(ir_version, subgraph=ir_version >= 4)  # IR 3 subgraphs would list their initializers as inputs
    if ir_version < 4:
        model.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                 for t in model.graph.initializer if t.name != "default")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    result = api.run(path)
    expected = result.to_proto()
    written = result.save(tmp_path / "out.onnx")
    assert written == [tmp_path / "out.onnx"]
    saved = onnx.load(tmp_path / "out.onnx")
    assert saved == expected
    onnx.checker.check_model(saved, full_check=True)
    x = np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)} if ir_version >= 4 else {"x": x}
        for got, want in zip(session(tmp_path / "out.onnx").run(None, feeds), session(model).run(None, feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # scales folded into weights reorder float math


def test_streamed_save_of_a_model_without_initializers(tmp_path):
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] x) => (float[N] y) { y = Relu(x) }""")
    result = api.run(model)
    result.save(tmp_path / "out.onnx")
    assert onnx.load(tmp_path / "out.onnx") == result.to_proto()


def test_streamed_save_refuses_to_overwrite_the_file_its_weights_are_read_from(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(sliced_model(), path)
    before = path.read_bytes()
    with pytest.raises(InputError, match="weights are read from this file"):
        api.run(path).save(path)
    assert path.read_bytes() == before


def test_saving_with_external_data_leaves_a_given_model_untouched(tmp_path):
    """The graph of a caller's ModelProto is imported by reference: writing its weights out
    as external data must not turn the caller's tensors into external references."""
    model = big_weight_model(64)
    before = model.SerializeToString()
    written = api.run(model, passes=[]).save(tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert [p.name for p in written] == ["m.onnx", "m.onnx.data"]
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(session(tmp_path / "m.onnx").run(None, {"x": x})[0],
                                  session(model).run(None, {"x": x})[0])
