"""A binary op whose 2-D ncnn operand meets a 3-D one -> that operand reshaped to the full rank.

Before:  a[1,C,H,W] --+
         b[H,W] ------+-- Add --> y[1,C,H,W]        (or b[1,H,W]; b a constant or computed)
After:   b[H,W] -- (as [1,1,H,W]) --+
         a[1,C,H,W] ----------------+-- Add --> y[1,C,H,W]
         A constant b gets the same values in the new shape; a computed one a Reshape.
Why: onnx2ncnn drops axis 0 of every blob and of a constant's shape when it is 1 (a [1,C,H,W]
blob is the 3-D Mat c=C, h=H, w=W; a [H,W] or [1,H,W] operand the 2-D Mat h=H, w=W), and the
ncnn runtime broadcasts a 2-D Mat against a 3-D one along c, not along h and w as ONNX does:
the real converter and ncnn give a [1,H,C,W]-sized result (the causal mask of a decoder block,
added to [1,heads,T,T] scores). As [1,1,H,W] the operand is the 3-D Mat c=1, which broadcasts
as ONNX says. 1-D operands ([W]) and one-element ones broadcast right and are left alone.
Constraints: the op is Add/Sub/Mul/Div/Max/Min/Pow; the output has a static shape of rank 4 with
a batch of 1; the operand has a static shape of rank 2 or 3 whose first axis is 1 or of rank 2
with more than one row (the forms onnx2ncnn writes as a 2-D Mat). Exact (a reshape).
Needed by: onnx2ncnn (pnnx writes its own broadcast layout).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, register_pass, static_shape

BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")


def is_2d_mat(shape: list[int]) -> bool:
    """Whether onnx2ncnn makes a tensor of this ONNX shape a 2-D ncnn Mat (batch of 1 dropped)."""
    return (len(shape) == 2 and shape[0] > 1) or (len(shape) == 3 and shape[0] == 1 and shape[1] > 1)


@register_pass
class BroadcastRankPass(GraphPass):
    """A 2-D operand of a binary op with a 4-D output -> reshaped to [1, 1, H, W]."""

    name = "broadcast_rank"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Optional[tuple[gs.Node, list[int]]]:
        if node.op not in BINARY_OPS or len(node.inputs) != 2:
            return None
        out = static_shape(node.outputs[0])
        if out is None or len(out) != 4 or out[0] != 1:
            return None
        shapes = [static_shape(t) for t in node.inputs]
        narrow = [i for i, shape in enumerate(shapes) if shape is not None and is_2d_mat(shape)]
        if not narrow:
            return None
        return node, narrow

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, list[int]]) -> None:
        node, narrow = match
        b = self.builder(graph, node)
        for index in narrow:
            operand = node.inputs[index]
            shape = [1] * (4 - len(operand.shape)) + list(operand.shape)
            value = constant_value(operand)
            if value is not None:
                node.inputs[index] = b.const(f"input{index}", np.ascontiguousarray(value.reshape(shape)))
            else:
                node.inputs[index] = b.reshape(operand, shape, f"input{index}")
