"""Static shapes and folding: shape arithmetic whose value is known at conversion time -> a constant.

Before:  x:float[2,3,4] -- Shape -- Gather(1) -- Unsqueeze -- Concat(-1) --+
         x ----------------------------------------------------------------+-- Reshape --> y[3,8]
After:   x:float[2,3,4] -- Reshape(shape:Constant[3,-1]) --> y[3,8]

Folds Shape, Size, Gather, Concat, Range, ConstantOfShape, Cast, Reshape, Unsqueeze, Squeeze,
Slice, arithmetic (Add Sub Mul Div Neg Min Max) and comparisons (Equal Less Greater Not Where).
A node folds when every input is a constant, or it is a Shape/Size of a tensor with a static
shape (the pipeline's graph inputs are static, and shapes are inferred before the pass). Its value
comes from onnxruntime running that one node (never from op semantics written here), so the fold
is exact. The engine visits nodes in topological order and a folded output becomes a gs.Constant
in place, so a whole chain folds in one run and a second run finds nothing.
Constraints: default-domain ops with one output. A value that is a graph output is never turned
into a constant: the node stays (refused) and only its consumers read the folded constant.
Needed by: onnx2ncnn, which has no layer for Shape, Gather, Range, ConstantOfShape, Equal, Where
or Cast ("... not supported yet!"), and the passes after this one, which read shapes and repeats
only from constants. pnnx folds such chains itself when given the input shapes (checked on the
graphs in the tests), so for pnnx the fold is a no-op in effect, kept so both paths see one graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.core.parity import run_onnx
from deploykit.graph_pass import GraphPass, Matched, constant_value, register_pass, static_shape

FOLDABLE = frozenset({
    "Shape", "Size", "Gather", "Concat", "Range", "ConstantOfShape", "Cast", "Reshape", "Unsqueeze",
    "Squeeze", "Slice", "Add", "Sub", "Mul", "Div", "Neg", "Min", "Max", "Equal", "Less", "Greater",
    "Not", "Where",
})
SHAPE_OPS = ("Shape", "Size")


@dataclass
class FoldMatch:
    node: gs.Node
    feeds: list[Optional[np.ndarray]]  # one per input; None where an optional input is omitted


@register_pass
class FoldShapesPass(GraphPass):
    name = "fold_shapes"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[FoldMatch]:
        if node.op not in FOLDABLE or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
            return None
        feeds: list[Optional[np.ndarray]]
        if node.op in SHAPE_OPS:
            shape = static_shape(node.inputs[0])
            if shape is None:
                return self.refuse(node, f"the shape of {node.inputs[0].name!r} is not static; "
                                         "give the model fixed input shapes")
            dtype = node.inputs[0].dtype or np.float32
            feeds = [np.zeros(shape, dtype=dtype)]  # only its shape is read
        else:
            feeds = [None if not tensor.name else constant_value(tensor) for tensor in node.inputs]
            if any(value is None for tensor, value in zip(node.inputs, feeds) if tensor.name):
                return None
        if not node.outputs[0].outputs:
            return self.refuse(node, "its value is a graph output (or unused); it stays computed")
        return FoldMatch(node, feeds)

    def rewrite(self, graph: gs.Graph, match: FoldMatch) -> None:
        node, out = match.node, match.node.outputs[0]
        value = self._evaluate(node, match.feeds, graph.opset)
        if not any(output is out for output in graph.outputs):
            node.outputs.clear()
            out.to_constant(value)  # in place: the consumers now read a gs.Constant
            return
        self.refuse(node, "its value is a graph output; it stays computed and only its consumers read "
                          "the folded constant")
        b = self.builder(graph, node)
        b.replace_uses(out, b.const("value", value))

    def _evaluate(self, node: gs.Node, feeds: list[Optional[np.ndarray]], opset: int) -> np.ndarray:
        """Run the node alone on onnxruntime, its inputs fed as graph inputs."""
        inputs = [gs.Variable.empty() if value is None else gs.Variable(f"in{i}", dtype=value.dtype, shape=value.shape)
                  for i, value in enumerate(feeds)]
        result = gs.Variable("out", dtype=node.outputs[0].dtype)
        single = gs.Graph(nodes=[gs.Node(node.op, attrs=dict(node.attrs), inputs=inputs, outputs=[result])],
                          inputs=[tensor for tensor in inputs if tensor.name], outputs=[result], opset=opset)
        fed = {f"in{i}": value for i, value in enumerate(feeds) if value is not None}
        return run_onnx(gs.export_onnx(single, do_type_check=False), fed, stage=f"pass:{self.name}")["out"]
