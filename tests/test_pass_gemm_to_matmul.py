"""gemm_to_matmul: onnxsim's Reshape -> Gemm -> Reshape form of a Linear back to MatMul + Add with the
batch axis kept; onnxruntime before/after and the pre-flight check for onnx2ncnn (no binary is at hand)."""

import pytest

from deploykit.passes.gemm_to_matmul import GemmToMatMulPass
from deploykit.tools.preflight_rules import KEEP_BATCH
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, ints, model_from_text, rand

WEIGHTS = {"w1": rand(6, 6), "b1": rand(6), "w2": rand(6, 6), "b2": rand(6), "flat": ints(4, 6)}


def test_two_projections_sharing_the_flattening_reshape_become_3d_matmuls():
    # what onnxsim writes for q = Linear(x).view(1, 4, 2, 3) and v = Linear(x) on x[1,4,6]
    model = model_from_text("""g (float[1,4,6] x) => (float[1,4,2,3] q, float[1,4,6] v) {
        f = Reshape(x, flat)
        gq = Gemm<transB=1>(f, w1, b1)
        q = Reshape(gq, heads)
        gv = Gemm(f, w2, b2)
        v = Reshape(gv, rows)
    }""", {**WEIGHTS, "heads": ints(1, 4, 2, 3), "rows": ints(1, 4, 6)})
    # the Reshapes of the [4,N] Gemm outputs (the [4,6] one from the batch of one converts right)
    assert findings(model, "onnx2ncnn") == [("Reshape", KEEP_BATCH)] * 2
    rewritten = assert_rewrites(model, GemmToMatMulPass, inputs={"x": rand(1, 4, 6)}, changed=2,
                                expected_ops=["MatMul", "MatMul", "Add", "Add", "Reshape", "Reshape"])
    assert_clean_for(rewritten, "onnx2ncnn")


def test_merged_heads_are_reshaped_to_rows_with_the_batch_axis_first():
    # the attention output projection: heads [1,4,2,3] merged and flattened by one Reshape
    model = model_from_text("""g (float[1,4,2,3] x) => (float[1,4,6] y) {
        f = Reshape(x, flat)
        g = Gemm<transB=1>(f, w1, b1)
        y = Reshape(g, rows)
    }""", {**WEIGHTS, "rows": ints(1, 4, 6)})
    rewritten = assert_rewrites(model, GemmToMatMulPass, expected_ops=["Reshape", "MatMul", "Add", "Reshape"],
                                inputs={"x": rand(1, 4, 2, 3)})
    assert_clean_for(rewritten, "onnx2ncnn")


@pytest.mark.parametrize("x_type,gemm,reader,reason", [
    ("float[2,2,6]", "Gemm<transB=1>(f, w1, b1)", "y = Reshape(g, rows)", "not a static tensor with a batch of 1"),
    ("float[1,4,6]", "Gemm<alpha=2.0>(f, w1, b1)", "y = Reshape(g, rows)", "alpha or beta"),
    ("float[1,4,6]", "Gemm(f, w1, b1)", "r = Relu(g)\n y = Reshape(r, rows)", "not read by Reshapes only"),
    ("float[1,4,6]", "Gemm(f, w1, full)", "y = Reshape(g, rows)", "not a constant scalar or row"),
], ids=["batch-2", "alpha", "relu-reader", "full-c"])
def test_near_misses_are_refused(x_type, gemm, reader, reason):
    model = model_from_text(f"""g ({x_type} x) => (float[1,4,6] y) {{
        f = Reshape(x, flat)
        g = {gemm}
        {reader}
    }}""", {**WEIGHTS, "rows": ints(1, 4, 6), "full": rand(4, 6)})
    refusals = assert_left_alone(model, GemmToMatMulPass())
    assert len(refusals) == 1 and reason in refusals[0], refusals
