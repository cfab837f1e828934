"""Tests for passes/scalar_constants.py. No onnx2ncnn binary is at hand, so each rewrite is checked on onnxruntime
and with the pre-flight check for onnx2ncnn (deploykit.tools.preflight), which says whether every node is one
that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import numpy as np
import onnx

from deploykit.passes.scalar_constants import ScalarConstantsPass
from passkit import assert_left_alone, assert_rewrites, rand, shaped


def test_one_element_constants_become_scalars_on_the_second_input():
    model = shaped("""g (float[1,3,4] x) => (float[1,3,4] y) {
        a = Add(one, x)
        b = Mul(a, half)
        y = Sub(b, one)
    }""", {"one": np.array([1.0], np.float32), "half": np.array([0.5], np.float32)})
    rewritten = assert_rewrites(model, ScalarConstantsPass, expected_ops=["Add", "Mul", "Sub"],
                                inputs={"x": rand(1, 3, 4)}, changed=3)
    consts = {i.name: list(i.dims) for i in rewritten.graph.initializer}
    assert [consts.get(n.input[1]) for n in rewritten.graph.node] == [[], [], []]
    assert all(n.input[0] not in consts for n in rewritten.graph.node)


def test_gemm_weights_are_transposed_and_beta_folded():
    model = shaped("""g (float[2,3] x) => (float[2,4] y) {
        y = Gemm<beta=0.5>(x, w, c)
    }""", {"w": rand(3, 4), "c": rand(4)})
    x = rand(2, 3)
    rewritten = assert_rewrites(model, ScalarConstantsPass, expected_ops=["Gemm"], inputs={"x": x})
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in rewritten.graph.node[0].attribute}
    assert attrs == {"beta": 1.0, "transB": 1}


def test_scalar_against_a_scalar_and_scaled_gemm_are_left_alone():
    model = shaped("""g (float x, float[2,3] m) => (float[1] y, float[2,4] z) {
        y = Add(x, one)
        z = Gemm<alpha=2.0>(m, w)
    }""", {"one": np.array([1.0], np.float32), "w": rand(3, 4)})
    refusals = assert_left_alone(model, ScalarConstantsPass())
    assert "change the output shape" in refusals[0] and "alpha" in refusals[1]
