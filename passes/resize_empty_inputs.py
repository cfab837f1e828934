"""A Resize that leaves roi or scales out by an empty name -> the same inputs as empty constants.

Before:  x -- Resize(x, "", "", sizes:Constant) --> y          (F.interpolate(x, size=...) at opset 11+)
After:   x -- Resize(x, roi:Constant float[0], scales:Constant float[0], sizes) --> y
Why: onnx2ncnn reads a Resize's scales from its table of weights by the input's name; for the name
"" the lookup adds an empty entry to that table ("Unknown data type 0"), and from then on every
empty input name counts as a weight as well as an omitted input, so the next such Resize is written
with -1 inputs, a layer ncnn cannot load (DeepLabV3's two upsamplings). With named empty constants
it reads empty scales and takes the sizes, which is what the ONNX Resize means: an empty scales
tensor is the opset 11 way of leaving it out, still valid.
Constraints: the Resize reads sizes or scales from a constant (the other form onnx2ncnn refuses
anyway). Exact: the same operator and values.
Needed by: onnx2ncnn.
"""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, register_pass


@register_pass
class ResizeEmptyInputsPass(GraphPass):
    name = "resize_empty_inputs"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, list[int]]]:
        if node.op != "Resize" or len(node.inputs) < 3:
            return None
        empty = [index for index in (1, 2) if not node.inputs[index].name]
        if not empty:
            return None
        if not any(constant_value(t) is not None for t in node.inputs[2:] if t.name):
            return self.refuse(node, "it reads neither scales nor sizes from a constant")
        return node, empty

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, list[int]]) -> None:
        node, empty = match
        b = self.builder(graph, node)
        for index in empty:
            node.inputs[index] = b.const("roi" if index == 1 else "scales", np.zeros(0, np.float32))
