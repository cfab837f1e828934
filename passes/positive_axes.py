"""Negative axes (Softmax, Concat, Gather, Flatten, Split, Squeeze...) -> positive ones.

Before:  Concat<axis=-1>(a, b) on [1,3,4]          After:  Concat<axis=2>(a, b)
         Softmax(x) (no axis) at opset 13                  Softmax<axis=2>(x)   (the default written out)
         Unsqueeze<axes=[-2]>(x) on [1,3,4]                Unsqueeze<axes=[2]>(x)
onnx2ncnn takes axis 0 as the batch and writes `axis - 1`, which is wrong for a negative axis; it
assumes Softmax's default is 1 (opset 13 means -1). Reduce* axes are left negative on purpose:
onnx2ncnn passes negative reduction axes to ncnn unchanged (correct), and its LayerNorm fusion
looks for axes -1 / (-2, -1). Transpose perms cannot be negative in valid ONNX.
Constraints: a static rank. Exact (the same axis, spelled positive).
Needed by: onnx2ncnn.
"""

from __future__ import annotations


import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, rank, register_pass


@register_pass
class PositiveAxesPass(GraphPass):
    name = "positive_axes"
    targets = ("onnx2ncnn",)
    AXIS_OPS = ("Softmax", "Concat", "Gather", "Flatten", "Split")

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, dict, int]]:
        r = rank(node.inputs[0]) if node.inputs else None
        softmax_default = node.op == "Softmax" and "axis" not in node.attrs
        if node.op in self.AXIS_OPS and node.attrs.get("axis", 0) < 0 or softmax_default:
            if r is None:
                return self.refuse(node, "its input has no static rank; run shape inference (onnxsim) first")
            if "axis" not in node.attrs:
                return node, {"axis": None}, r  # the default depends on the opset: settled in rewrite
            return node, {"axis": node.attrs["axis"] + r}, r
        if node.op in ("Squeeze", "Unsqueeze") and any(a < 0 for a in node.attrs.get("axes", [])):
            if r is None:
                return self.refuse(node, "its input has no static rank; run shape inference (onnxsim) first")
            axes = node.attrs["axes"]
            out_rank = r + len(axes) if node.op == "Unsqueeze" else r
            return node, {"axes": [a % out_rank for a in axes]}, r
        return None

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, dict, int]) -> None:
        node, attrs, r = match
        if attrs.get("axis", 0) is None:  # Softmax: 1 before opset 13 (with 2-D coercion), -1 from 13 on
            attrs["axis"] = 1 if graph.opset < 13 else r - 1
        node.attrs.update(attrs)
