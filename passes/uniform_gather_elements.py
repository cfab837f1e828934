"""GatherElements from a constant that is the same along the gathered axis -> that constant, tiled.

Before:  c:Constant[1,L] (all zeros) --+
         i:int64[1,T] -----------------+-- GatherElements(axis=1) --> y[1,T]
After:   y = Constant[1,T], c's one value along the axis, broadcast to i's shape
transformers' RoBERTa and BERT-family embeddings take token_type_ids this way from a registered
all-zero buffer (`torch.gather(buffer.expand(B, L), 1, position_ids)`), so the token-type
embedding Gather after it reads constant ids, which fold_shapes (run after this pass) folds.
Constraints: input 0 a constant, every slice along `axis` equal; i has a static shape. Exact:
y[..., j, ...] = c[..., i[...], ...] is the same value whatever i holds (an index outside c is an
error in ONNX, so no valid input is lost).
Needed by: pnnx, which leaves GatherElements (no ncnn layer), and onnx2ncnn, which has none either.
"""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, register_pass, static_shape


@register_pass
class UniformGatherElementsPass(GraphPass):
    name = "uniform_gather_elements"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, np.ndarray]]:
        if node.op != "GatherElements":
            return None
        data, shape = constant_value(node.inputs[0]), static_shape(node.inputs[1])
        if data is None:
            return self.refuse(node, "it gathers from a tensor computed at run time")
        axis = node.attrs.get("axis", 0) % data.ndim
        first = np.take(data, [0], axis=axis)
        if data.shape[axis] == 0 or not np.array_equal(data, np.broadcast_to(first, data.shape)):
            return self.refuse(node, f"the constant differs along axis {axis}, so the result depends on the indices")
        if shape is None:
            return self.refuse(node, "its indices have no static shape")
        # y[k] = data[k with axis replaced by i[k]]: along the other axes, the first shape[a] entries
        corner = first[tuple(slice(0, size) if a != axis else slice(None) for a, size in enumerate(shape))]
        return node, np.ascontiguousarray(np.broadcast_to(corner, shape))

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, np.ndarray]) -> None:
        node, value = match
        out = node.outputs[0]
        node.outputs.clear()
        b = self.builder(graph, node)
        if out in graph.outputs:
            b.write(b.const("value", value), out)
        else:
            b.replace_uses(out, b.const("value", value))
