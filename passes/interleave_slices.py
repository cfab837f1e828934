"""Strided slices of the last axis stacked on a new last axis and flattened -> one product by a
constant signed selection matrix.

Rotary embeddings on interleaved pairs (GPT-J and many ports), `stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)`:
Before:  x[1,T,H,d] -- Slice(start 1, step 2) -- Neg -- Unsqueeze(-1) --+
         x ---------- Slice(start 0, step 2) -------- Unsqueeze(-1) --+-- Concat(-1) --> [1,T,H,d/2,2]
             -- Reshape([1,T,H,d]) --> r
After:   x[1,T,H,d] -- Reshape([1,T*H,d]) -- MatMul(R[d,d]) -- Reshape([1,T,H,d]) --> r
         R[2i+1, 2i] = -1, R[2i, 2i+1] = 1, all else 0 (x of more than 3 dims is multiplied as rows)
In general, with K pieces p_k = s_k * x[..., a_k::b_k] of m elements each (s_k = +-1),
r[..., K*j + k] = s_k * x[..., a_k + j*b_k], so R[a_k + j*b_k, K*j + k] = s_k.
Why: with heads after tokens the stack needs a 5th axis, which ncnn does not have (pnnx leaves
`Tensor.reshape`, ncnn refuses to load the ExpandDims that makes it: "unsqueeze failed").
Constraints: every piece a Slice of the same x along its last axis (constant start and end, step
> 0, the same count m), optionally negated, unsqueezed at the new last axis; the Concat along that
axis, then a Reshape (to any shape: it reads the product, reshaped). Runs before strided_slice,
which takes such Slices apart.
Exact for finite x: each element of r is one product x * (+-1) plus products by 0.
Needed by: pnnx and onnx2ncnn (neither has 5-D tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, known_shape, register_pass, static_shape


@dataclass
class Interleave:
    reshape: gs.Node
    x: gs.Tensor
    selection: np.ndarray  # [d, K*m]
    nodes: list[gs.Node]    # the Slices, Negs, Unsqueezes and the Concat it replaces


@register_pass
class InterleaveSlicesPass(GraphPass):
    name = "interleave_slices"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Optional[Interleave]:
        concat = node.inputs[0].inputs[0] if node.op in ("Reshape", "Flatten") and node.inputs[0].inputs else None
        if concat is None or concat.op != "Concat" or len(concat.inputs) < 2:
            return None
        stacked = static_shape(concat.outputs[0])
        if stacked is None or len(stacked) < 2 or concat.attrs.get("axis") % len(stacked) != len(stacked) - 1:
            return None
        found = [self._piece(t, len(stacked)) for t in concat.inputs]
        pieces = [p for p in found if p is not None]
        if len(pieces) != len(found):
            return None
        xs = {id(p[0]) for p in pieces}
        if len(xs) != 1 or len(concat.outputs[0].outputs) != 1:
            return None
        x = pieces[0][0]
        shape, out = static_shape(x), static_shape(node.outputs[0])
        count = stacked[-2]
        if shape is None or out is None or stacked[:-2] != shape[:-1]:
            return None
        selection = np.zeros((shape[-1], len(pieces) * count), np.float32)
        for k, (_, start, step, sign) in enumerate(pieces):
            rows = start + step * np.arange(count)  # within the axis: each Slice gave `count` elements
            selection[rows, len(pieces) * np.arange(count) + k] = sign
        nodes = [concat]
        for tensor in concat.inputs:
            while tensor.inputs and tensor.inputs[0].op in ("Unsqueeze", "Neg", "Slice"):
                nodes.append(tensor.inputs[0])
                tensor = tensor.inputs[0].inputs[0]
        return Interleave(node, x, selection, nodes)

    def covers(self, node: gs.Node, match: Interleave) -> list[gs.Node]:
        return [node, *match.nodes]

    @staticmethod
    def _piece(tensor: gs.Tensor, rank: int) -> Optional[tuple[gs.Tensor, int, int, float]]:
        """(x, start, step, sign) of Unsqueeze(-1)([Neg](Slice(x, start, ., last axis, step)))."""
        unsqueeze = tensor.inputs[0] if tensor.inputs else None
        if unsqueeze is None or unsqueeze.op != "Unsqueeze" or len(unsqueeze.inputs) < 2:
            return None
        axes = constant_value(unsqueeze.inputs[1])
        if axes is None or axes.size != 1 or int(axes.reshape(())) % rank != rank - 1:
            return None
        sliced, sign = unsqueeze.inputs[0], 1.0
        if sliced.inputs and sliced.inputs[0].op == "Neg":
            sliced, sign = sliced.inputs[0].inputs[0], -1.0
        node = sliced.inputs[0] if sliced.inputs else None
        if node is None or node.op != "Slice" or len(node.inputs) < 4:
            return None
        x = node.inputs[0]
        shape = static_shape(x)
        values = [constant_value(t) for t in node.inputs[1:5]] + [None] * (5 - len(node.inputs))
        starts, _, axes, steps = values[0], values[1], values[2], values[3]
        if shape is None or starts is None or axes is None or starts.size != 1 or axes.size != 1:
            return None
        if int(axes.reshape(())) % len(shape) != len(shape) - 1:
            return None
        step = 1 if steps is None else int(steps.reshape(()))
        start = int(starts.reshape(()))
        start = start + shape[-1] if start < 0 else start
        if step <= 0 or not 0 <= start < shape[-1]:
            return None
        return x, start, step, sign

    def rewrite(self, graph: gs.Graph, match: Interleave) -> None:
        b = self.builder(graph, match.reshape)
        out = match.reshape.outputs[0]
        match.reshape.outputs.clear()
        shape, width = known_shape(match.x), match.selection.shape[1]
        x = match.x
        if len(shape) > 3:  # as [1, rows, d]: a MatMul by a 2-D weight is onnx2ncnn's InnerProduct, row by row
            shape = [shape[0], prod(shape[1:-1]), shape[-1]]
            x = b.reshape(x, shape, "rows")
        flat = shape[:-1] + [width]
        if static_shape(out) == flat:
            b.op("MatMul", [x, b.const("selection", match.selection)], "matmul", out=out)
        else:  # the product is the Reshape's input, flattened
            product = b.op("MatMul", [x, b.const("selection", match.selection)], "matmul", shape=flat, dtype=x.dtype)
            b.reshape(product, known_shape(out), "reshape", out)
