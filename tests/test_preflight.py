"""deploykit.tools.preflight: each rule fires on the smallest graph showing it, clean graphs give nothing,
and every pnnx rule is shown to be real by converting its graph with the installed pnnx.

The pnnx runs (test_pnnx_really_fails_on_it) check the outcome recorded in each rule's `verified`:
  unknown      pnnx leaves a layer ncnn cannot create (deploykit.ncnn.runtime.unknown_layers)
  wrong        the model converts and runs, and ncnn's output differs from onnxruntime's
  no_model     pnnx writes no model.ncnn.param at all
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from deploykit.core.errors import ConfigError, StageError
from deploykit.core.parity import run_onnx
from deploykit.ncnn.runtime import run_ncnn, unknown_layers
from deploykit.onnx.graph_pass import registry
from deploykit.passes.embedding_gather import EmbeddingGatherPass
from deploykit.tools.preflight import Finding, check_model
from deploykit.tools.preflight_rules import (AXES_ATTRIBUTE, CAST_ON_HOST, HOST, HOST_CUT, KEEP_BATCH, PAD_MODE,
                                             TARGETS)
from passkit import f32, ints, model_from_text, onnx2ncnn_outcome, pnnx_convert

TABLE = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
W4 = np.linspace(-1, 1, 4, dtype=np.float32)


@dataclass
class Case:
    rule: str
    target: str
    graph: str
    expected: list[tuple[str, str]]  # (op, fix) of every finding, in graph order
    reason: str                      # a piece of the reason given for `anchor`
    anchor: str = ""                 # op whose finding is this rule's (default: the only one)
    inits: dict = field(default_factory=dict)
    opset: int = 13
    domains: tuple = ()
    pnnx_shows: str = ""             # pnnx cases: unknown / wrong / no_model
    onnx2ncnn_shows: str = ""        # onnx2ncnn cases: refused / unknown / crash / wrong (passkit.onnx2ncnn_outcome)

    @property
    def id(self) -> str:
        return f"{self.target}-{self.rule}"

    def build(self) -> onnx.ModelProto:
        return model_from_text(self.graph, self.inits, self.opset, self.domains)


def _g(inputs: str, outputs: str, body: str) -> str:
    return f"g ({inputs}) => ({outputs}) {{ {body} }}"


X3 = "float[1,3,4] x"
MASK = _g("int64[1,6] ids", "float[1,6,4] emb, float[1,6] mask",
          "emb = Gather(t, ids)\n eq = Equal(ids, pad)\n mask = Cast<to=1>(eq)")
MASK_INITS = {"t": TABLE, "pad": ints(0)}
GELU = _g(X3, "float[1,3,4] z",
          "d = Div(x, r2)\n e = Erf(d)\n a = Add(e, one)\n m = Mul(x, a)\n z = Mul(m, half)")
GELU_INITS = {"r2": f32(1.4142135), "one": f32(1.0), "half": f32(0.5)}
CUSTOM = _g(X3, "float[1,3,4] z", "z = com.microsoft.Gelu(x)")
GREATER = _g("float[1,3,4] x, float[1,3,4] y", "bool[1,3,4] z", "z = Greater(x, y)")
TILE = _g(X3, "float[1,6,4] z", "z = Tile(x, r)")
INT_TO_FLOAT = _g("int64[1,3,4] x", "float[1,3,4] z", "z = Cast<to=1>(x)")
STEP_2 = _g("float[1,8,4] x", "float[1,4,4] z", "z = Slice(x, s, e, a, st)")
STEP_2_INITS = {"s": ints([0]), "e": ints([8]), "a": ints([1]), "st": ints([2])}
POW = _g(X3, "float[1,3,4] z", "z = Pow(x, e)")
ARGMAX = _g(X3, "int64[1,3] z", "z = ArgMax<axis=2, keepdims=0>(x)")
ARGMAX_READ = _g(X3, "int64[1,3] z", "i = ArgMax<axis=2, keepdims=0>(x)\n z = Add(i, one)")  # the graph reads it
RESHAPE_5D = _g("float[1,8,4,4] x", "float[1,8,4,4] z", "y = Reshape(x, s)\n t = Relu(y)\n z = Reshape(t, s2)")
RESHAPE_5D_INITS = {"s": ints(1, 2, 4, 4, 4), "s2": ints(1, 8, 4, 4)}

ONNX2NCNN_CASES = [
    Case("custom_domain", "onnx2ncnn", CUSTOM, [("com.microsoft::Gelu", f"{HOST} (export it with standard ONNX ops)")],
         "domain com.microsoft", domains=("com.microsoft",)),
    Case("identity", "onnx2ncnn", _g(X3, "float[1,3,4] z", "z = Identity(x)"), [("Identity", "drop_identity")],
         '"Identity not supported yet!"'),
    Case("shape_op", "onnx2ncnn", _g(X3, "int64[3] z", "z = Shape(x)"), [("Shape", "fold_shapes")],
         '"Shape not supported yet!"'),
    Case("id_mask", "onnx2ncnn", MASK,  # embed_layer leaves the lookup: its rows are a graph output
         [("Gather", "embedding_gather"), ("Equal", "id_mask_lookup"), ("Cast", "id_mask_lookup")],
         "Equal(ids, 0) padding mask", anchor="Equal", inits=MASK_INITS),
    Case("comparison", "onnx2ncnn", GREATER, [("Greater", "compare_to_arithmetic")], '"Greater not supported yet!"'),
    Case("where", "onnx2ncnn", _g("bool[1,3,4] c, float[1,3,4] x, float[1,3,4] y", "float[1,3,4] z",
                                  "z = Where(c, x, y)"), [("Where", "where_to_arithmetic")], "no mapping for Where"),
    Case("cast_of_comparison", "onnx2ncnn", _g("bool[1,3,4] c", "float[1,3,4] z", "z = Cast<to=1>(c)"),
         [("Cast", "compare_to_arithmetic")], "comparison result"),
    Case("cast_noop", "onnx2ncnn", _g(X3, "float[1,3,4] z", "z = Cast<to=1>(x)"), [("Cast", "drop_identity")],
         "keeps the dtype (float32)"),
    Case("cast", "onnx2ncnn", INT_TO_FLOAT, [("Cast", CAST_ON_HOST)],
         '"Cast not supported yet!"'),
    Case("expand", "onnx2ncnn", _g("float[1,1,4] x", "float[1,3,4] z", "z = Expand(x, s)"),
         [("Expand", "expand_broadcast")], "next node is a binary op", inits={"s": ints(1, 3, 4)}),
    Case("tile", "onnx2ncnn", TILE, [("Tile", "expand_broadcast")], '"Tile not supported yet!"',
         inits={"r": ints(1, 2, 1)}),
    Case("embedding_input_ids", "onnx2ncnn", _g("int64[1,6] ids", "float[1,6,4] z", "r = Gather(t, ids)\n z = Relu(r)"),
         [("Gather", "embed_layer")], "Embed layer reads", inits={"t": TABLE}),
    Case("embedding", "onnx2ncnn", _g("int64[1,2,3] ids", "float[1,6,4] z", "r = Reshape(ids, s)\n z = Gather(t, r)"),
         [("Gather", "embedding_gather")], "constant table", inits={"t": TABLE, "s": ints(1, 6)}),
    Case("gather_constant_index", "onnx2ncnn", _g("float[1,5,4] x", "float[1,2,4] z", "z = Gather<axis=1>(x, i)"),
         [("Gather", "gather_to_slice")], "constant index [0, 3] on axis 1", inits={"i": ints(0, 3)}),
    Case("gather", "onnx2ncnn", _g("float[1,5,4] x, int64[3] i", "float[1,3,4] z", "z = Gather<axis=1>(x, i)"),
         [("Gather", HOST_CUT)], "indices computed at run time"),
    Case("gather", "onnx2ncnn", _g("float[1,6,8] x", "float[6,8] z", "z = Gather<axis=0>(x, i)"),
         [("Gather", HOST_CUT)], "along axis 0", inits={"i": ints(0)}),
    Case("layernorm", "onnx2ncnn", _g(X3, "float[1,3,4] z", "z = LayerNormalization<axis=-1>(x, w, b)"),
         [("LayerNormalization", "decompose_layernorm")], "ReduceMean/Sub/Pow/Sqrt/Div", opset=17,
         inits={"w": W4, "b": W4}),
    Case("pow", "onnx2ncnn", POW, [("Pow", "integer_pow")], "exp(3 * log(x))", inits={"e": f32(3)}),
    Case("pow_square", "onnx2ncnn", POW, [("Pow", "pow_square")], "exp(2 * log(x))", inits={"e": f32(2)}),
    Case("arg_index_output", "onnx2ncnn", ARGMAX, [("ArgMax", "argmax_arithmetic")], "no layer that computes ArgMax"),
    Case("host_only", "onnx2ncnn", ARGMAX_READ, [("ArgMax", HOST_CUT)], "no layer that computes ArgMax",
         inits={"one": ints(1)}),
    Case("batch_axis", "onnx2ncnn", _g(X3, "float[1,3,4] a, float[0,3,4] b", "a, b = Split(x, s)"),
         [("Split", KEEP_BATCH)], '"Unsupported split axis !"', inits={"s": ints(1, 0)}),
    Case("batch_axis", "onnx2ncnn", _g(X3, "float[3,4] z", "z = Squeeze(x, a)"),
         [("Squeeze", KEEP_BATCH)], "on axis 0 of a 3-D tensor", inits={"a": ints([0])}),
    Case("axes_input", "onnx2ncnn", _g("float[1,3,1,4] x", "float[1,3,4] z", "z = Squeeze(x, a)"),
         [("Squeeze", "legacy_axes_attributes")], "squeezes every axis of size 1", inits={"a": ints([2])}),
    Case("reduce_axes_input", "onnx2ncnn", _g(X3, "float[1,3,1] z", "z = ReduceMean(x, a)"),
         [("ReduceMean", AXES_ATTRIBUTE)], "reduces over every axis", inits={"a": ints([2])}, opset=18),
    Case("split_input", "onnx2ncnn",
         _g("float[1,6,4] x", "float[1,2,4] a, float[1,4,4] b", "a, b = Split<axis=1>(x, s)"),
         [("Split", "legacy_axes_attributes")], "equal parts instead of [2, 4]", inits={"s": ints(2, 4)}),
    Case("pad_value_input", "onnx2ncnn", _g(X3, "float[1,3,6] z", "z = Pad<mode=\"constant\">(x, p, v)"),
         [("Pad", "legacy_axes_attributes")], "instead of 2.0",
         inits={"p": ints(0, 0, 1, 0, 0, 1), "v": f32(2.0)}),
    Case("negative_axis", "onnx2ncnn", _g(X3, "float[1,3,4] z", "z = Softmax<axis=-1>(x)"),
         [("Softmax", "positive_axes")], "axis -1 becomes -2"),
    Case("negative_axis", "onnx2ncnn", _g(X3, "float[1,3,2] a, float[1,3,2] b", "a, b = Split<axis=-1>(x)"),
         [("Split", "positive_axes")], "axis -1 becomes -2"),
    Case("negative_axis", "onnx2ncnn", _g("float[1,6,8] x", "float[1,6] z", "z = Gather<axis=-1>(x, i)"),
         [("Gather", "positive_axes")], "axis -1 becomes -2", inits={"i": ints(-1)}),
    Case("reshape_shape_input", "onnx2ncnn", _g("float[1,6,4] x, int64[2] s", "float[1,24] z", "z = Reshape(x, s)"),
         [("Reshape", "fold_shapes")], "computed at run time"),
    Case("reshape_batch", "onnx2ncnn", _g("float[1,6,4] x", "float[6,2,2] z", "z = Reshape(x, s)"),
         [("Reshape", KEEP_BATCH)], "makes axis 0 of size 6", inits={"s": ints(6, 2, 2)}),
    Case("reshape_5d", "onnx2ncnn", RESHAPE_5D, [("Reshape", "batch_axis_reshape")], "makes a 6-D tensor",
         inits={"s": ints(1, 2, 2, 2, 4, 4), "s2": ints(1, 8, 4, 4)}),
    Case("transpose_5d", "onnx2ncnn",
         _g("float[1,2,4,4] x", "float[1,2,4,4] z",
            "y = Unsqueeze<axes=[1]>(x)\n t = Transpose<perm=[0,1,2,4,3]>(y)\n z = Squeeze<axes=[1]>(t)"),
         [("Transpose", "batch_axis_reshape")], '"Unsupported transpose type !"', opset=11),
    Case("flatten_axis", "onnx2ncnn", _g("float[1,3,4,4] x", "float[3,16] z", "z = Flatten<axis=2>(x)"),
         [("Flatten", f"{HOST} (or flatten from axis 1 in the model)")], '"Unsupported Flatten axis 2!"'),
    Case("strided_slice", "onnx2ncnn", STEP_2, [("Slice", "strided_slice")], '"Unsupported slice step !"',
         inits=STEP_2_INITS),
    Case("reversed_slice", "onnx2ncnn", _g("float[1,8,4] x", "float[1,8,4] z", "z = Slice(x, s, e, a, st)"),
         [("Slice", HOST_CUT)], "reverse an axis",
         inits={"s": ints([-1]), "e": ints([-9]), "a": ints([1]), "st": ints([-1])}),
    Case("slice_inputs", "onnx2ncnn", _g("float[1,8,4] x, int64[1] s", "float[1,?,4] z", "z = Slice(x, s, e, a)"),
         [("Slice", "fold_shapes")], "computed at run time", inits={"e": ints([4]), "a": ints([1])}),
    Case("resize_inputs", "onnx2ncnn", _g("float[1,3,4,4] x, float[4] sc", "float[1,3,?,?] z", "z = Resize(x, , sc)"),
         [("Resize", "fold_shapes")], "scales and sizes only from constants"),
    Case("broadcast_2d", "onnx2ncnn", _g("float[1,4,6,6] x", "float[1,4,6,6] z", "z = Add(x, m)"),
         [("Add", "broadcast_rank")], "operand as a 2-D ncnn Mat", inits={"m": np.eye(6, dtype=np.float32)}),
    Case("resize_empty_input", "onnx2ncnn",
         _g("float[1,2,4,4] x", "float[1,2,16,16] z",
            'a = Resize<mode="linear">(x, , , s1)\n r = Relu(a)\n z = Resize<mode="linear">(r, , , s2)'),
         [("Resize", "resize_empty_inputs"), ("Resize", "resize_empty_inputs")], '"Unknown data type 0"',
         inits={"s1": ints(1, 2, 8, 8), "s2": ints(1, 2, 16, 16)}),
    Case("unmapped", "onnx2ncnn", _g(X3, "float[1,3,4] z", "z = Sign(x)"), [("Sign", HOST_CUT)],
         '"Sign not supported yet!"'),
]
# What the real onnx2ncnn and ncnn make of each rule's graph (passkit.onnx2ncnn_outcome), in case order.
ONNX2NCNN_SHOWS = {
    "custom_domain": "wrong", "identity": "refused", "shape_op": "refused", "id_mask": "refused",
    "comparison": "refused", "where": "refused", "cast_of_comparison": "refused", "cast_noop": "refused",
    "cast": "refused", "expand": "refused", "tile": "refused", "embedding_input_ids": "refused", "embedding": "refused",
    "gather_constant_index": "refused", "gather": ["refused", "wrong"], "layernorm": "refused", "pow": "wrong",
    "pow_square": "wrong", "arg_index_output": "refused", "host_only": "refused",
    "batch_axis": ["refused", "crash"], "axes_input": "crash", "reduce_axes_input": "crash", "split_input": "wrong",
    "pad_value_input": "crash", "negative_axis": ["wrong", "refused", "wrong"], "reshape_shape_input": "refused",
    "reshape_batch": "wrong", "reshape_5d": "crash", "transpose_5d": "refused", "flatten_axis": "refused",
    "strided_slice": "refused", "reversed_slice": "refused", "slice_inputs": "refused",
    "resize_inputs": "refused", "broadcast_2d": "wrong", "resize_empty_input": "refused", "unmapped": "refused",
}
for _case in ONNX2NCNN_CASES:
    _shows = ONNX2NCNN_SHOWS[_case.rule]
    _case.onnx2ncnn_shows = _shows.pop(0) if isinstance(_shows, list) else _shows

LINEAR_NORMS = _g("float[1,6,4] x", "float[1,6,4] y", """
    f = Flatten<axis=2>(x)\n n = BatchNormalization(f, s, b, mu, var)\n r = Reshape(n, shape)\n h = MatMul(r, w)
    f2 = Flatten<axis=2>(h)\n n2 = BatchNormalization(f2, s, b, mu, var)\n y = Reshape(n2, shape)""")
LINEAR_NORM_FINDINGS = [(op, "token_batchnorm") for op in ("Flatten", "BatchNormalization", "Reshape")] * 2
LINEAR_NORMS_INITS = {"s": W4 + 2, "b": W4, "mu": W4, "var": W4 + 2, "shape": ints(1, 6, 4), "w": TABLE[:4]}
ATTENTION = _g("float[1,4,8] x, float[1,4,16] y", "float[1,4,8] z", """
    q = MatMul(x, wq)\n k = MatMul(x, wk)\n v = MatMul(y, wv)
    qr = Reshape(q, heads)\n kr = Reshape(k, heads)\n vr = Reshape(v, heads)
    qt = Transpose<perm=[0,2,1,3]>(qr)\n kt = Transpose<perm=[0,2,3,1]>(kr)\n vt = Transpose<perm=[0,2,1,3]>(vr)
    s = MatMul(qt, kt)\n ss = Mul(s, half)\n p = Softmax<axis=-1>(ss)\n o = MatMul(p, vt)
    ot = Transpose<perm=[0,2,1,3]>(o)\n oh = Reshape(ot, tokens)\n z = MatMul(oh, wo)""")
ATTENTION_INITS = {"wq": np.eye(8, dtype=np.float32), "wk": np.eye(8, dtype=np.float32),
                   "wv": np.eye(16, 8, dtype=np.float32), "wo": np.eye(8, dtype=np.float32),
                   "heads": ints(1, 4, 2, 4), "tokens": ints(1, 4, 8), "half": f32(0.5)}

POSITIONS = _g("int64[1,8] ids", "float[1,8,4] y", """
    hit = Gather(keep, ids)\n m = Reshape(hit, shape)\n b = Cast<to=9>(m)\n i = Cast<to=6>(b)
    c = CumSum(i, axis)\n masked = Mul(c, i)\n p = Add(masked, pad)\n p64 = Cast<to=7>(p)\n y = Gather(table, p64)""")
POSITIONS_INITS = {"keep": (np.arange(10) != 1).astype(np.float32).reshape(10, 1), "shape": ints(1, 8),
                   "axis": np.array(1, np.int32), "pad": np.array(1, np.int32), "table": TABLE}
POSITION_FINDINGS = [(op, "index_arithmetic") for op in ("Cast", "Cast", "CumSum", "Mul", "Add", "Cast", "Gather")]
ROTARY_PAIRS = _g("float[1,4,8] x", "float[1,4,8] y", """
    q = Reshape(x, heads)\n even = Slice(q, zero, end, last, two)\n odd = Slice(q, one, end, last, two)
    minus = Neg(odd)\n a = Unsqueeze(minus, last)\n b = Unsqueeze(even, last)\n pairs = Concat<axis=-1>(a, b)
    y = Reshape(pairs, tokens)""")
ROTARY_PAIRS_INITS = {"heads": ints(1, 4, 2, 4), "tokens": ints(1, 4, 8), "zero": ints([0]), "one": ints([1]),
                      "two": ints([2]), "last": ints([-1]), "end": ints([99])}
ROTARY_FINDINGS = [(op, "interleave_slices") for op in ("Slice", "Slice", "Unsqueeze", "Unsqueeze", "Concat", "Reshape")]
TOKEN_TYPES = _g("int64[1,6] p", "float[1,6,4] y", "tt = GatherElements<axis=1>(zeros, p)\n y = Gather(t, tt)")

PNNX_CASES = [
    Case("interleave_slices", "pnnx", ROTARY_PAIRS, ROTARY_FINDINGS, "5th axis", anchor="Unsqueeze",
         inits=ROTARY_PAIRS_INITS, pnnx_shows="unknown"),
    Case("index_arithmetic", "pnnx", POSITIONS, POSITION_FINDINGS, "integer arithmetic on a mask",
         inits=POSITIONS_INITS, pnnx_shows="unknown"),
    Case("uniform_gather_elements", "pnnx", TOKEN_TYPES, [("GatherElements", "uniform_gather_elements")],
         "the same along its axis", inits={"zeros": np.zeros((1, 20), np.int64), "t": TABLE}, pnnx_shows="unknown"),
    Case("custom_domain", "pnnx", CUSTOM, [("com.microsoft::Gelu", f"{HOST} (export it with standard ONNX ops)")],
         "writes no model", domains=("com.microsoft",), pnnx_shows="no_model"),
    Case("id_mask", "pnnx", MASK, [("Equal", "id_mask_lookup"), ("Cast", "id_mask_lookup")],
         "lookup in the table", anchor="Equal", inits=MASK_INITS, pnnx_shows="unknown"),
    Case("comparison", "pnnx", GREATER, [("Greater", "compare_to_arithmetic")], "torch comparison",
         pnnx_shows="unknown"),
    Case("where", "pnnx",
         _g("float[1,3,4] x, float[1,3,4] y", "float[1,3,4] z", "c = Greater(x, y)\n z = Where(c, x, y)"),
         [("Greater", "compare_to_arithmetic"), ("Where", "where_to_arithmetic")], "torch.where", anchor="Where",
         pnnx_shows="unknown"),
    Case("cast_of_comparison", "pnnx",
         _g("float[1,3,4] x, float[1,3,4] y", "float[1,3,4] z", "c = Greater(x, y)\n z = Cast<to=1>(c)"),
         [("Greater", "compare_to_arithmetic"), ("Cast", "compare_to_arithmetic")], "Cast of a comparison",
         anchor="Cast", pnnx_shows="unknown"),
    Case("cast", "pnnx", INT_TO_FLOAT, [("Cast", CAST_ON_HOST)],
         "between integer and float", pnnx_shows="unknown"),
    Case("tile", "pnnx", TILE, [("Tile", "expand_broadcast")], "torch.tile", inits={"r": ints(1, 2, 1)},
         pnnx_shows="unknown"),
    Case("embedding_axis", "pnnx", _g("int64[1,6] ids", "float[1,6,4] z", "z = Gather<axis=0>(t, ids)"),
         [("Gather", "pnnx_embed")], "without an explicit `axis`", inits={"t": TABLE}, pnnx_shows="unknown"),
    Case("gather_index_vector", "pnnx", _g("float[1,5,4] x", "float[1,2,4] z", "z = Gather<axis=1>(x, i)"),
         [("Gather", "gather_to_slice")], "constant index [0, 3] on axis 1", inits={"i": ints(0, 3)},
         pnnx_shows="wrong"),
    Case("strided_slice", "pnnx", STEP_2, [("Slice", "strided_slice")], "steps [2]", inits=STEP_2_INITS,
         pnnx_shows="unknown"),
    Case("reshape_5d", "pnnx", RESHAPE_5D, [("Reshape", "batch_axis_reshape")], "Reshape to 5-D",
         inits=RESHAPE_5D_INITS, pnnx_shows="unknown"),
    Case("transpose_5d", "pnnx",
         _g("float[1,2,4,4] x", "float[1,2,4,4] z",
            "y = Unsqueeze(x, a)\n t = Transpose<perm=[0,1,2,4,3]>(y)\n z = Squeeze(t, a)"),
         [("Transpose", "batch_axis_reshape")], "5-D Transpose", inits={"a": ints([1])}, pnnx_shows="wrong"),
    Case("token_batchnorm", "pnnx", LINEAR_NORMS, LINEAR_NORM_FINDINGS, "batch axis", anchor="BatchNormalization",
         inits=LINEAR_NORMS_INITS, pnnx_shows="wrong"),
    Case("bias_free_attention", "pnnx", ATTENTION, [("MatMul", "attention_bias")], "bias=False",
         inits=ATTENTION_INITS, pnnx_shows="no_model"),
    Case("pad_mode", "pnnx", _g("float[1,3,4,4] x", "float[1,3,6,6] z", "z = Pad(x, p)"),
         [("Pad", PAD_MODE)], "`mode` attribute", inits={"p": ints(0, 0, 1, 1, 0, 0, 1, 1)},
         pnnx_shows="unknown"),
    Case("reduce_single_axis_input", "pnnx", _g(X3, "float[1,3,1] z", "z = ReduceSum(x, a)"),
         [("ReduceSum", "reduce_axes_input")], "empty axes list", inits={"a": ints([2])}, pnnx_shows="wrong"),
    Case("reduce_axis_input", "pnnx", _g(X3, "float[1,3,1] z", "z = ReduceMax(x, a)"),
         [("ReduceMax", AXES_ATTRIBUTE)], "one-element `axes` input", inits={"a": ints([2])}, opset=18,
         pnnx_shows="unknown"),
    Case("reduce_max_multi_axis", "pnnx", _g("float[1,2,3,4] x", "float[1,2,1,1] z", "z = ReduceMax<axes=[2,3]>(x)"),
         [("ReduceMax", f"{HOST} (or reduce one axis at a time)")], "several axes ([2, 3])", pnnx_shows="unknown"),
    Case("reduce_sumsquare_input", "pnnx", _g("float[1,2,3,4] x", "float[1,2,1,1] z", "z = ReduceSumSquare(x, a)"),
         [("ReduceSumSquare", AXES_ATTRIBUTE)], "`axes` as an input", inits={"a": ints(2, 3)}, opset=18,
         pnnx_shows="unknown"),
    Case("reduce_logsum", "pnnx", _g("float[1,2,3,4] x", "float[1,2,3,1] z", "z = ReduceLogSum<axes=[3]>(x)"),
         [("ReduceLogSum", HOST_CUT)], "different numbers", pnnx_shows="wrong"),
    Case("pow", "pnnx", POW, [("Pow", "integer_pow")], "2.4e+38 for x <= 0", inits={"e": f32(3)},
         pnnx_shows="wrong"),
    Case("arg_index_output", "pnnx", ARGMAX, [("ArgMax", "argmax_arithmetic")], "cannot run",
         pnnx_shows="unknown"),
    Case("argmax", "pnnx", ARGMAX_READ, [("ArgMax", HOST_CUT)], "cannot load", inits={"one": ints(1)},
         pnnx_shows="unknown"),
    Case("host_only", "pnnx", _g(X3, "float[1,3,4] z", "z = CumSum(x, a)"), [("CumSum", HOST_CUT)],
         "CumSum as a layer", inits={"a": ints([2])}, pnnx_shows="unknown"),
]

ONNX2NCNN_CASES += [
    Case("token_batchnorm", "onnx2ncnn", LINEAR_NORMS,
         LINEAR_NORM_FINDINGS, "flattens only from axis 1", anchor="Flatten", inits=LINEAR_NORMS_INITS,
         onnx2ncnn_shows="refused"),
    Case("interleave_slices", "onnx2ncnn", ROTARY_PAIRS, ROTARY_FINDINGS, "5th axis", anchor="Unsqueeze",
         inits=ROTARY_PAIRS_INITS, onnx2ncnn_shows="refused"),
    Case("index_arithmetic", "onnx2ncnn", POSITIONS, [("Gather", "embed_layer")] + POSITION_FINDINGS,
         "integer arithmetic on a mask", anchor="CumSum", inits=POSITIONS_INITS, onnx2ncnn_shows="refused"),
    Case("uniform_gather_elements", "onnx2ncnn", TOKEN_TYPES,
         [("GatherElements", "uniform_gather_elements"), ("Gather", "embedding_gather")], "the same along its axis",
         anchor="GatherElements", inits={"zeros": np.zeros((1, 20), np.int64), "t": TABLE},
         onnx2ncnn_shows="refused"),
]
CASES = ONNX2NCNN_CASES + PNNX_CASES

# Graphs each target takes as they are (the forms next to each rule that were checked to be fine).
CLEAN = {
    "onnx2ncnn": model_from_text(
        _g("float[1,3,8,8] x, float[1,4,1] y, float[1,5,4] ma, float[1,4,5] mb", "float[1,4] z, float[1,4,3] e, "
           "float[1,5,5] h", "c = Conv<kernel_shape=[3,3], pads=[1,1,1,1]>(x, w, b)\n r = Relu(c)\n"
           " p = MaxPool<kernel_shape=[2,2], strides=[2,2]>(r)\n g = GlobalAveragePool(p)\n"
           " f = Flatten<axis=1>(g)\n l = Gemm<transB=1>(f, fw, fb)\n z = Softmax<axis=1>(l)\n"
           " v = Expand(y, s)\n e = Add(v, k)\n"
           " h = MatMul(ma, mb)"),  # two computed 3-D operands: ncnn MatMul after the conversion
        {"w": np.full((3, 3, 3, 3), 0.1, np.float32), "b": np.zeros(3, np.float32),
         "fw": np.full((4, 3), 0.5, np.float32), "fb": W4, "s": ints(1, 4, 3), "k": np.ones((1, 4, 3), np.float32)}),
    "pnnx": model_from_text(
        _g("float[1,6,4] x, int64[1,6] ids", "float[1,6,4] z, float[1,6,4] emb, float[1,6] first",
           "m = MatMul(x, w)\n n = LayerNormalization<axis=-1>(m, w4, w4)\n d = Div(n, r2)\n e = Erf(d)\n"
           " a = Add(e, one)\n h = Mul(n, a)\n q = Mul(h, half)\n z = Softmax<axis=-1>(q)\n"
           " emb = Gather(t, ids)\n first = Gather<axis=2>(x, zero)"),
        {"w": np.eye(4, dtype=np.float32), "w4": W4, "t": TABLE, "zero": ints(0), **GELU_INITS}, opset=17),
}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_rule_finds_its_smallest_graph(case: Case):
    findings = check_model(case.build(), case.target)
    assert [(f.op, f.fix) for f in findings] == case.expected
    anchor = next(f for f in findings if f.op == (case.anchor or case.expected[0][0]))
    assert case.reason in anchor.reason
    assert anchor.node.startswith("#")  # the parsed graphs have unnamed nodes


def test_every_rule_has_a_case_and_names_a_known_fix():
    passes = registry()  # the live registry: a fix names a pass that exists, for the target it runs for
    covered = {(case.target, case.rule) for case in CASES}
    for target, rules in TARGETS.items():
        for rule in rules.rules:
            assert (target, rule.name) in covered, f"{target} rule {rule.name} has no test case"
            assert rule.when is None or callable(rule.when), rule.name
            assert rule.fix.startswith(HOST) or target in passes[rule.fix].targets, (target, rule.name, rule.fix)
            assert rule.reason.endswith("."), rule.name
            assert target != "pnnx" or rule.verified, f"pnnx rule {rule.name} says nothing about how it was checked"


@pytest.mark.parametrize("target", sorted(CLEAN))
def test_a_clean_graph_has_no_findings(target):
    assert check_model(CLEAN[target], target) == []


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_shape_computations_are_folded(target):
    chain = model_from_text(_g("float[1,6,4] x", "float[1,24] z",
                               "s = Shape(x)\n d = Gather(s, zero)\n u = Unsqueeze(d, ax)\n c = Concat<axis=0>(u, m1)\n"
                               " z = Reshape(x, c)"), {"zero": ints(0), "ax": ints([0]), "m1": ints([-1])})
    findings = check_model(chain, target)
    if target == "pnnx":  # it folds them itself: verified on this graph, one ncnn Reshape
        assert findings == []
    else:
        assert [(f.op, f.fix) for f in findings] == [("Shape", "fold_shapes"), ("Gather", "fold_shapes"),
                                                      ("Unsqueeze", "fold_shapes"), ("Reshape", "fold_shapes")]
        assert "every input is known at conversion time" in findings[1].reason


def test_fused_and_exempt_forms_are_not_reported():
    shuffle = model_from_text(_g("float[1,8,4,4] x", "float[1,8,4,4] z",
                                 "y = Reshape(x, s)\n t = Transpose<perm=[0,2,1,3,4]>(y)\n z = Reshape(t, s2)"),
                              {"s": ints(1, 2, 4, 4, 4), "s2": ints(1, 8, 4, 4)})
    assert check_model(shuffle, "pnnx") == [] and check_model(shuffle, "onnx2ncnn") == []
    flip = model_from_text(_g("float[1,8,4] x", "float[1,8,4] z", "z = Slice(x, s, e, a, st)"),
                           {"s": ints([-1]), "e": ints([-9223372036854775807]), "a": ints([1]), "st": ints([-1])})
    assert check_model(flip, "pnnx") == []  # pnnx writes ncnn Flip
    assert [f.fix for f in check_model(flip, "onnx2ncnn")] == [HOST_CUT]  # strided_slice refuses negative steps
    explicit = model_from_text(_g(X3, "float[1,3,4] z", "z = Softmax<axis=2>(x)"))
    assert check_model(explicit, "onnx2ncnn") == []
    opset_11 = model_from_text(_g(X3, "float[1,3,4] z", "z = Softmax(x)"), opset=11)  # default 1, as onnx2ncnn reads
    assert check_model(opset_11, "onnx2ncnn") == []


def test_constant_nodes_count_as_constants_and_names_are_kept():
    graph = model_from_text(_g("int64[1,6] ids", "float[1,6,4] z", "t = Constant<value=float[10,4] {"
                               + ",".join(str(v) for v in TABLE.reshape(-1).round(3)) + "}>()\n z = Gather(t, ids)"))
    graph.graph.node[1].name = "embed_tokens"
    assert check_model(graph, "onnx2ncnn") == [
        Finding("embed_tokens", "Gather", check_model(graph, "onnx2ncnn")[0].reason, "embedding_gather")]


def test_the_model_is_not_changed_and_to_dict_is_plain():
    case = next(case for case in CASES if case.id == "onnx2ncnn-broadcast_2d")
    original = case.build()
    before = original.SerializeToString()
    [finding] = check_model(original, "onnx2ncnn")
    assert original.SerializeToString() == before  # shape inference ran on a copy
    assert finding.to_dict() == {"node": "#0", "op": "Add", "reason": finding.reason, "fix": "broadcast_rank"}


def test_a_pad_mask_used_as_a_boolean_is_left_to_id_mask_lookup_then_where_to_arithmetic():
    graph = _g("int64[1,6] ids, float[1,6] s", "float[1,6,4] emb, float[1,6] z",
               "emb = Gather(t, ids)\n eq = Equal(ids, pad)\n z = Where(eq, s, s)")
    model = model_from_text(graph, MASK_INITS)
    assert [(f.op, f.fix) for f in check_model(model, "pnnx")] == [("Equal", "id_mask_lookup"),
                                                                    ("Where", "where_to_arithmetic")]


@pytest.mark.parametrize("target", ["pnnx", "onnx2ncnn"])
def test_a_host_only_op_comes_with_the_cut_at_line_to_paste(target):
    model = model_from_text(_g(X3, "int64[1,3] z", "r = Relu(x)\n i = ArgMax<axis=2, keepdims=0>(r)\n"
                                                   " z = Add(i, one)"), {"one": ints(1)})
    [finding] = check_model(model, target)
    assert finding.fix == HOST_CUT and finding.reason.endswith("The config line that cuts before it: `cut_at: [r]`.")
    # On a graph input there is nothing to cut before.
    [finding] = check_model(model_from_text(ARGMAX_READ, {"one": ints(1)}), target)
    assert "cut_at: [" not in finding.reason


@pytest.mark.parametrize("target", ["pnnx", "onnx2ncnn"])
def test_what_argmax_arithmetic_takes_is_its_own_match_s_answer(target):
    # An axis longer than float32 counts exactly: the pass refuses it, so the check does not offer it.
    too_long = model_from_text(_g("float[1,16777216] x", "int64[1] z", "z = ArgMax<axis=1, keepdims=0>(x)"))
    assert [(f.op, f.fix) for f in check_model(too_long, target)] == [("ArgMax", HOST_CUT)]
    at_opset_18 = model_from_text(ARGMAX, opset=18)  # its reductions would take axes as an input
    assert [(f.op, f.fix) for f in check_model(at_opset_18, target)] == [("ArgMax", HOST_CUT)]


def test_a_pad_mask_whose_ids_have_no_static_shape_is_not_offered_to_id_mask_lookup():
    graph = _g("int64[1,N] ids", "float[1,N,4] emb, float[1,N] mask",
               "emb = Gather(t, ids)\n eq = Equal(ids, pad)\n mask = Cast<to=1>(eq)")
    fixes = [(f.op, f.fix) for f in check_model(model_from_text(graph, MASK_INITS), "pnnx")]
    assert fixes == [("Equal", "compare_to_arithmetic"), ("Cast", "compare_to_arithmetic")]


def test_after_the_passes_a_node_its_pass_refused_says_why():
    model = model_from_text(_g("int64[1,6] ids", "float[1,6,4] emb", "emb = Gather(t, ids)"), {"t": TABLE})
    configured = [EmbeddingGatherPass(max_vocab=8)]
    [before] = check_model(model, "onnx2ncnn", configured)
    assert (before.fix, before.refused, before.advice()) == ("embedding_gather", "", "Fix: embedding_gather")
    [after] = check_model(model, "onnx2ncnn", configured, after_passes=True)
    assert after.fix == "embedding_gather" and "more than max_vocab=8" in after.refused
    assert after.advice().startswith("embedding_gather refused it: the table has 10 rows")
    assert after.to_dict()["refused"] == after.refused and "refused" not in before.to_dict()
    [default] = check_model(model, "onnx2ncnn", after_passes=True)  # the pass did not run: its fix stands
    assert default.refused == ""


def test_an_unknown_target_is_a_config_error():
    with pytest.raises(ConfigError, match="onnx2ncnn, pnnx"):
        check_model(CLEAN["pnnx"], "tnn")


# ---------------------------------------------------------------------------------------------
# The pnnx rules are real: convert each rule's graph with pnnx and see what ncnn makes of it


def _feeds(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    for value in graph.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = (rng.integers(0, len(TABLE), shape) if np.issubdtype(dtype, np.integer)
                             else rng.standard_normal(shape)).astype(dtype)
    return feeds


def pnnx_outcome(graph: onnx.ModelProto, workdir: Path) -> str:
    """What the installed pnnx and the ncnn runtime make of a graph (see the module docstring)."""
    feeds, outputs = _feeds(graph), [out.name for out in graph.graph.output]
    try:
        conversion = pnnx_convert(graph, feeds, workdir, "case.onnx")
    except StageError:
        return "no_model"
    if unknown_layers(conversion.param):
        return "unknown"
    got = run_ncnn(conversion.param, conversion.bin, [(b, feeds[b.onnx_name]) for b in conversion.inputs],
                   conversion.outputs)
    want = run_onnx(graph, feeds, stage="test")
    same = all(got[name].shape == want[name].shape and np.allclose(got[name], want[name], atol=1e-5)
               for name in outputs)
    return "ok" if same else "wrong"


@pytest.fixture(scope="module")
def pnnx_outcomes(tmp_path_factory) -> dict[str, str]:
    graphs = {case.id: case.build() for case in PNNX_CASES} | {"clean": CLEAN["pnnx"]}
    root = tmp_path_factory.mktemp("pnnx")
    with ThreadPoolExecutor(max_workers=2) as pool:  # each run is ~1.7 s of mostly one core
        futures = {key: pool.submit(pnnx_outcome, copy.deepcopy(graph), root / key) for key, graph in graphs.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", ONNX2NCNN_CASES, ids=lambda case: f"{case.id}-{case.onnx2ncnn_shows}")
def test_onnx2ncnn_really_fails_on_it(case: Case, onnx2ncnn, tmp_path):
    """Each onnx2ncnn rule is real: the binary refuses its graph, or ncnn crashes or miscomputes it."""
    graph = case.build()
    assert onnx2ncnn_outcome(graph, _feeds(graph), tmp_path) == case.onnx2ncnn_shows


def test_onnx2ncnn_converts_the_clean_graph_correctly(onnx2ncnn, tmp_path):
    assert onnx2ncnn_outcome(CLEAN["onnx2ncnn"], _feeds(CLEAN["onnx2ncnn"]), tmp_path) == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("case", PNNX_CASES, ids=lambda case: case.id)
def test_pnnx_really_fails_on_it(case: Case, pnnx_outcomes):
    assert pnnx_outcomes[case.id] == case.pnnx_shows


@pytest.mark.slow
def test_pnnx_converts_the_clean_graph_correctly(pnnx_outcomes):
    assert pnnx_outcomes["clean"] == "ok"
