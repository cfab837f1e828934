"""Gather from a constant table -> an exact one-hot product, or (on_host) an input the app fills.

Before:  table:Constant[V,D] --+
         ids:int[1,T] ---------+-- Gather(axis=0) ------------------------------------> y[1,T,D]
After:   ids:float[1,T] -- Reshape([1,T,1]) -- Sub(arange[V]) -- Abs -- Neg -- Add(1) -- Relu
             -- MatMul(table[V,D]) --> y[1,T,D]
         onehot[t,v] = Relu(1 - |ids[t] - v|) is exactly 1 where v == ids[t] and 0 elsewhere, so
         every term of the product is table[v,d]*1 or *0: exact for integer ids below 2^24.
Feeding: the graph input that carries the ids becomes float32 (onnx2ncnn's ncnn model takes only
float blobs, and it has no Cast layer), so onnxruntime and ncnn must both be fed
`ids.astype(np.float32)`, the same integer values. Other users of that input get a Cast back to
its integer type, so they see what they saw before.
Constraints: input 0 is a finite float32 constant of rank 2 with V <= max_vocab rows; axis 0; the
ids have a static shape [1, T] (onnx2ncnn takes axis 0 as the batch, and its InnerProduct flattens
a [1,A,B,V] one-hot to one row: wrong on the real binary for [1,A,B] ids) and come
from an integer graph input, directly or through shape-only ops (Reshape, Unsqueeze, Squeeze,
Flatten, Transpose, Identity) that nothing else reads.
Needed by: onnx2ncnn, which prints "Gather not supported yet!" (or "Unsupported Gather axis: 0").
The new ops all map to ncnn layers: Reshape, BinaryOp, UnaryOp, ReLU and InnerProduct.

With the argument `on_host: true` the lookup leaves the model instead and the app does it: that
variant is embedding_on_host.py, which runs in this pass's place.
Order: after id_mask_lookup and the mask passes (passes/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from pydantic import PositiveInt, StrictBool

from deploykit.graph_pass import (GraphPass, PassArgs, Refusal, integer_input_source, lookup_table, register_pass,
                                  static_shape, variant)

AS_INT = "as_int"  # tag of the Cast this pass gives the other users of a converted input


class EmbeddingGatherArgs(PassArgs):
    max_vocab: PositiveInt = 4096  # the most table rows the one-hot product is built for
    on_host: StrictBool = False  # look the rows up in the app instead (embedding_on_host.py)


@dataclass
class EmbeddingMatch:
    gather: gs.Node
    table: np.ndarray
    source: gs.Variable          # the graph input the ids come from (int, or already converted)
    path: list[gs.Node]          # shape-only ops from the source to the Gather, in order
    ids_shape: list[int]


@register_pass
class EmbeddingGatherPass(GraphPass):
    name = "embedding_gather"
    targets = ("onnx2ncnn",)
    Args = EmbeddingGatherArgs
    args: EmbeddingGatherArgs

    @classmethod
    def create(cls, args: PassArgs) -> GraphPass:
        assert isinstance(args, EmbeddingGatherArgs)
        return variant(cls.name, "on_host")(args) if args.on_host else cls(args)

    def match(self, node: gs.Node) -> Optional[Union[EmbeddingMatch, Refusal]]:
        table = lookup_table(node)
        if table is None or isinstance(table, str):
            return table if table is None else self.refuse(node, table)
        if not np.isfinite(table).all():
            return self.refuse(node, "the table is not finite (0 * inf would not be 0)")
        if table.shape[0] > self.args.max_vocab:
            return self.refuse(node, f"the table has {table.shape[0]} rows, more than max_vocab={self.args.max_vocab}: "
                                     "the one-hot product would be too large; do the lookup on the host with the "
                                     "argument on_host: true")
        shape = static_shape(node.inputs[1])
        if shape is None or len(shape) != 2 or shape[0] != 1:
            return self.refuse(node, f"the ids have shape {node.inputs[1].shape}; a static [1, T] is needed "
                                     "(onnx2ncnn takes axis 0 as the batch, and writes the product as an "
                                     "InnerProduct, which flattens more axes)")
        found = integer_input_source(node.inputs[1], made_float_by=f"/{self.name}/{AS_INT}")
        if isinstance(found, str):
            return self.refuse(node, found)
        source, path = found
        return EmbeddingMatch(node, table, source, path, shape)

    def rewrite(self, graph: gs.Graph, match: EmbeddingMatch) -> None:
        b = self.builder(graph, match.gather, np.float32)
        ids = self._ids_as_float(graph, match)
        y = match.gather.outputs[0]
        match.gather.outputs.clear()
        b.one_hot_lookup(ids, match.ids_shape, match.table, y)

    def _ids_as_float(self, graph: gs.Graph, match: EmbeddingMatch) -> gs.Tensor:
        """Make the source input float32 (giving its other users a Cast back) and the path float."""
        source, path = match.source, match.path
        first = path[0] if path else match.gather
        if np.issubdtype(np.dtype(source.dtype), np.integer):
            others = [user for user in source.outputs if user is not first]
            if others:
                b = self.builder(graph, source)  # the Cast back belongs to the input: named after it
                as_int = b.var(AS_INT, source.dtype, source.shape)
                for user in others:
                    for index, tensor in enumerate(user.inputs):
                        if tensor is source:
                            user.inputs[index] = as_int
                to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(source.dtype))
                b.op("Cast", [source], AS_INT, attrs={"to": to}, out=as_int)
            source.dtype = np.float32
        if not path:
            return source
        path[0].inputs[0] = source  # it may have read the source through a Cast of ours
        for node in path:
            node.outputs[0].dtype = np.float32
        return path[-1].outputs[0]
