"""Weights that passes compute leave memory when it runs over the model's size
(fusekit.model_io.spill), and come back intact through save and load."""

from __future__ import annotations

import gc
import io
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fusekit import api
from fusekit.model_io import FileSliceValues, MappedValues, load_model
from fusekit.model_io import spill as spill_module
from fusekit.model_io.spill import WeightSpill
from tests.helpers import feeds_for, run_ort


def conv_bn_model(channels: int = 64) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)  # 147 KiB: spillable
    bn = [rng.uniform(0.5, 1.5, channels).astype(np.float32) for _ in range(4)]
    init = [onnx.numpy_helper.from_array(w, "w")] + [onnx.numpy_helper.from_array(v, n)
                                                    for v, n in zip(bn, ("s", "b", "m", "v"))]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         onnx.helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", channels, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", channels, 8, 8])], init)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 14)], ir_version=8)


def test_folded_weight_is_spilled_and_saved_intact(tmp_path, monkeypatch):
    monkeypatch.setattr(spill_module, "MIN_BUDGET_BYTES", 0)  # budget: the model's 150 KiB
    monkeypatch.setattr(WeightSpill, "step", 0)  # spill at every chance
    model = conv_bn_model()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    result = api.run(src)
    spill = result.loaded.spill
    weight = next(n for n in result.loaded.graph.nodes if n.op == "Conv").inputs[1]
    assert isinstance(weight._values, FileSliceValues) and spill.spilled_bytes >= weight._values.nbytes
    folder = Path(spill._folder.name)
    assert folder.is_dir()
    out = tmp_path / "o.onnx"
    result.save(out)
    optimized = onnx.load(out)
    assert [n.op_type for n in optimized.graph.node] == ["Conv"]
    for feeds in feeds_for(model, (1, 3)):
        np.testing.assert_allclose(run_ort(optimized, feeds)["y"], run_ort(model, feeds)["y"], rtol=1e-4, atol=1e-4)
    del result, spill, weight
    gc.collect()
    assert not folder.exists()  # the scratch file goes with the graph


def test_under_budget_nothing_is_written():
    loaded = load_model(conv_bn_model())
    spill = WeightSpill(budget=1 << 50)
    tensor = next(t for t in loaded.graph.tensors().values() if t.name == "w")
    tensor.values = np.ones((64, 64, 3, 3), np.float32)  # as a pass would replace it
    spill.relieve(loaded.graph)
    assert spill.spilled_bytes == 0 and isinstance(tensor._values, np.ndarray)
    assert spill.spill(loaded.graph) == 1  # asked outright, it spills
    assert isinstance(tensor._values, FileSliceValues)
    np.testing.assert_array_equal(tensor._values.load(), np.ones((64, 64, 3, 3), np.float32))


def test_small_and_non_numeric_constants_stay():
    graph = gs.Graph(nodes=[], inputs=[], outputs=[])
    small = gs.Constant("small", np.ones(16, np.float32))
    text = gs.Constant("text", np.array(["a" * 100_000], dtype=object))
    out = gs.Variable("y", dtype=np.float32)
    graph.nodes.append(gs.Node("Concat", inputs=[small, text], outputs=[out], attrs={"axis": 0}))
    spill = WeightSpill(budget=0)
    assert spill.spill(graph) == 0
    assert isinstance(small._values, np.ndarray) and isinstance(text._values, np.ndarray)


def test_mapped_weights_stream_into_any_writer(tmp_path):
    """copy_to: file to file in the kernel, or in chunks into a writer without a file."""
    data = np.arange(300_000, dtype=np.float32)
    proto = onnx.TensorProto(name="w", dims=data.shape, data_type=onnx.TensorProto.FLOAT)
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 100 + data.tobytes())
    for key, value in (("location", str(path)), ("offset", "100"), ("length", str(data.nbytes))):
        proto.external_data.add(key=key, value=value)
    values = MappedValues(proto, path)
    buffer = io.BytesIO()
    values.copy_to(buffer)
    assert buffer.getvalue() == data.tobytes()
    with open(tmp_path / "out.bin", "wb") as f:
        f.write(b"head")
        values.copy_to(f)
        f.write(b"tail")
        assert f.tell() == 8 + data.nbytes
    assert (tmp_path / "out.bin").read_bytes() == b"head" + data.tobytes() + b"tail"
