"""Tests for passes/positive_axes.py. No onnx2ncnn binary is at hand, so each rewrite is checked on onnxruntime
and with the pre-flight check for onnx2ncnn (deploykit.tools.preflight), which says whether every node is one
that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import onnx

from deploykit.passes.positive_axes import PositiveAxesPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, model_from_text, rand, shaped


def test_negative_axes_become_positive_and_softmax_gets_its_axis():
    model = shaped("""g (float[1,3,4] x) => (float[1,3,8] y, float[1,3,4] s, float[1,12] f, float[1,3,1,4] u) {
        y = Concat<axis=-1>(x, x)
        s = Softmax(x)
        f = Flatten<axis=-2>(x)
        u = Unsqueeze<axes=[-2]>(x)
    }""", opset=11)
    # onnx2ncnn keeps Concat's and Unsqueeze's negative axes, which ncnn reads right; Softmax-11's
    # default is onnx2ncnn's
    assert findings(model, "onnx2ncnn") == [("Flatten", "positive_axes")]
    rewritten = assert_rewrites(model, PositiveAxesPass, expected_ops=["Concat", "Softmax", "Flatten", "Unsqueeze"],
                                inputs={"x": rand(1, 3, 4)}, changed=4)
    assert [dict((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute) for n in rewritten.graph.node] == [
        {"axis": 2}, {"axis": 1}, {"axis": 1}, {"axes": [2]}]
    assert_clean_for(rewritten, "onnx2ncnn")


def test_softmax_default_axis_at_opset_13_is_the_last():
    model = shaped("g (float[1,3,4] x) => (float[1,3,4] s) { s = Softmax(x) }")
    rewritten = assert_rewrites(model, PositiveAxesPass, expected_ops=["Softmax"], inputs={"x": rand(1, 3, 4)})
    assert rewritten.graph.node[0].attribute[0].i == 2


def test_unknown_rank_is_refused_and_reduce_axes_stay_negative():
    model = model_from_text("""g (float[1,3,4] x, int64[N] s) => (float[1,3,1] m, float[1,3,8] y) {
        m = ReduceMean<axes=[-1]>(x)
        r = Reshape(x, s)
        y = Concat<axis=-1>(r, r)
    }""", {})
    assert assert_left_alone(model, PositiveAxesPass()) == [
        "Concat '': its input has no static rank; run shape inference (onnxsim) first"]
