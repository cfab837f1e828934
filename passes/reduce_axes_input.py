"""ReduceSum / ReduceMean over one axis given as an input -> over that axis and an added one of size 1.

Before:  x[1,64,4,256] -- ReduceSum(axes=[-1] as input) -----------------------------------> y[1,64,4,1]
After:   x -- Reshape([1,256,1,256]) -- ReduceSum(axes=[2, 3] as input) -- Reshape([1,64,4,1]) --> y
         x is grouped as [batch, the axes before, 1, the reduced one] for the last axis, as
         [batch, 1, the reduced one, the axes after] for the first after the batch (x.mean(1)).
Why: pnnx writes a one-element `axes` input as an empty axes list (ncnn `Reduction -23303=0`), and
ncnn then reduces nothing: y comes back as x. Two axes it reads right, but not an axis of size 1
that is the batch ("sum along batch axis is not supported yet"). The input form is the only one
ReduceSum has from opset 13 and ReduceMean from opset 18 (the torch.export-based exporter writes
18: Llama's RMSNorm; MobileViTv2's separable attention sums its context at opset 14).
Constraints: one constant axis, not axis 0; static shapes; the axes before it or those after it
(besides the batch) hold one element in all; else refused (export at an opset where axes are an
attribute).
Exactness: the same elements, in the same memory order, reduced in the same count (the axis added
has size 1). Only the order in which a runtime adds them may differ: onnxruntime gives the same
bits for the last axis and for the axis after the batch of an [N,C,H,W]-like tensor, and differs
by an ulp of the sum where the axes after the reduced one are all of size 1 ([1,3,8,1] over axis
2); ncnn sums in an order of its own in both forms.
Needed by: pnnx. (ReduceMax/ReduceMin over several axes pnnx leaves as they are: not taken.)
"""

from __future__ import annotations

from math import prod

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, known_shape, register_pass, static_shape


@register_pass
class ReduceAxesInputPass(GraphPass):
    name = "reduce_axes_input"
    targets = ("pnnx",)

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, list[int], list[int]]]:
        if node.op not in ("ReduceSum", "ReduceMean") or len(node.inputs) < 2 or not node.inputs[1].name:
            return None
        axes = constant_value(node.inputs[1])
        if axes is None or axes.size != 1:
            return None
        shape, out_shape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        if shape is None or out_shape is None:
            return self.refuse(node, "its input or output has no static shape")
        axis = int(axes.reshape(())) % len(shape)
        before, after = prod(shape[1:axis]), prod(shape[axis + 1:])
        if axis > 0 and after == 1:  # [batch, the axes before, 1, the reduced one]
            return node, [2, 3], [shape[0], before, 1, shape[axis]]
        if axis > 0 and before == 1:  # [batch, 1, the reduced one, the axes after]
            return node, [1, 2], [shape[0], 1, shape[axis], after]
        return self.refuse(node, f"it reduces axis {axis} of {shape}, which has axes of more than one element "
                                 f"before and after it (or is the batch); export at an opset where axes are an "
                                 f"attribute (<= 12 for ReduceSum, <= 17 for ReduceMean)")

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, list[int], list[int]]) -> None:
        node, axes, grouped = match
        b = self.builder(graph, node)
        node.inputs[0] = b.reshape(node.inputs[0], grouped, "grouped")
        node.inputs[1] = b.const("axes", axes, np.int64)
        node.attrs["keepdims"] = 1
        out = node.outputs[0]
        reduced = b.var("reduced", out.dtype)
        node.outputs[0] = reduced
        b.reshape(reduced, known_shape(out), "shape", out)
