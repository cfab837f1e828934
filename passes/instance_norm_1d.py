"""InstanceNormalization of a 3-D tensor -> the same on that tensor reshaped to 4-D [1, C, L, 1].

Before:  x[1,C,L] -- InstanceNormalization(scale[C], bias[C]) --> y[1,C,L]
After:   x[1,C,L] -- Reshape([1,C,L,1]) -- InstanceNormalization(scale, bias) -- Reshape([1,C,L]) --> y
GroupNorm with one group exports this way (`x.reshape(B, 1, -1)` then InstanceNormalization and
the affine after it), as in timm's MobileViTv2.
Why: pnnx writes the 3-D form as nn.InstanceNorm1d, which it does not lower to an ncnn layer
(the layer is left in the .param); the 4-D form becomes ncnn InstanceNorm.
Constraints: x is [1, C, L] with a static shape.
Exact: InstanceNormalization normalises each channel over all its other axes; [1,C,L,1] has the
same elements in each channel, so the same mean, variance and result (onnxruntime gives the
same bits).
Needed by: pnnx.
"""

from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, known_shape, register_pass, static_shape


@register_pass
class InstanceNorm1dPass(GraphPass):
    name = "instance_norm_1d"
    targets = ("pnnx",)

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op != "InstanceNormalization":
            return None
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) != 3:
            return None
        if shape[0] != 1:
            return self.refuse(node, f"its input {shape} has a batch of {shape[0]}, not 1")
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        b = self.builder(graph, node)
        shape = known_shape(node.inputs[0])
        node.inputs[0] = b.reshape(node.inputs[0], shape + [1], "to_4d")
        out = node.outputs[0]
        normed = b.var("normalised", out.dtype)
        node.outputs[0] = normed
        b.reshape(normed, shape, "to_3d", out)
