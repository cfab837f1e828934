"""BatchNormalization of tokens flattened to 2-D -> the same BatchNormalization on [1, C, N].

Before:  x[1,N,C] -- Flatten(axis=2) --> [N,C] -- BatchNormalization --> [N,C] -- Reshape --> (readers)
After:   x[1,N,C] -- Transpose(0,2,1) --> [1,C,N] -- BatchNormalization -- Transpose(0,2,1)
             --> [1,N,C] -- Reshape --> (readers)
timm's LeViT normalises every Linear's output this way: `bn(x.flatten(0, 1)).reshape_as(x)`.
Why: pnnx takes axis 0 of the [N,C] tensor for the batch axis and drops it, and that label follows
the data: the Reshape back to [1,N,C] is written as ncnn `Reshape 0=C 1=1`, and the layers after it
read N*C values out of a C-value blob (LeViT: NaN or garbage logits). The smallest graph showing it
is one LeViT attention block (tests/test_pass_token_batchnorm.py builds it).
Constraints: inference mode (one output); the BatchNormalization's input is [N,C] (rank 2),
either a Flatten/Reshape of a [1,N,C] tensor that nothing else reads, or any 2-D tensor (then
reshaped to [1,N,C] first); every reader of its output is a Reshape (which reads the same elements
in the same order from [1,N,C] as from [N,C]).
Exact: the same per-channel normalisation, with the same parameters, of the same numbers; the
Transposes and Reshapes only move data.
Needed by: pnnx; and onnx2ncnn, which flattens only from axis 1 ("Unsupported Flatten axis 2!")
and takes axis 0 for the batch as well (the small graph of the test verifies on it after the pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, register_pass, single_consumer, static_shape


@dataclass
class TokenNorm:
    norm: gs.Node
    tokens: gs.Tensor  # the [1, N, C] tensor, or the [N, C] input to reshape to it
    shape: list[int]   # [N, C]
    fixed: list[gs.Node]  # what the converters got wrong: the Flatten, the BatchNormalization, the Reshapes after


@register_pass
class TokenBatchnormPass(GraphPass):
    name = "token_batchnorm"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[TokenNorm]:
        if node.op != "BatchNormalization":
            return None
        x = node.inputs[0]
        shape = static_shape(x)
        if shape is None or len(shape) != 2:
            return None
        if len(node.outputs) > 1 or node.attrs.get("training_mode", 0):
            return self.refuse(node, "it runs in training mode")
        readers = node.outputs[0].outputs
        if not readers or any(r.op != "Reshape" or r.inputs[0] is not node.outputs[0] for r in readers):
            return self.refuse(node, "its [N, C] result is read by more than Reshapes (or is a graph output)")
        source = x.inputs[0] if x.inputs else None
        if (source is not None and source.op in ("Flatten", "Reshape") and single_consumer(x) is node
                and static_shape(source.inputs[0]) == [1, *shape]):
            return TokenNorm(node, source.inputs[0], shape, [source, node, *readers])
        return TokenNorm(node, x, shape, [node, *readers])

    def covers(self, node: gs.Node, match: TokenNorm) -> list[gs.Node]:
        return match.fixed

    def rewrite(self, graph: gs.Graph, match: TokenNorm) -> None:
        b = self.builder(graph, match.norm, match.norm.outputs[0].dtype)
        tokens, channels = match.shape
        x = match.tokens
        if static_shape(x) != [1, tokens, channels]:
            x = b.reshape(x, [1, tokens, channels], "tokens")
        across = b.op("Transpose", [x], "channels_first", attrs={"perm": [0, 2, 1]}, shape=[1, channels, tokens])
        out = match.norm.outputs[0]
        normed = b.var("normalised", shape=[1, channels, tokens])
        match.norm.inputs[0] = across
        match.norm.outputs[0] = normed
        back = b.op("Transpose", [normed], "tokens_first", attrs={"perm": [0, 2, 1]}, shape=[1, tokens, channels])
        b.replace_uses(out, back)
