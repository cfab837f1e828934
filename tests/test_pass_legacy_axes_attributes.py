"""Tests for passes/legacy_axes_attributes.py. No onnx2ncnn binary is at hand, so each rewrite is checked on onnxruntime
and with the pre-flight check for onnx2ncnn (deploykit.tools.preflight), which says whether every node is one
that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.passes.legacy_axes_attributes import LegacyAxesAttributesPass
from deploykit.passes.positive_axes import PositiveAxesPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, rand, shaped


@pytest.mark.parametrize("op,axes,out,left", [
    ("Squeeze", "{2}", "float[1,3,4]", []),
    ("Unsqueeze", "{-1}", "float[1,3,1,4,1]", []),  # a 5-D Reshape converts right (reshape_5d: over 5 dims)
])
def test_squeeze_and_unsqueeze_with_axes_inputs_become_static_reshapes(op, axes, out, left):
    model = shaped(f"""g (float[1,3,1,4] x) => ({out} y) {{
        axes = Constant<value = int64[1] {axes}>()
        y = {op}(x, axes)
    }}""")
    assert findings(model, "onnx2ncnn") == [(op, "legacy_axes_attributes")]
    rewritten = assert_rewrites(model, LegacyAxesAttributesPass, expected_ops=["Reshape"],
                                inputs={"x": rand(1, 3, 1, 4)})
    assert findings(rewritten, "onnx2ncnn") == left


def test_unequal_split_becomes_slices_and_equal_split_loses_its_sizes():
    model = shaped("""g (float[1,6,4] x) => (float[1,2,4] a, float[1,4,4] b, float[1,2,2] c, float[1,2,2] d) {
        sizes = Constant<value = int64[2] {2, 4}>()
        a, b = Split<axis=1>(x, sizes)
        halves = Constant<value = int64[2] {2, 2}>()
        c, d = Split<axis=-1>(a, halves)
    }""")
    rewritten = assert_rewrites(model, LegacyAxesAttributesPass, expected_ops=["Slice", "Slice", "Split"],
                                inputs={"x": rand(1, 6, 4)}, changed=2)
    assert [len(n.input) for n in rewritten.graph.node] == [4, 4, 1]
    assert findings(rewritten, "onnx2ncnn") == [("Split", "positive_axes")]
    assert_clean_for(assert_rewrites(rewritten, PositiveAxesPass, expected_ops=["Slice", "Slice", "Split"],
                                     inputs={"x": rand(1, 6, 4)}), "onnx2ncnn")


@pytest.mark.parametrize("value,ops", [(0.0, ["Pad"]), (-2.5, ["Pad", "Add"])], ids=["zero", "nonzero"])
def test_pad_value_input_is_dropped_or_added_through_a_mask(value, ops):
    model = shaped("""g (float[1,2,3,3] x) => (float[1,2,4,4] y) {
        y = Pad(x, pads, value)
    }""", {"value": np.array(value, np.float32), "pads": np.array([0, 0, 2, -1, 0, 0, -1, 2], np.int64)})
    x = rand(1, 2, 3, 3)
    x[0, 0, 0, 1] = -0.0
    rewritten = assert_rewrites(model, LegacyAxesAttributesPass, expected_ops=ops, inputs={"x": x})
    assert_clean_for(rewritten, "onnx2ncnn")


def test_reduce_sum_with_axes_input_and_squeeze_of_the_batch_are_refused():
    model = shaped("""g (float[1,3,4] x) => (float[1,3] y, float[3,4] z) {
        axes = Constant<value = int64[1] {2}>()
        y = ReduceSum<keepdims=0>(x, axes)
        zero = Constant<value = int64[1] {0}>()
        z = Squeeze(x, zero)
    }""")
    refusals = assert_left_alone(model, LegacyAxesAttributesPass())
    assert "export with opset 12" in refusals[0] and "axis 0" in refusals[1]
