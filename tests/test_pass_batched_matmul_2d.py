"""Tests for passes/batched_matmul_2d.py. No onnx2ncnn binary is at hand, so each rewrite is checked on onnxruntime
and with the pre-flight check for onnx2ncnn (deploykit.tools.preflight), which says whether every node is one
that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import onnx
import pytest

from deploykit.passes.batched_matmul_2d import BatchedMatMul2dPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, rand, shaped


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


def test_an_operand_of_unknown_rank_is_left_alone_and_a_symbolic_4d_one_refused():
    from onnx import TensorProto, helper

    def matmul(b_shape):
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "g",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, None),
                                   helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    assert assert_left_alone(matmul([1, 5, 2]), BatchedMatMul2dPass()) == []
    assert "no static shapes" in assert_left_alone(matmul([1, "h", 5, 2]), BatchedMatMul2dPass())[0]
