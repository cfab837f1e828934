"""Tests for passes/onnx2ncnn_legacy.py. No onnx2ncnn binary is at hand, so each rewrite is checked
on onnxruntime and with the pre-flight check for onnx2ncnn (deploykit.preflight), which says whether
every node is one that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from deploykit.passes.onnx2ncnn_legacy import (BatchedMatMul2dPass, DecomposeLayerNormPass, DropIdentityPass,
                                               LegacyAxesAttributesPass, PositiveAxesPass, ScalarConstantsPass)
from passkit import (assert_clean_for, assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, findings,
                     model_from_text, rand, shaped)

# legacy_axes_attributes

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


# positive_axes

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


# decompose_layernorm

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


# batched_matmul_2d

@pytest.mark.parametrize("b_shape,ops", [
    ([1, 3, 5, 2], ["Split", "Split"] + ["Reshape"] * 6 + ["MatMul"] * 3 + ["Reshape"] * 3 + ["Concat"]),
    ([1, 5, 2], ["Split", "Reshape", "Reshape", "Reshape", "Reshape"] + ["MatMul"] * 3 + ["Reshape"] * 3 + ["Concat"]),
], ids=["heads", "broadcast"])
def test_attention_matmul_is_split_into_2d_products(b_shape, ops):
    b_type = "float[" + ",".join(map(str, b_shape)) + "]"
    model = shaped(f"g (float[1,3,4,5] a, {b_type} b) => (float[1,3,4,2] y) {{ y = MatMul(a, b) }}")
    rewritten = assert_rewrites(model, BatchedMatMul2dPass, expected_ops=ops,
                                inputs={"a": rand(1, 3, 4, 5), "b": rand(*b_shape)})
    assert_clean_for(rewritten, "onnx2ncnn")
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in onnx.shape_inference.infer_shapes(rewritten).graph.value_info}
    matmul_inputs = [shapes[i] for n in rewritten.graph.node if n.op_type == "MatMul" for i in n.input]
    assert all(len(s) == 3 and s[0] == 1 for s in matmul_inputs)


def test_single_head_is_only_reshaped_and_a_batch_is_refused():
    model = shaped("g (float[1,1,4,5] a, float[1,1,5,2] b) => (float[1,1,4,2] y) { y = MatMul(a, b) }")
    assert findings(model, "onnx2ncnn") == []  # ncnn's MatMul takes it (converters/onnx2ncnn.py)
    rewritten = assert_rewrites(model, BatchedMatMul2dPass, expected_ops=["Reshape", "Reshape", "MatMul", "Reshape"],
                                inputs={"a": rand(1, 1, 4, 5), "b": rand(1, 1, 5, 2)})
    assert_clean_for(rewritten, "onnx2ncnn")
    batched = shaped("g (float[2,4,5] a, float[2,5,2] b) => (float[2,4,2] y) { y = MatMul(a, b) }")
    assert "batch of 1" in assert_left_alone(batched, BatchedMatMul2dPass())[0]


# drop_identity

DROP_GRAPH = """g (float[1,3,8,8] x) => (float[1,3,8,8] y, float[1,3,8,8] z) {
    a = Identity(x)
    b = Relu(a)
    c = Dropout(b)
    y = Sigmoid(c)
    z = Identity(b)
}"""


def test_identity_and_dropout_are_dropped_and_pnnx_still_runs_it(tmp_path):
    model = shaped(DROP_GRAPH)
    x = rand(1, 3, 8, 8)
    rewritten = assert_rewrites(model, DropIdentityPass, expected_ops=["Relu", "Sigmoid"], inputs={"x": x}, changed=3)
    assert [o.name for o in rewritten.graph.output] == ["y", "z"]
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, {"x": x}, tmp_path)


def test_a_cast_to_the_dtype_it_has_is_dropped_and_a_real_cast_kept():
    model = shaped("""g (float[1,4] x, int64[1,4] i) => (float[1,4] y, float[1,4] z) {
        c = Cast<to=1>(x)
        y = Relu(c)
        z = Cast<to=1>(i)
    }""")
    assert findings(model, "onnx2ncnn")[0] == ("Cast", "drop_identity")
    assert_rewrites(model, DropIdentityPass, expected_ops=["Relu", "Cast"],
                    inputs={"x": rand(1, 4), "i": np.arange(4, dtype=np.int64).reshape(1, 4)})


def test_dropout_in_training_mode_is_kept():
    model = shaped("""g (float[1,4] x) => (float[1,4] y) {
        ratio = Constant<value = float {0.5}>()
        on = Constant<value = bool {1}>()
        y = Dropout(x, ratio, on)
    }""")
    assert "training mode" in assert_left_alone(model, DropIdentityPass())[0]


# scalar_constants

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
