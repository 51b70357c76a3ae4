"""Shape facts: inferred types are stored the way onnx-graphsurgeon stores types."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from fusekit import api
from fusekit.model_io import load_model
from fusekit.shapes import annotate_shapes


@pytest.mark.parametrize("elem_type", [onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT8E4M3FN,
                                       onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2FNUZ])
def test_types_numpy_lacks_are_inferred_as_onnx_enums_and_export_unchanged(elem_type):
    # ml_dtypes' float8_e4m3fnuz exported through gs became FLOAT8E4M3FN: wrong value_info.
    model = onnx.parser.parse_model(f"""
        <ir_version: 9, opset_import: ["" : 21]>
        g (float[4] x) => (float[4] y) {{ t = Cast <to = {elem_type}> (x)
                                          y = Cast <to = 1> (t) }}""")
    loaded = load_model(model)
    annotate_shapes(loaded.graph)
    t = next(n for n in loaded.graph.nodes if n.op == "Cast").outputs[0]
    assert t.dtype == elem_type and t.shape == [4]
    optimized = api.optimize(model)
    onnx.checker.check_model(optimized, full_check=True)
    assert {vi.name: vi.type.tensor_type.elem_type for vi in optimized.graph.value_info}.get("t") == elem_type


def test_numpy_types_are_inferred_as_numpy_dtypes():
    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 21]>
        g (float[4] x) => (float[4] y) { t = Cast <to = 7> (x)
                                         y = Cast <to = 1> (t) }""")
    loaded = load_model(model)
    annotate_shapes(loaded.graph)
    t = next(n for n in loaded.graph.nodes if n.op == "Cast").outputs[0]
    assert t.dtype == np.int64
