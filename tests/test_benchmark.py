"""Smoke test of benchmarks/compare.py: one tiny model, two tools, the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

COMPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


def test_quick_run_writes_the_expected_json(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the zoo model is exported with torch
    done = subprocess.run([sys.executable, str(COMPARE), "--quick", "--models", "resnet-tiny",
                           "--tools", "fusekit,ort-basic", "--out", str(tmp_path), "--no-chart", "--timeout", "120"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((tmp_path / "benchmark.json").read_text())

    assert data["schema"] == "fusekit.benchmark/1"
    assert data["options"]["batch_sizes"] == [1, 3]
    assert set(data["tools"]) == {"fusekit", "ort-basic"}
    assert all(t["version"] for t in data["tools"].values())
    [model] = data["models"]
    assert model["name"] == "resnet-tiny" and model["status"] == "ok"
    assert model["file_bytes"] > 0 and model["nodes"] > 0
    assert [(r["model"], r["tool"]) for r in data["results"]] == [("resnet-tiny", "fusekit"),
                                                                  ("resnet-tiny", "ort-basic")]
    for r in data["results"]:
        assert r["status"] == "ok", r["error"]
        assert 0 < r["seconds"] <= r["process_seconds"]
        assert r["peak_rss"] >= r["rss_after_import"] > 0
        assert 0 < r["nodes"] <= model["nodes"]
        assert r["output_bytes"] > 0
        assert r["accuracy"]["status"] == "ok"
        assert set(r["accuracy"]["max_abs_diff"]) == {"1", "3"}
        assert max(r["accuracy"]["max_abs_diff"].values()) < 1e-4
        if data["trt_backend"]:
            assert r["trt"]["status"] == "ok", r["trt"]["error"]
            assert r["trt"]["network_layers"] > 0 and r["trt"]["engine_layers"] > 0
            assert 0 < r["trt"]["compute_layers"] <= r["trt"]["engine_layers"]
        else:
            assert r["trt"] is None
    targets = {(t["target"], t["model"]) for t in data["targets"]}
    assert ("nodes vs best peer", "resnet-tiny") in targets
    assert ("max |diff|", "resnet-tiny") in targets
    if data["trt_backend"]:
        assert ("compute layers vs original", "resnet-tiny") in targets
        assert "compute" in done.stdout
    assert "resnet-tiny" in done.stdout and "ort-basic" in done.stdout  # the table
