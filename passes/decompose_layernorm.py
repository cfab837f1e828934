"""LayerNormalization (opset 17) -> the ReduceMean/Sub/Pow/Sqrt/Div chain onnx2ncnn fuses into LayerNorm.

Before:  x -- LayerNormalization(scale, bias, axis, epsilon) --> y
After:   x -- ReduceMean -- Sub -- Pow(2) -- ReduceMean -- Add(eps) -- Sqrt -- Div -- Mul(scale)
           -- Add(bias) --> y          consecutive, the fixed chain onnx2ncnn's fuse_layernorm reads
Constraints: a static rank; normalised over the last one or two axes (not axis 0); constant scale
and bias (ncnn LayerNorm stores them as weights); the mean and inverse deviation outputs unused.
Approximate: onnxruntime's kernel sums in another order (differences of a few ulp, tested at 1e-5).
Needed by: onnx2ncnn, which has no mapping for LayerNormalization.
"""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, rank, register_pass


@register_pass
class DecomposeLayerNormPass(GraphPass):
    name = "decompose_layernorm"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, list[int], np.ndarray, np.ndarray]]:
        if node.op != "LayerNormalization":
            return None
        r = rank(node.inputs[0])
        if r is None:
            return self.refuse(node, "its input has no static rank; run shape inference (onnxsim) first")
        axis = node.attrs.get("axis", -1) % r
        if axis not in (r - 1, r - 2) or axis == 0:
            return self.refuse(node, f"it normalises from axis {axis} of {r}; onnx2ncnn fuses only the last one or two")
        scale = constant_value(node.inputs[1])
        bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.zeros_like(scale)
        if scale is None or bias is None:
            return self.refuse(node, "its scale or bias is not constant (ncnn LayerNorm stores them as weights)")
        if any(out.outputs for out in node.outputs[1:]):
            return self.refuse(node, "its mean or inverse deviation output is used")
        return node, [-1] if axis == r - 1 else [-2, -1], scale, bias

    def rewrite(self, graph: gs.Graph, match) -> None:
        node, axes, scale, bias = match
        x, y = node.inputs[0], node.outputs[0]
        eps = node.attrs.get("epsilon", 1e-5)
        dtype = np.dtype(x.dtype or np.float32)
        b = self.builder(graph, node, x.dtype)
        axes_input = b.const("axes", axes, np.int64)

        def reduce_mean(name: str, data: gs.Tensor) -> gs.Tensor:
            if graph.opset >= 18:  # valid ONNX, but onnx2ncnn reads only the attribute: export at opset 17
                return b.op("ReduceMean", [data, axes_input], name)
            return b.op("ReduceMean", [data], name, attrs={"axes": axes})

        mean = reduce_mean("mean", x)
        diff = b.op("Sub", [x, mean], "diff")
        square = b.op("Pow", [diff, b.const("two", 2.0, dtype)], "square")
        var = reduce_mean("var", square)
        shifted = b.op("Add", [var, b.const("epsilon", eps, dtype)], "eps", out=b.var("shifted"))
        std = b.op("Sqrt", [shifted], "std")
        normed = b.op("Div", [diff, std], "normed")
        scaled = b.op("Mul", [normed, b.const("scale", scale, dtype)], "scale", out=b.var("scaled"))
        b.op("Add", [scaled, b.const("bias", bias, dtype)], "bias", out=y)
        node.outputs.clear()
