"""Tests for passes/pow_square.py, on onnxruntime and the pre-flight check for onnx2ncnn; the real
binary's run before and after is in tests/test_onnx2ncnn_passes.py."""

from __future__ import annotations

import numpy as np

from deploykit.passes.pow_square import PowSquarePass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, f32, findings, model_from_text, rand


def test_a_square_becomes_a_product_of_x_with_itself():
    model = model_from_text("g (float[1,3,4] x) => (float[1,3,4] y) { y = Pow(x, two) }", {"two": f32(2)})
    assert findings(model, "onnx2ncnn") == [("Pow", "pow_square")]
    rewritten = assert_rewrites(model, PowSquarePass, expected_ops=["Mul"], inputs={"x": rand(1, 3, 4) * 3})
    [mul] = rewritten.graph.node
    assert (mul.name, list(mul.input)) == ("y/pow_square/mul", ["x", "x"])
    assert_clean_for(rewritten, "onnx2ncnn")


def test_the_variance_of_a_layernorm_and_an_integer_base_are_left_alone():
    variance = model_from_text("""g (float[1,3,4] x) => (float[1,3,1] v) {
        m = ReduceMean<axes=[-1]>(x)
        d = Sub(x, m)
        p = Pow(d, two)
        v = ReduceMean<axes=[-1]>(p)
    }""", {"two": f32(2)})
    assert assert_left_alone(variance, PowSquarePass()) == []  # onnx2ncnn fuses this chain into LayerNorm
    integer = model_from_text("g (int64[1,3] x) => (int64[1,3] y) { y = Pow(x, two) }", {"two": np.array(2, np.int64)})
    assert assert_left_alone(integer, PowSquarePass()) == ["Pow '': its input is int64, not a float"]
