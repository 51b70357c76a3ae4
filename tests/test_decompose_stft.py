"""decompose-stft: STFT with static sizes as a constant-index frame Gather, a window Mul and
MatMuls with a constant basis, equal to onnxruntime (hypothesis: window or frame_length,
onesided 0/1, real and complex signals), near misses declined, and accepted by the real
tensorrt_rtx parser and builder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusekit.api as fk
from tests.helpers import inspect_pass, op_counts, optimize_with, parse, run_ort

PASS = ["decompose-stft"]
HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _floats(values) -> str:
    return ", ".join(repr(float(v)) for v in values)


def stft_model(batch: int, length: int, parts: int, step: int, n: int, window, onesided: int,
               frame_length: bool) -> str:
    frames, bins = 1 + (length - n) // step, n // 2 + 1 if onesided else n
    body = [f"s = Constant<value=int64 {{{step}}}>()"]
    args = ["x", "s", "", ""]
    if window is not None:
        body.append(f"w = Constant<value=float[{n}] {{{_floats(window)}}}>()")
        args[2] = "w"
    if frame_length or window is None:
        body.append(f"l = Constant<value=int64 {{{n}}}>()")
        args[3] = "l"
    while args[-1] == "":
        args.pop()
    body.append(f"y = STFT<onesided={onesided}>({', '.join(args)})")
    return HEADER + f"g (float[{batch},{length},{parts}] x) => (float[{batch},{frames},{bins},2] y) {{\n" \
        + "\n".join(body) + " }"


def _relative_error(model, optimized, x) -> float:
    expected, got = run_ort(model, {"x": x})["y"], run_ort(optimized, {"x": x})["y"]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    return float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected)))))


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), n=st.integers(1, 16), extra=st.integers(0, 20), step=st.integers(1, 6),
       window_kind=st.sampled_from(["none", "constant", "constant+frame_length"]),
       complex_input=st.booleans(), onesided=st.booleans(), seed=st.integers(0, 999))
def test_matches_onnxruntime(batch, n, extra, step, window_kind, complex_input, onesided, seed):
    if complex_input:
        onesided = False
    rng = np.random.default_rng(seed)
    window = None if window_kind == "none" else rng.uniform(0, 1, size=n).astype(np.float32)
    model = parse(stft_model(batch, n + extra, 2 if complex_input else 1, step, n, window, int(onesided),
                             window_kind.endswith("frame_length")))
    optimized, _ = optimize_with(model, PASS)
    counts = op_counts(optimized)
    assert counts["STFT"] == 0 and counts["MatMul"] >= 2
    x = rng.uniform(-1, 1, size=(batch, n + extra, 2 if complex_input else 1)).astype(np.float32)
    # onnxruntime's FFT rounds differently from the direct sum: compare relative to the magnitude
    assert _relative_error(model, optimized, x) < 3e-5  # 4.4e-6 at most over 150 random cases


def test_hann_frames_of_an_audio_front_end():
    """A 400-sample Hann window, step 160 over one second at 16 kHz (a Whisper-like front end)."""
    n = 400
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
    model = parse(stft_model(1, 16000, 1, 160, n, window, 1, False))
    optimized, _ = optimize_with(model, PASS)
    assert op_counts(optimized)["STFT"] == 0
    x = np.random.default_rng(0).uniform(-1, 1, size=(1, 16000, 1)).astype(np.float32)
    # onnxruntime's FFT of this non-power-of-two length is 3.2e-5 (relative) from the float64
    # transform, the direct sum 4.2e-7: tight against float64, looser against onnxruntime
    assert _relative_error(model, optimized, x) < 1e-4
    frames = np.stack([x[0, f * 160:f * 160 + n, 0].astype(np.float64) * window for f in range(1 + (16000 - n) // 160)])
    exact = np.fft.rfft(frames, axis=-1)
    exact = np.stack([exact.real, exact.imag], axis=-1)[None]
    got = run_ort(optimized, {"x": x})["y"]
    assert np.max(np.abs(got - exact)) / np.max(np.abs(exact)) < 2e-6


def _message(model) -> str:
    [decisions] = [f for name, f in inspect_pass(model, PASS[0]).items() if name.startswith("STFT")]
    [decision] = decisions
    return decision.message


def test_declines_near_misses():
    computed_step = parse(HEADER + """g (float[1,32,1] x, int64 s) => (float[1,N,M,2] y) {
      l = Constant<value=int64 {8}>()
      y = STFT(x, s, , l) }""")
    assert "frame_step is not a constant" in _message(computed_step)
    computed_window = parse(HEADER + """g (float[1,32,1] x, float[8] w) => (float[1,7,M,2] y) {
      s = Constant<value=int64 {4}>()
      y = STFT(x, s, w) }""")
    assert "window is not a constant" in _message(computed_window)
    computed_length = parse(HEADER + """g (float[1,32,1] x, int64 l) => (float[1,N,M,2] y) {
      s = Constant<value=int64 {4}>()
      y = STFT(x, s, , l) }""")
    assert "frame_length is not a constant" in _message(computed_length)
    dynamic = parse(HEADER + """g (float[1,L,1] x) => (float[1,N,M,2] y) {
      s = Constant<value=int64 {4}>()
      l = Constant<value=int64 {8}>()
      y = STFT(x, s, , l) }""")
    assert "not static" in _message(dynamic)
    complex_onesided = parse(HEADER + """g (float[1,32,2] x) => (float[1,7,M,2] y) {
      s = Constant<value=int64 {4}>()
      l = Constant<value=int64 {8}>()
      y = STFT(x, s, , l) }""")
    assert "onesided needs a real signal" in _message(complex_onesided)
    no_length = parse(HEADER + """g (float[1,32,1] x) => (float[1,N,M,2] y) {
      s = Constant<value=int64 {4}>()
      y = STFT(x, s) }""")
    assert "frame length" in _message(no_length)
    for model in (computed_step, computed_window, computed_length, dynamic, complex_onesided):
        assert op_counts(optimize_with(model, PASS)[0])["STFT"] == 1


@pytest.mark.trt
def test_tensorrt_rtx_builds_the_result():
    window = np.hanning(16).astype(np.float32)
    model = parse(stft_model(2, 64, 1, 4, 16, window, 1, False))
    optimized = fk.optimize(model)
    assert op_counts(optimized)["STFT"] == 0
    assert fk.check_trt(optimized) == []
    assert fk.build(optimized, optimize=False).engine.nbytes > 0
