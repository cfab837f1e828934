"""Tests for passes/broadcast_rank.py, on onnxruntime and the pre-flight check for onnx2ncnn; the
real binary's run before and after is in tests/test_onnx2ncnn_passes.py."""

from __future__ import annotations

import numpy as np
import onnx

from deploykit.passes.broadcast_rank import BroadcastRankPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, model_from_text, rand

SCORES = "float[1,4,6,6] x"


def test_a_constant_2d_operand_gets_the_same_values_as_1_1_h_w():
    mask = np.triu(np.full((6, 6), -1e4, np.float32), 1)
    model = model_from_text(f"g ({SCORES}) => (float[1,4,6,6] z) {{ z = Add(x, m) }}", {"m": mask})
    assert findings(model, "onnx2ncnn") == [("Add", "broadcast_rank")]
    rewritten = assert_rewrites(model, BroadcastRankPass, expected_ops=["Add"], inputs={"x": rand(1, 4, 6, 6)})
    [constant] = rewritten.graph.initializer
    assert (constant.name, list(constant.dims)) == ("z/broadcast_rank/input1", [1, 1, 6, 6])
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(constant)[0, 0], mask)
    assert_clean_for(rewritten, "onnx2ncnn")


def test_a_computed_1_h_w_operand_is_reshaped():
    model = model_from_text(f"g (float[1,6,6] m, {SCORES}) => (float[1,4,6,6] z) {{ z = Mul(m, x) }}")
    rewritten = assert_rewrites(model, BroadcastRankPass, expected_ops=["Reshape", "Mul"],
                                inputs={"m": rand(1, 6, 6), "x": rand(1, 4, 6, 6)})
    reshape, mul = rewritten.graph.node
    assert (reshape.name, list(mul.input)) == ("z/broadcast_rank/input0", ["z/broadcast_rank/input0", "x"])
    assert_clean_for(rewritten, "onnx2ncnn")


def test_operands_that_broadcast_right_and_a_batch_of_two_are_left_alone():
    row = model_from_text(f"g ({SCORES}) => (float[1,4,6,6] z) {{ z = Add(x, b) }}", {"b": rand(6)})
    assert assert_left_alone(row, BroadcastRankPass()) == []  # a 1-D operand is broadcast along w, as in ONNX
    batch = model_from_text("g (float[2,4,6,6] x) => (float[2,4,6,6] z) { z = Add(x, m) }", {"m": rand(6, 6)})
    assert assert_left_alone(batch, BroadcastRankPass()) == []
