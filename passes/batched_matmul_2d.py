"""MatMul of two computed [1,H,M,K] x [1,H,K,N] tensors -> per-head [1,M,K] MatMuls ncnn Gemm runs.

Before:  A[1,H,M,K] --+
         B[1,H,K,N] --+-- MatMul --> y[1,H,M,N]
After:   A -- Split(axis 1) -- Reshape([1,M,K]) per head --+
         B -- Split(axis 1) -- Reshape([1,K,N]) per head --+-- MatMul -- Reshape([1,1,M,N]) per head
           -- Concat(axis 1) --> y        (with H == 1 only the Reshapes; a broadcast operand is not split)
onnx2ncnn writes a MatMul without a 2-D constant weight as a 2-D Gemm, right only for [1,M,K]
operands. Constraints: static shapes, batch 1 at axis 0, at most `max_heads` heads. Exact.
Needed by: onnx2ncnn.
"""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from pydantic import PositiveInt

from deploykit.graph_pass import (Builder, GraphPass, Matched, PassArgs, constant_value, rank, register_pass,
                                  static_shape)


class BatchedMatMul2dArgs(PassArgs):
    max_heads: PositiveInt = 64  # the most heads split into 2-D products


@register_pass
class BatchedMatMul2dPass(GraphPass):
    name = "batched_matmul_2d"
    targets = ()  # in no `auto`: deploykit's onnx2ncnn converter writes such a MatMul as ncnn's MatMul

    Args = BatchedMatMul2dArgs
    args: BatchedMatMul2dArgs

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, list[int], list[int]]]:
        if node.op != "MatMul" or any(constant_value(t) is not None for t in node.inputs):
            return None
        a, b = (static_shape(t) for t in node.inputs)
        if a is None or b is None:
            # an operand of unknown rank does not count as above 3-D
            above_3d = any(r is not None and r > 3 for r in map(rank, node.inputs))
            return self.refuse(node, "its operands have no static shapes") if above_3d else None
        if any(len(s) == 3 and s[0] != 1 for s in (a, b)) or max(len(a), len(b)) > 4:
            return self.refuse(node, f"operands {a} x {b}: onnx2ncnn takes axis 0 as a batch of 1, and only "
                                     "[1,H,M,K] x [1,H,K,N] is split into 2-D products")
        if max(len(a), len(b)) <= 3:
            return None  # [1,M,K] x [1,K,N] is the 2-D product onnx2ncnn's Gemm computes
        a, b = ([1] * (4 - len(s)) + s for s in (a, b))
        if a[0] != 1 or b[0] != 1:
            return self.refuse(node, f"operands {a} x {b} have a batch other than 1 at axis 0")
        if max(a[1], b[1]) > self.args.max_heads:
            return self.refuse(node, f"{max(a[1], b[1])} heads is more than max_heads={self.args.max_heads}")
        return node, a, b

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, list[int], list[int]]) -> None:
        node, a, b = match
        heads, m, n = max(a[1], b[1]), a[2], b[3]
        y = node.outputs[0]
        builder = self.builder(graph, node, y.dtype)
        per_head = [self._heads(builder, node, side, shape) for side, shape in zip("ab", (a, b))]
        products, out_shape = [], builder.const("out_shape", [1, 1, m, n], np.int64)
        for h in range(heads):
            lhs, rhs = (parts[h % len(parts)] for parts in per_head)
            product = builder.op("MatMul", [lhs, rhs], f"matmul{h}", out=builder.var(f"product{h}"))
            products.append(builder.op("Reshape", [product, out_shape], f"head{h}", out=y if heads == 1 else None))
        if heads > 1:
            builder.op("Concat", products, "concat", attrs={"axis": 1}, out=y)
        node.outputs.clear()

    def _heads(self, b: Builder, node: gs.Node, side: str, shape: list[int]) -> list[gs.Tensor]:
        """The operand as [1, rows, cols] matrices, one per head (one if it is broadcast)."""
        tensor, count = node.inputs["ab".index(side)], shape[1]
        parts = [tensor]
        if count > 1:
            parts = [b.var(f"{side}{h}", tensor.dtype) for h in range(count)]
            attrs = {"num_outputs": count} if b.graph.opset >= 18 else {}
            b.node("Split", [tensor], f"split_{side}", parts, attrs={"axis": 1, **attrs})
        matrix = b.const(f"{side}_shape", [1] + shape[2:], np.int64)
        return [b.op("Reshape", [part, matrix], f"{side}{h}_2d", dtype=tensor.dtype) for h, part in enumerate(parts)]
