"""Issue 13's FP16 targets on raw exports (tensorrt_rtx, one build each, batch 1).

    python benchmarks/precision_targets.py OUT.json MODELS_DIR [resnet50 bert-base ...]

For each zoo model: the FP32 raw export built as it is, and ``fusekit build --fp16``
(optimize + convert-precision); targets: fp16 engine bytes at most 55% of FP32's, no more
compute layers than the FP32 raw export, and outputs within 1e-2 relative
(``max|x - y| / (1 + max|x|)``) under onnxruntime on CPU at batch 1 and 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from models import ZOO_SCRIPT, catalog, materialize

import fusekit.api as fk
from fusekit.precision_data import output_errors

BYTES_RATIO = 0.55
RELATIVE = 1e-2
SEQ = 128
DYNAMIC = {"image": ["batch=1:1:2"], "encoder": ["batch=1:1:2", f"seq=1:{SEQ}:{SEQ}"]}


def samples(kind: str, path: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    if kind == "image":
        import onnx

        size = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[2].dim_value
        return [{"images": rng.standard_normal((b, 3, size, size)).astype(np.float32)} for b in (1, 2)]
    return [{"input_ids": rng.integers(0, 1000, (b, SEQ)).astype(np.int64),
             "attention_mask": np.ones((b, SEQ), np.int64)} for b in (1, 2)]


def measure(name: str, folder: Path) -> dict:
    path = materialize(catalog()[name], folder, timeout=1800)
    kind = "encoder" if name in ("bert-base", "encoder-tiny") else "image"
    start = time.perf_counter()
    fp32 = fk.build(path, optimize=False, dynamic=DYNAMIC[kind]).report
    converted = fk.run(path, precision="fp16")
    fp16_path = folder / f"{name}-fp16.onnx"
    converted.save(fp16_path)
    fp16 = fk.build(fp16_path, optimize=False, dynamic=DYNAMIC[kind]).report
    errors = output_errors(path, fp16_path, samples(kind, path))
    summary = converted.report.precision
    ratio = fp16.engine_bytes / fp32.engine_bytes
    worst = max(e["relative_error"] for e in errors.values())
    return {
        "model": name, "fp32_engine_bytes": fp32.engine_bytes, "fp16_engine_bytes": fp16.engine_bytes,
        "bytes_ratio": round(ratio, 4), "fp32_compute_layers": fp32.compute_layers,
        "fp16_compute_layers": fp16.compute_layers, "fp32_engine_layers": fp32.engine_layers,
        "fp16_engine_layers": fp16.engine_layers, "output_errors_batch_1_2": errors,
        "converted_nodes": summary["converted_nodes"], "kept_nodes": summary["kept_nodes"],
        "kept": summary["kept"], "casts_added": summary["casts_added"],
        "targets": {"bytes <= 55% of FP32": ratio <= BYTES_RATIO,
                    "compute layers <= FP32 raw": fp16.compute_layers <= fp32.compute_layers,
                    "relative error <= 1e-2": worst <= RELATIVE},
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str]) -> None:
    out, folder, *names = argv  # exports are kept in MODELS_DIR (made again when stale)
    Path(folder).mkdir(parents=True, exist_ok=True)
    rows = [measure(name, Path(folder)) for name in names or ["resnet50", "bert-base"]]
    Path(out).write_text(json.dumps({"zoo_script": str(ZOO_SCRIPT), "results": rows}, indent=2) + "\n")
    for row in rows:
        print(row["model"], row["bytes_ratio"], row["fp32_compute_layers"], row["fp16_compute_layers"],
              {k: v["relative_error"] for k, v in row["output_errors_batch_1_2"].items()}, row["targets"])


if __name__ == "__main__":
    main(sys.argv[1:])
