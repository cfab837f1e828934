import pytest
import numpy as np

from deploykit.core.parity import run_onnx
from deploykit.passes.token_batchnorm import TokenBatchnormPass
from passkit import (assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints, model_from_text,
                     rand, run_on_ncnn)

N, C = 12, 8
NORM = {"s": rand(C), "b": rand(C), "mu": rand(C), "var": np.abs(rand(C)) + 0.5, "shape": ints(1, N, C)}

# timm's LeViT LinearNorm twice: bn(x.flatten(0, 1)).reshape_as(x), a Linear, and again. pnnx's ncnn
# model is wrong on it: it takes the N tokens of the [N, C] tensor for the batch (`deploykit reduce`
# takes it one node further, to the second BatchNormalization as the output).
TWO_LINEAR_NORMS = """g (float[1,12,8] x) => (float[1,12,8] y) {
    f = Flatten<axis=2>(x)
    n = BatchNormalization(f, s, b, mu, var)
    r = Reshape(n, shape)
    h = MatMul(r, w)
    f2 = Flatten<axis=2>(h)
    n2 = BatchNormalization(f2, s, b, mu, var)
    y = Reshape(n2, shape)
}"""
X = {"x": rand(1, N, C)}


@pytest.mark.slow
def test_pnnx_gets_batchnorm_of_flattened_tokens_wrong_and_the_transposed_form_right(tmp_path):
    model = model_from_text(TWO_LINEAR_NORMS, {**NORM, "w": rand(C, C)})
    wrong = run_on_ncnn(model, X, tmp_path / "before")["y"].reshape(1, N, C)
    assert np.abs(wrong - run_onnx(model, X, stage="test")["y"]).max() > 1
    rewritten = assert_rewrites(model, TokenBatchnormPass, changed=2, inputs=X, expected_ops=[
        "Transpose", "BatchNormalization", "Transpose", "Reshape", "MatMul",
        "Transpose", "BatchNormalization", "Transpose", "Reshape"])
    assert_ncnn_matches_onnxruntime(rewritten, X, tmp_path / "after")


def test_a_2d_input_of_another_kind_is_reshaped_to_tokens_first():
    model = model_from_text("""g (float[12,8] x) => (float[1,12,8] y) {
        n = BatchNormalization(x, s, b, mu, var)
        y = Reshape(n, shape)
    }""", NORM)
    assert_rewrites(model, TokenBatchnormPass, inputs={"x": rand(N, C)},
                    expected_ops=["Reshape", "Transpose", "BatchNormalization", "Transpose", "Reshape"])


def test_a_result_read_by_more_than_reshapes_is_left_alone():
    model = model_from_text("""g (float[1,12,8] x) => (float[12,8] y) {
        f = Flatten<axis=2>(x)
        n = BatchNormalization(f, s, b, mu, var)
        y = Relu(n)
    }""", NORM)
    assert assert_left_alone(model, TokenBatchnormPass()) == [
        "BatchNormalization '': its [N, C] result is read by more than Reshapes (or is a graph output)"]
