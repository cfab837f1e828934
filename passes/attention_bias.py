"""Attention whose q, k, v and output projections have no bias -> the value projection gets a zero one.

Before:  x -- MatMul(Wq) -- Reshape -- Transpose --+
         x -- MatMul(Wk) -- Reshape -- Transpose --+-- MatMul -- [Mul|Div] -- [Add] -- Softmax --+
         y -- MatMul(Wv) -- Reshape -- Transpose ------------------------------------------------+
                                        -- MatMul -- Transpose -- Reshape -- MatMul(Wo) --> out
After:   y -- MatMul(Wv) -- Add(0) -- Reshape -- ...          (all else as it was)
Why: pnnx fuses such a block into nn.MultiheadAttention with bias=False, and its ncnn writer for
that operator then aborts (std::out_of_range from map::at): pnnx crashes and writes no model.
Seen in MobileBERT's bottleneck attention (its zero-initialised biases are folded away on export);
the smallest graph is the block itself, in tests/test_pass_attention_bias.py. With one projection
biased, pnnx writes ncnn MultiHeadAttention with zero biases for the others, which ncnn runs right
(checked, also with a value width other than the query's, as MobileBERT has).
Constraints: each projection is a MatMul by a constant 2-D weight read only through Reshape and
Transpose into the attention; none has an Add of a constant after it (a biased one needs nothing).
Exact: v + 0 == v for every float (up to the sign of a zero).
Needed by: pnnx.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, known_value, register_pass, single_consumer

HEAD_MOVES = ("Reshape", "Transpose")
SCORE_STEPS = ("Mul", "Div", "Add")  # the scale and the additive mask between the scores and the Softmax


@register_pass
class AttentionBiasPass(GraphPass):
    name = "attention_bias"
    targets = ("pnnx",)

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op != "MatMul" or not node.inputs[0].inputs or node.inputs[0].inputs[0].op != "Softmax":
            return None
        value = self._projection_above(node.inputs[1])
        scores = self._scores(node.inputs[0].inputs[0])
        if value is None or scores is None:
            return None
        query, key = (self._projection_above(t) for t in scores.inputs)
        output = self._projection_below(node.outputs[0])
        if query is None or key is None or output is None:
            return None
        if any(self._biased(p) for p in (query, key, value, output)):
            return None
        return value

    def covers(self, node: gs.Node, value: gs.Node) -> list[gs.Node]:
        return [value]

    def rewrite(self, graph: gs.Graph, value: gs.Node) -> None:
        projected = value.outputs[0]
        width = known_value(value.inputs[1]).shape[1]
        b = self.builder(graph, value, projected.dtype)
        biased = b.op("Add", [projected, np.zeros(width, np.float32)], "zero_bias", shape=projected.shape)
        for reader in list(projected.outputs):
            if reader is not biased.inputs[0]:
                reader.inputs[reader.inputs.index(projected)] = biased

    @staticmethod
    def _is_projection(node: gs.Node) -> bool:
        weight = constant_value(node.inputs[1]) if node.op == "MatMul" else None
        return weight is not None and weight.ndim == 2 and weight.dtype == np.float32

    def _projection_above(self, tensor: gs.Tensor) -> Optional[gs.Node]:
        """The MatMul by a weight that `tensor` is reshaped/transposed from (a bias Add included), else None."""
        while tensor.inputs and tensor.inputs[0].op in HEAD_MOVES + ("Mul", "Div"):
            node = tensor.inputs[0]
            if node.op in ("Mul", "Div") and constant_value(node.inputs[1]) is None:
                return None
            tensor = node.inputs[0]
        if not tensor.inputs:
            return None
        node = tensor.inputs[0]
        if node.op == "Add" and node.inputs[0].inputs and constant_value(node.inputs[1]) is not None:
            node = node.inputs[0].inputs[0]
        return node if self._is_projection(node) else None

    def _projection_below(self, tensor: gs.Tensor) -> Optional[gs.Node]:
        while (reader := single_consumer(tensor)) is not None and reader.op in HEAD_MOVES:
            tensor = reader.outputs[0]
        reader = single_consumer(tensor)
        return reader if reader is not None and self._is_projection(reader) and reader.inputs[0] is tensor else None

    @staticmethod
    def _scores(softmax: gs.Node) -> Optional[gs.Node]:
        tensor = softmax.inputs[0]
        while tensor.inputs and tensor.inputs[0].op in SCORE_STEPS:
            tensor = tensor.inputs[0].inputs[0]
        return tensor.inputs[0] if tensor.inputs and tensor.inputs[0].op == "MatMul" else None

    @staticmethod
    def _biased(projection: gs.Node) -> bool:
        readers = projection.outputs[0].outputs
        return any(r.op == "Add" and any(constant_value(t) is not None for t in r.inputs) for r in readers)
