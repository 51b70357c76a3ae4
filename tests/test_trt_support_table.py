"""tools/trt_support_table.py: the shipped TensorRT tables made from onnx-tensorrt's
docs/operators.md revisions (tensorrt-10.0, tensorrt-10.1)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fusekit.builder import support

TOOL = Path(__file__).resolve().parent.parent / "tools" / "trt_support_table.py"
spec = importlib.util.spec_from_file_location("trt_support_table", TOOL)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

SAMPLE = """# Supported ONNX Operators

TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20. Latest information ...

## Operator Support Matrix

| Operator                  | Supported  | Supported Types | Restrictions |
|---------------------------|------------|-----------------|--------------|
| Abs                       | Y          | FP32, FP16 |
| Col2Im                    | N          |
| DynamicQuantizeLinear     | N          | Not supported. Compose it from ONNX operators.
| NonMaxSuppression         | Y [EXPERIMENTAL] | FP32 | Inputs `iou_threshold` must be initializers
| Resize                    | Y          | FP32 | Modes: `nearest`.<br />Antialiasing is not supported.|

## Something else

| Not | An | Operator |
"""


def test_parses_the_matrix():
    parsed = tool.parse_operators_md(SAMPLE)
    assert parsed["version"] == "10.0" and parsed["opset"] == [9, 20]
    assert parsed["ops"] == {
        "Abs": (True, ""),
        "Col2Im": (False, ""),
        "DynamicQuantizeLinear": (False, "Not supported. Compose it from ONNX operators."),
        "NonMaxSuppression": (True, "Inputs iou_threshold must be initializers"),
        "Resize": (True, "Modes: nearest. Antialiasing is not supported."),
    }


def test_makes_a_table_in_the_shipped_format(tmp_path):
    doc = tmp_path / "operators.md"
    doc.write_text(SAMPLE)
    out = tmp_path / "t.json"
    assert tool.main(["--file", str(doc), "--version", "10.1", "-o", str(out)]) == 0
    table = json.loads(out.read_text())
    shipped = support.load_table("tensorrt-10.15")
    assert set(table) == set(shipped) - {"reasons"}
    assert table["version"] == "10.1" and table["opset"] == [9, 20]
    assert table["supported"] == ["Abs", "NonMaxSuppression", "Resize"]
    assert table["unsupported"] == ["Col2Im", "DynamicQuantizeLinear"]
    assert "header says TensorRT 10.0" in table["source"]


def test_rejects_a_document_without_the_header():
    with pytest.raises(ValueError, match="header"):
        tool.parse_operators_md(SAMPLE.replace("supports operators in the inclusive range", "supports"))


@pytest.mark.parametrize("name", ["tensorrt-10.0", "tensorrt-10.1"])
def test_generated_tables_are_shipped(name):
    table = support.load_table(name)
    assert "made by tools/trt_support_table.py" in table["source"]
    assert table["opset"] == [9, 20]
    assert table["supported"] == sorted(table["supported"]) and "Conv" in table["supported"]
