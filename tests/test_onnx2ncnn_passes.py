"""Every pass `passes: auto` runs for onnx2ncnn, on the real binary: the smallest graph showing its
pattern is converted with onnx2ncnn and run on the ncnn runtime before and after the pass. Before,
onnx2ncnn refuses it or ncnn crashes or computes wrong numbers, the way the pass's pre-flight rule
says (passkit.onnx2ncnn_outcome); after, ncnn reproduces onnxruntime's outputs. embed_layer, which
needs the embed stage after the conversion, and id_mask_lookup, whose table lookup it takes, are
checked through the pipeline in test_onnx2ncnn.py (the encoder without each: refused; with: verified).
Skipped without the binary (set ONNX2NCNN); in CI a missing binary fails."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from deploykit.onnx.graph_pass import apply_to_model, registry, resolve_passes
from passkit import assert_onnx2ncnn_fixed, f32, ints, model_from_text

TABLE = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
W4 = np.linspace(-1, 1, 4, dtype=np.float32)


@dataclass
class PassCase:
    name: str        # the pass
    graph: str
    shows: str       # what onnx2ncnn and ncnn make of the graph before the pass
    inits: dict = field(default_factory=dict)
    opset: int = 13
    atol: float = 1e-5
    args: dict = field(default_factory=dict)  # of the pass
    whole: bool = False  # fed whole numbers
    then: tuple[str, ...] = ()  # passes run after it, for what the case's graph also needs (a lookup by the ids)

    def build(self):
        return model_from_text(self.graph, self.inits, self.opset)


def _g(inputs: str, outputs: str, body: str) -> str:
    return f"g ({inputs}) => ({outputs}) {{ {body} }}"


X3 = "float[1,3,4] x"
CASES = [
    PassCase("fold_shapes", _g("float[1,6,4] x", "float[1,6,4] z", "f = Flatten<axis=1>(x)\n s = Shape(x)\n"
                                                                    " z = Reshape(f, s)"), "refused"),
    PassCase("where_to_arithmetic", _g("float[1,3,4] x, float[1,3,4] y", "float[1,3,4] z", "z = Where(c, x, y)"),
             "refused", {"c": np.random.default_rng(1).random((1, 3, 4)) > 0.5}),
    PassCase("compare_to_arithmetic", _g("float[1,3,4] x", "float[1,3,4] z", "c = Greater(x, zero)\n z = Cast<to=1>(c)"),
             "refused", {"zero": f32(0.0)}, args={"integer_valued": ["x"]}, whole=True),
    PassCase("embedding_gather", _g("int64[1,6] ids", "float[1,6,4] z", "z = Gather(t, ids)"), "refused",
             {"t": TABLE}),
    PassCase("integer_pow", _g(X3, "float[1,3,4] z", "z = Pow(x, e)"), "wrong", {"e": f32(3)}),
    PassCase("pow_square", _g(X3, "float[1,3,4] z", "z = Pow(x, e)"), "wrong", {"e": f32(2)}),
    PassCase("argmax_arithmetic", _g(X3, "int64[1,3] z", "z = ArgMax<axis=2, keepdims=0>(x)"), "refused"),
    PassCase("gather_to_slice", _g("float[1,5,4] x", "float[1,2,4] z", "z = Gather<axis=1>(x, i)"), "refused",
             {"i": ints(0, 3)}),
    PassCase("strided_slice", _g("float[1,8,4] x", "float[1,4,4] z", "z = Slice(x, s, e, a, st)"), "refused",
             {"s": ints([0]), "e": ints([8]), "a": ints([1]), "st": ints([2])}),
    PassCase("expand_broadcast", _g("float[1,1,4] x", "float[1,3,4] z", "z = Expand(x, s)"), "refused",
             {"s": ints(1, 3, 4)}),
    PassCase("batch_axis_reshape", _g("float[1,8,4,4] x", "float[1,8,4,4] z",
                                      "y = Reshape(x, s)\n t = Transpose<perm=[0,1,2,4,3]>(y)\n z = Reshape(t, s2)"),
             "refused", {"s": ints(1, 2, 4, 4, 4), "s2": ints(1, 8, 4, 4)}),
    PassCase("legacy_axes_attributes", _g("float[1,6,4] x", "float[1,2,4] a, float[1,4,4] b",
                                          "a, b = Split<axis=1>(x, s)"), "wrong", {"s": ints(2, 4)}),
    PassCase("positive_axes", _g(X3, "float[1,3,4] z", "z = Softmax<axis=-1>(x)"), "wrong"),
    PassCase("decompose_layernorm", _g(X3, "float[1,3,4] z", "z = LayerNormalization<axis=-1>(x, w, b)"), "refused",
             {"w": np.linspace(-1, 1, 4, dtype=np.float32), "b": np.linspace(1, 2, 4, dtype=np.float32)}, opset=17),
    PassCase("gemm_to_matmul", _g("float[1,4,6] x", "float[1,4,3] z",
                                  "f = Reshape(x, s)\n g = Gemm<transB=1>(f, w, b)\n z = Reshape(g, s2)"), "wrong",
             {"s": ints(4, 6), "w": np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32),
              "b": np.linspace(-1, 1, 3, dtype=np.float32), "s2": ints(1, 4, 3)}),
    PassCase("drop_identity", _g(X3, "float[1,3,4] z", "r = Relu(x)\n z = Identity(r)"), "refused"),
    PassCase("scalar_constants", _g("float[1,4] x", "float[1,3] z", "z = Gemm(x, w, b)"), "wrong",
             {"w": np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32),
              "b": np.linspace(-1, 1, 3, dtype=np.float32)}),
    PassCase("broadcast_rank", _g("float[1,4,6,6] x", "float[1,4,6,6] z", "z = Add(x, m)"), "wrong",
             {"m": np.eye(6, dtype=np.float32)}),
    PassCase("resize_empty_inputs", _g("float[1,2,4,4] x", "float[1,2,16,16] z",
                                       'a = Resize<mode="linear">(x, , , s1)\n r = Relu(a)\n'
                                       ' z = Resize<mode="linear">(r, , , s2)'), "refused",
             {"s1": ints(1, 2, 8, 8), "s2": ints(1, 2, 16, 16)}),
    PassCase("token_batchnorm", _g("float[1,6,4] x", "float[1,6,4] y",
                                   "f = Flatten<axis=2>(x)\n n = BatchNormalization(f, s, b, mu, var)\n"
                                   " y = Reshape(n, shape)"), "refused",
             {"s": W4 + 2, "b": W4, "mu": W4, "var": W4 + 2, "shape": ints(1, 6, 4)}),
    PassCase("interleave_slices", _g("float[1,4,8] x", "float[1,4,8] y",
                                     "q = Reshape(x, heads)\n even = Slice(q, zero, end, last, two)\n"
                                     " odd = Slice(q, one, end, last, two)\n minus = Neg(odd)\n"
                                     " a = Unsqueeze(minus, last)\n b = Unsqueeze(even, last)\n"
                                     " pairs = Concat<axis=-1>(a, b)\n y = Reshape(pairs, tokens)"), "refused",
             {"heads": ints(1, 4, 2, 4), "tokens": ints(1, 4, 8), "zero": ints([0]), "one": ints([1]),
              "two": ints([2]), "last": ints([-1]), "end": ints([99])}),
    PassCase("index_arithmetic", _g("int64[1,8] ids", "float[1,8,4] y",
                                    "hit = Gather(keep, ids)\n m = Reshape(hit, shape)\n b = Cast<to=9>(m)\n"
                                    " i = Cast<to=6>(b)\n c = CumSum(i, axis)\n masked = Mul(c, i)\n"
                                    " p = Add(masked, pad)\n p64 = Cast<to=7>(p)\n y = Gather(table, p64)"), "refused",
             {"keep": (np.arange(10) != 1).astype(np.float32).reshape(10, 1), "shape": ints(1, 8),
              "axis": np.array(1, np.int32), "pad": np.array(1, np.int32), "table": TABLE},
             then=("embedding_gather",)),
    PassCase("uniform_gather_elements", _g("int64[1,6] p, float[1,6,4] x", "float[1,6,4] y",
                                           "tt = GatherElements<axis=1>(zeros, p)\n e = Gather(t, tt)\n"
                                           " y = Add(e, x)"), "refused",
             {"zeros": np.zeros((1, 20), np.int64), "t": TABLE}, then=("fold_shapes",)),
    PassCase("dilated_conv_center", _g("float[1,3,4,4] x", "float[1,2,4,4] z",
                                       "z = Conv<dilations=[4,4], pads=[4,4,4,4], kernel_shape=[3,3]>(x, w)"),
             "ok", {"w": np.random.default_rng(4).standard_normal((2, 3, 3, 3)).astype(np.float32)}),
]


def feeds(model, whole: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == 7:  # int64 ids into TABLE
            out[value.name] = rng.integers(0, len(TABLE), shape).astype(np.int64)
        else:
            values = rng.standard_normal(shape) * 2
            out[value.name] = (np.round(values) if whole else values).astype(np.float32)
    return out


def test_every_onnx2ncnn_pass_has_a_case():
    auto = {p.name for p in resolve_passes(None, "onnx2ncnn")}
    assert auto - {case.name for case in CASES} == {"id_mask_lookup", "embed_layer"}  # through the pipeline


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_pass_turns_what_onnx2ncnn_gets_wrong_into_what_ncnn_runs_right(case, onnx2ncnn, tmp_path):
    before = case.build()
    after, result = apply_to_model(before, registry()[case.name](**case.args))
    assert result.changed >= 1, result.refusals
    for name in case.then:
        after, _ = apply_to_model(after, registry()[name]())
    assert_onnx2ncnn_fixed(before, after, feeds(before, case.whole), tmp_path, shows=case.shows, atol=case.atol)
