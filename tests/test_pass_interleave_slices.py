import pytest
import numpy as np

from deploykit.onnx.graph_pass import apply_to_model
from deploykit.passes.indexing import StridedSlicePass
from deploykit.passes.interleave_slices import InterleaveSlicesPass
from onnx import numpy_helper

from passkit import (assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints, model_from_text,
                     pnnx_leaves, rand)

# GPT-J's rotate_every_two on q of [B, T, H, d] (heads after tokens), as the TorchScript exporter
# writes it: stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2), then x * cos + rotated * sin
ROTARY = """g (float[1,16,64] x) => (float[1,16,64] y) {
    q = Reshape(x, heads)
    even = Slice(q, zero, end, last, two)
    odd = Slice(q, one, end, last, two)
    minus_odd = Neg(odd)
    a = Unsqueeze(minus_odd, last)
    b = Unsqueeze(even, last)
    pairs = Concat<axis=-1>(a, b)
    rotated = Reshape(pairs, heads)
    c = Mul(q, cos)
    s = Mul(rotated, sin)
    r = Add(c, s)
    y = Reshape(r, tokens)
}"""
INITS = {"heads": ints(1, 16, 4, 16), "tokens": ints(1, 16, 64), "zero": ints([0]), "one": ints([1]),
         "two": ints([2]), "last": ints([-1]), "end": ints([2**63 - 1]), "cos": rand(1, 16, 1, 16),
         "sin": rand(1, 16, 1, 16)}


@pytest.mark.slow
def test_rotary_pairs_stacked_on_a_5th_axis_are_one_product_on_ncnn(tmp_path):
    model, x = model_from_text(ROTARY, INITS), {"x": rand(1, 16, 64)}
    sliced, _ = apply_to_model(model, StridedSlicePass())  # what the auto passes did without this one
    assert "Tensor.reshape" in pnnx_leaves(sliced, x, tmp_path / "before")
    rewritten = assert_rewrites(model, InterleaveSlicesPass, inputs=x,
                                expected_ops=["Reshape", "Mul", "Reshape", "MatMul", "Reshape", "Mul", "Add",
                                              "Reshape"])
    selection = next(i for i in rewritten.graph.initializer if i.name.endswith("/selection"))
    r = np.zeros((16, 16), np.float32)
    r[np.arange(1, 16, 2), np.arange(0, 16, 2)] = -1
    r[np.arange(0, 16, 2), np.arange(1, 16, 2)] = 1
    np.testing.assert_array_equal(numpy_helper.to_array(selection), r)
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


def test_pieces_of_two_different_tensors_are_left_alone():
    text = ROTARY.replace("odd = Slice(q, one, end, last, two)", "p = Mul(q, two_f)\n    odd = Slice(p, one, end, last, two)")
    model = model_from_text(text, {**INITS, "two_f": np.array(2, np.float32)})
    assert assert_left_alone(model, InterleaveSlicesPass()) == []
