import pytest
import numpy as np

from deploykit.passes.instance_norm_1d import InstanceNorm1dPass
from passkit import (assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints, model_from_text,
                     pnnx_leaves, rand)

# GroupNorm(1, C) as torch exports it: reshape(B, 1, -1), InstanceNormalization, reshape back, affine
GROUP_NORM = """g (float[1,4,3,5] x) => (float[1,4,3,5] y) {
    flat = Reshape(x, one_group)
    n = InstanceNormalization(flat, s, b)
    back = Reshape(n, shape)
    scaled = Mul(back, gamma)
    y = Add(scaled, beta)
}"""
INITS = {"one_group": ints(1, 1, -1), "s": np.ones(1, np.float32), "b": np.zeros(1, np.float32),
         "shape": ints(1, 4, 3, 5), "gamma": rand(4, 1, 1), "beta": rand(4, 1, 1)}


@pytest.mark.slow
def test_groupnorm_of_one_group_is_normalised_as_4d_on_ncnn(tmp_path):
    model, x = model_from_text(GROUP_NORM, INITS), {"x": rand(1, 4, 3, 5)}
    assert "nn.InstanceNorm1d" in pnnx_leaves(model, x, tmp_path / "before")
    rewritten = assert_rewrites(model, InstanceNorm1dPass, inputs=x, expected_ops=[
        "Reshape", "Reshape", "InstanceNormalization", "Reshape", "Reshape", "Mul", "Add"])
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


def test_a_batch_of_two_is_refused():
    model = model_from_text("""g (float[2,4,15] x) => (float[2,4,15] y) {
        y = InstanceNormalization(x, s, b)
    }""", {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)})
    assert assert_left_alone(model, InstanceNorm1dPass()) == [
        "InstanceNormalization '': its input [2, 4, 15] has a batch of 2, not 1"]
