"""Tests for passes/resize_empty_inputs.py, on onnxruntime and the pre-flight check for onnx2ncnn;
the real binary's run before and after is in tests/test_onnx2ncnn_passes.py."""

from __future__ import annotations

import onnx

from deploykit.passes.resize_empty_inputs import ResizeEmptyInputsPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, ints, model_from_text, rand


def test_left_out_roi_and_scales_become_empty_constants():
    model = model_from_text("""g (float[1,2,4,4] x) => (float[1,2,8,8] z) {
        z = Resize<mode="linear">(x, , , s)
    }""", {"s": ints(1, 2, 8, 8)})
    assert findings(model, "onnx2ncnn") == [("Resize", "resize_empty_inputs")]
    rewritten = assert_rewrites(model, ResizeEmptyInputsPass, expected_ops=["Resize"], inputs={"x": rand(1, 2, 4, 4)})
    [resize] = rewritten.graph.node
    assert list(resize.input) == ["x", "z/resize_empty_inputs/roi", "z/resize_empty_inputs/scales", "s"]
    empty = {i.name: list(i.dims) for i in rewritten.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert empty == {"z/resize_empty_inputs/roi": [0], "z/resize_empty_inputs/scales": [0]}
    assert_clean_for(rewritten, "onnx2ncnn")


def test_sizes_computed_at_run_time_are_refused():
    model = model_from_text("""g (float[1,2,4,4] x, int64[4] s) => (float[1,2,?,?] z) {
        z = Resize<mode="linear">(x, , , s)
    }""")
    assert assert_left_alone(model, ResizeEmptyInputsPass()) == [
        "Resize '': it reads neither scales nor sizes from a constant"]
