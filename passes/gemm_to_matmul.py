"""A Linear that onnxsim flattened into a 2-D Gemm -> the 3-D MatMul + Add it was, batch axis kept.

Before:  x[1,S,K] -- Reshape([S,K]) -- Gemm(W:Constant, b:Constant) --+-- Reshape([1, ...]) --> y
                                                                       +-- Reshape([1, ...]) --> y2
After:   x[1,S,K] -- MatMul(W as [K,N]) -- Add(b) -- [1,S,N] ---------+-- Reshape([1, ...]) --> y
                                                                       +-- Reshape([1, ...]) --> y2
         An x of another shape with a batch of 1 (x[1,S,H,D] with H*D = K) is first Reshaped to
         [1,S,K].
onnxsim's `fuse_matmul_add_bias_into_gemm_batched` writes the Before form for `nn.Linear` on a 3-D
input; onnx2ncnn drops shape[0] of the [S,K] Reshape as the batch axis (it writes only K), so the
Gemm gets the wrong matrix. MatMul with a 2-D constant weight is what onnx2ncnn writes as an
InnerProduct, which ncnn runs row by row on the [S,K] Mat that [1,S,K] is without its batch; the
Add of a constant becomes a BinaryOp. The Reshapes after the Gemm read the same elements in the
same order from [1,S,N] as from [S,N]. A Reshape before a Gemm that other nodes also read stays
for them (the Q, K and V projections share one).
Constraints: x and the Gemm's input have static shapes, x a batch of 1; the Gemm has alpha == beta
== 1, no transA, a 2-D constant B and a constant or absent C of one element or one row; every
reader of the Gemm is a Reshape whose static output keeps axis 0 of size 1. Exact (onnxruntime
gives equal outputs).
Needed by: onnx2ncnn. (pnnx converts the Gemm form correctly.) The pipeline also skips that
onnxsim fusion when the converter is onnx2ncnn (deploykit/stages/simplify.py); this pass covers
models imported already simplified.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, register_pass, static_shape

Linear = tuple[gs.Node, gs.Tensor, list[int], np.ndarray, Optional[np.ndarray]]  # Gemm, x, [1,S,K], W[K,N], b


@register_pass
class GemmToMatMulPass(GraphPass):
    name = "gemm_to_matmul"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Matched[Linear]:
        if node.op != "Gemm" or not node.inputs[0].inputs or node.inputs[0].inputs[0].op != "Reshape":
            return None
        x, rows = node.inputs[0].inputs[0].inputs[0], static_shape(node.inputs[0])
        shape, weight = static_shape(x), constant_value(node.inputs[1])
        if shape is None or rows is None or shape[0] != 1:
            return self.refuse(node, f"the Reshape before it reads {shape or 'a tensor of unknown shape'}, not a "
                                     "static tensor with a batch of 1")
        attrs, has_c = node.attrs, len(node.inputs) > 2 and node.inputs[2].name
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0):
            return self.refuse(node, "it has alpha or beta other than 1, or transA")
        if weight is None or weight.ndim != 2:
            return self.refuse(node, "its B is not a 2-D constant")
        weight = weight.T if attrs.get("transB", 0) else weight
        bias = constant_value(node.inputs[2]) if has_c else None
        if has_c and (bias is None or bias.size not in (1, weight.shape[1]) or bias.ndim > 2):
            return self.refuse(node, "its C is not a constant scalar or row")
        readers = node.outputs[0].outputs
        kept = [static_shape(r.outputs[0]) for r in readers if r.op == "Reshape" and r.inputs[0] is node.outputs[0]]
        if not readers or len(kept) != len(readers) or any(s is None or s[0] != 1 for s in kept) \
                or node.outputs[0] in self.walked_graph.outputs:
            return self.refuse(node, "it is not read by Reshapes only, each back to a batch of 1")
        return node, x, [1, *rows], weight, bias

    def rewrite(self, graph: gs.Graph, match: Linear) -> None:
        node, x, rows, weight, bias = match
        b, y = self.builder(graph, node, node.outputs[0].dtype), node.outputs[0]
        if list(x.shape) != rows:  # e.g. attention heads [1,S,H,D] merged and flattened in one Reshape
            x = b.op("Reshape", [x, b.const("rows_shape", rows, np.int64)], "rows", dtype=x.dtype, shape=rows)
        rows = [*rows[:2], weight.shape[1]]
        out = b.op("MatMul", [x, b.const("weight", np.ascontiguousarray(weight), weight.dtype)], "matmul",
                   out=b.var("product", shape=rows))
        if bias is not None:
            out = b.op("Add", [out, b.const("bias", bias.reshape(-1), bias.dtype)], "add",
                       out=b.var("biased", shape=rows))
        b.replace_uses(y, out)
        node.outputs.clear()
