"""One-element constants of binary ops -> 0-D scalars; Gemm normalised (transB, beta folded).

Before:  Add(one:Constant[1], x)                After:  Add(x, one:Constant[])     (commutative: swapped)
         Mul(x, half:Constant[1])                       Mul(x, half:Constant[])
         Gemm(A, B:Constant, C, transB=0, beta)         Gemm(A, B^T, beta * C, transB=1, beta=1)
onnx2ncnn's BinaryOp with_scalar takes only 0-D constants as input 1, and it writes InnerProduct
only for a Gemm with alpha=beta=1, transA=0, transB=1.
Constraints: a floating constant of one element, the other operand of a rank at least the
constant's (so the output shape stays); Gemm with alpha 1 and no transA. Exact.
Needed by: onnx2ncnn.
Not done: Gemm alpha != 1 or transA (no exact form).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import Builder, GraphPass, Refusal, constant_value, rank, register_pass

BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")


@dataclass
class ScalarOperand:
    """A one-element constant operand -> the same value 0-D, as input 1."""

    node: gs.Node
    swap: bool  # the constant was input 0 of a commutative op
    value: np.ndarray  # 0-D

    def rewrite(self, b: Builder) -> None:
        self.node.inputs[0] = self.node.inputs[1 if self.swap else 0]
        self.node.inputs[1] = b.const("scalar", self.value)


@dataclass
class GemmWeights:
    """Gemm with B not transposed or beta != 1 -> B transposed, transB=1, beta folded into C."""

    node: gs.Node
    weight: np.ndarray  # B as Gemm reads it with transB=1
    bias: Optional[np.ndarray]  # beta * C

    def rewrite(self, b: Builder) -> None:
        self.node.inputs[1] = b.const("weight", np.ascontiguousarray(self.weight))
        if self.bias is not None:
            self.node.inputs[2] = b.const("bias", self.bias)
        self.node.attrs.update(transB=1, beta=1.0)


@register_pass
class ScalarConstantsPass(GraphPass):
    name = "scalar_constants"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Optional[Union[ScalarOperand, GemmWeights, Refusal]]:
        if node.op == "Gemm":
            return self._gemm(node)
        if node.op not in BINARY or len(node.inputs) != 2:
            return None
        first, second = (constant_value(t) for t in node.inputs)
        swap = first is not None and second is None and node.op in ("Add", "Mul") and first.size == 1
        value = first if swap else second
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            return None
        if value.ndim == 0 and not swap:
            return None
        other = node.inputs[0 if not swap else 1]
        if value.ndim > 0 and not (rank(other) or 0) >= value.ndim:
            return self.refuse(node, "the other operand's rank is unknown or lower, so a 0-D constant would "
                                     "change the output shape")
        return ScalarOperand(node, swap, value.reshape(()))

    def _gemm(self, node: gs.Node) -> Optional[Union[GemmWeights, Refusal]]:
        b = constant_value(node.inputs[1])
        c = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        trans_b, beta = node.attrs.get("transB", 0), node.attrs.get("beta", 1.0)
        if b is None or (trans_b == 1 and (beta == 1.0 or c is None)):
            return None
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("transA", 0) != 0 or (beta != 1.0 and c is None):
            return self.refuse(node, "alpha != 1 or transA is set: folding them into the weights is not exact")
        return GemmWeights(node, b if trans_b else b.T, c if c is None else (c * np.float32(beta)).astype(c.dtype))

    def rewrite(self, graph: gs.Graph, rule: Union[ScalarOperand, GemmWeights]) -> None:
        rule.rewrite(self.builder(graph, rule.node))
