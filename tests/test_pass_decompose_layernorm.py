"""Tests for passes/decompose_layernorm.py. No onnx2ncnn binary is at hand, so each rewrite is checked on onnxruntime
and with the pre-flight check for onnx2ncnn (deploykit.tools.preflight), which says whether every node is one
that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import pytest

from deploykit.passes.decompose_layernorm import DecomposeLayerNormPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, rand, shaped


LN_CHAIN = ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"]


@pytest.mark.parametrize("axis,axes", [(-1, [-1]), (1, [-2, -1])])
def test_layernorm_becomes_the_chain_onnx2ncnn_fuses(axis, axes):
    model = shaped(f"""g (float[1,5,8] x) => (float[1,5,8] y) {{
        y = LayerNormalization<axis={axis}, epsilon=0.001>(x, scale, bias)
    }}""", {"scale": rand(*[1, 5, 8][axis:]), "bias": rand(*[1, 5, 8][axis:])}, opset=17)
    x = rand(1, 5, 8) * 3 + 1
    # consecutive, as onnx2ncnn's fuse_layernorm needs them; approximate, see the pass's docstring
    rewritten = assert_rewrites(model, DecomposeLayerNormPass, expected_ops=LN_CHAIN, inputs={"x": x}, atol=1e-5)
    assert [list(n.attribute[0].ints) for n in rewritten.graph.node if n.op_type == "ReduceMean"] == [axes, axes]
    scalars = [i for i in rewritten.graph.initializer if i.name.endswith(("/two", "/epsilon"))]
    assert [list(i.dims) for i in scalars] == [[], []]  # 0-D, as onnx2ncnn's fusion requires
    assert_clean_for(rewritten, "onnx2ncnn")


def test_layernorm_over_a_computed_scale_is_refused():
    model = shaped("""g (float[1,5,8] x, float[8] s) => (float[1,5,8] y) {
        y = LayerNormalization(x, s)
    }""", opset=17)
    assert "not constant" in assert_left_alone(model, DecomposeLayerNormPass())[0]
