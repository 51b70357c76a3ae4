"""Issue 4's real-model check: raw torch exports through the default pipeline.

Each architecture (ResNet-style, MobileNet-style with depthwise convs and ReLU6/Clip,
BERT-style encoder with decomposed LayerNorm/GELU) comes out with no BatchNormalization,
Identity or Dropout left, one LayerNormalization per ``nn.LayerNorm``, and the same
outputs as the raw export at two batch sizes (and two sequence lengths).
"""

from __future__ import annotations

import onnx
import pytest

import fusekit
from fusekit.verify import make_inputs, session
from tests.helpers import assert_same_outputs, op_counts
from tests.zoo_models import zoo_model

# name -> LayerNormalization nodes expected: one per nn.LayerNorm in examples/zoo.py
CASES = {
    "resnet-tiny": 0,
    "mobilenet": 0,
    "convnext": 7,      # one per block (2 x 3 stages) + the final norm
    "encoder-tiny": 5,  # embeddings + 2 per layer x 2 layers
}


@pytest.mark.parametrize("name", CASES)
def test_default_pipeline_on_raw_exports(name):
    raw = onnx.load(zoo_model(name))
    optimized, report = fusekit.optimize(raw, return_report=True)
    counts = op_counts(optimized)
    before = op_counts(raw)
    assert counts["BatchNormalization"] == 0 and counts["Identity"] == 0 and counts["Dropout"] == 0
    assert counts["LayerNormalization"] == CASES[name]
    assert report.after.nodes <= report.before.nodes - before["BatchNormalization"] - before["Identity"]
    onnx.checker.check_model(optimized, full_check=True)
    sess = session(raw)
    feeds = [make_inputs(sess, value, seed=value) for value in (1, 3)]
    if name.startswith("encoder"):
        feeds += [make_inputs(sess, 8, seed=8)]  # batch 8 x seq 8 beside 1x1 and 3x3
    assert_same_outputs(raw, optimized, feeds)
