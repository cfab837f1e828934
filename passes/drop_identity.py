"""Identity, inference Dropout and a Cast to the dtype the input has -> removed.

Before:  x -- Identity / Dropout (inference) / Cast(to = x's dtype) --> y -- (readers)
After:   x -- (readers)                  a graph output keeps its name: its producer writes it
Constraints: a Dropout's mask output unused and its training mode a constant false; not a copy of
a graph input or constant straight to a graph output. Exact.
Needed by: onnx2ncnn, which has no mapping for Identity or Cast; also run for pnnx, where it is
harmless (and removes the Identity a rewrite may leave before a graph output).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs
from onnx.helper import tensor_dtype_to_np_dtype

from deploykit.graph_pass import Builder, GraphPass, constant_value, register_pass


@register_pass
class DropIdentityPass(GraphPass):
    name = "drop_identity"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op not in ("Identity", "Dropout", "Cast"):
            return None
        if node.op == "Cast" and (node.inputs[0].dtype is None or
                                  np.dtype(node.inputs[0].dtype) != tensor_dtype_to_np_dtype(node.attrs["to"])):
            return None
        if node.op == "Dropout":
            if len(node.outputs) > 1 and node.outputs[1].outputs:
                return self.refuse(node, "its mask output is used")
            has_mode = len(node.inputs) > 2 and node.inputs[2].name
            training = constant_value(node.inputs[2]) if has_mode else np.array(False)
            if training is None or bool(training):
                return self.refuse(node, "it may run in training mode")
        x, y = node.inputs[0], node.outputs[0]
        if not y.outputs and not x.inputs:
            return self.refuse(node, "it copies a graph input or constant straight to a graph output")
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        if y in graph.outputs and x not in graph.outputs:  # keep the output's name: its producer writes it
            producer = x.inputs[0]
            producer.outputs[producer.outputs.index(x)] = y
            x, y = y, x
        Builder.replace_uses(y, x)
