import numpy as np
import pytest

from deploykit.core.errors import StageError
from deploykit.passes.attention_bias import AttentionBiasPass
from passkit import (assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, f32, ints, model_from_text,
                     pnnx_convert, rand)

E, V, H, T = 32, 64, 4, 16  # the query width, a wider value input (MobileBERT's bottleneck), heads, tokens


def weight(fan_in: int, fan_out: int) -> np.ndarray:
    return rand(fan_in, fan_out) / np.float32(np.sqrt(fan_in))  # outputs of order 1


def attention(q_bias: bool = False):
    """Self-attention over 4 heads with q, k from x [1, T, E] and v from y [1, T, V], no projection biased
    (or the query's): the smallest graph on which pnnx aborts (`deploykit reduce` removes no node)."""
    q = "qb = MatMul(x, wq)\n q = Add(qb, bq)" if q_bias else "q = MatMul(x, wq)"
    return model_from_text(f"""
        g (float[1,16,32] x, float[1,16,64] y) => (float[1,16,32] z) {{
            {q}
            k = MatMul(x, wk)
            v = MatMul(y, wv)
            qr = Reshape(q, heads)
            kr = Reshape(k, heads)
            vr = Reshape(v, heads)
            qt = Transpose<perm=[0,2,1,3]>(qr)
            kt = Transpose<perm=[0,2,3,1]>(kr)
            vt = Transpose<perm=[0,2,1,3]>(vr)
            s = MatMul(qt, kt)
            ss = Mul(s, scale)
            p = Softmax<axis=-1>(ss)
            o = MatMul(p, vt)
            ot = Transpose<perm=[0,2,1,3]>(o)
            oh = Reshape(ot, tokens)
            z = MatMul(oh, wo)
        }}""", {"wq": weight(E, E), "wk": weight(E, E), "wv": weight(V, E), "wo": weight(E, E), "bq": rand(E),
                "heads": ints(1, T, H, E // H), "tokens": ints(1, T, E), "scale": f32(1 / np.sqrt(E // H))})


INPUTS = {"x": rand(1, T, E), "y": rand(1, T, V)}


def test_pnnx_aborts_on_attention_without_biases(tmp_path):
    with pytest.raises(StageError, match="crashed"):
        pnnx_convert(attention(), INPUTS, tmp_path)


def test_a_zero_bias_on_the_value_projection_lets_pnnx_write_multiheadattention(tmp_path):
    rewritten = assert_rewrites(attention(), AttentionBiasPass, inputs=INPUTS, expected_ops=[
        "MatMul", "MatMul", "MatMul", "Reshape", "Reshape", "Add", "Reshape", "Transpose", "Transpose", "Transpose",
        "MatMul", "Mul", "Softmax", "MatMul", "Transpose", "Reshape", "MatMul"])
    assert_ncnn_matches_onnxruntime(rewritten, INPUTS, tmp_path)
    assert "MultiHeadAttention" in (tmp_path / "model.ncnn.param").read_text()


def test_an_attention_with_a_bias_is_left_alone():
    assert assert_left_alone(attention(q_bias=True), AttentionBiasPass()) == []
