"""Gather from a constant table by the model's ids -> ncnn's Embed layer, written after conversion.

Before:  table:Constant[V,D] --+
         ids:int[1,T] ---------+-- Gather(axis=0) --> rows[1,T,D] --> (the rest of the model)
After:   ids:int[1,T]            (a graph input still, read by no node)
         rows:float32[1,T,D], a new graph input --------------------> (the rest of the model)
         and, once onnx2ncnn has converted the rest, the embed stage (deploykit/stages/embed.py)
         replaces the Input layer of `rows` by `Embed 0=D 1=V 2=0 3=V*D` reading the ids blob,
         with the table's rows first in the .bin: the lookup pnnx writes for nn.Embedding, at T x D
         work for any V (embedding_gather's one-hot product costs T x V x D and stops at 4096 rows).
The ONNX stages in between are checked as for a lookup on the host: the pass lists a HostLookup
with `in_model` set, the run saves the table and feeds every check `table[ids]`; the ncnn model
is then checked whole by the verify stage, and the app feeds it the ids (as int32).
Exactness: the same rows. ncnn's Embed clamps an id outside [0, V) where ONNX's Gather counts a
negative one from the end; token ids are never negative.
Constraints: a float32 table of rank 2, axis 0; the ids are an integer graph input of static
shape [1, T] (onnx2ncnn's Input drops the batch axis, and Embed reads the 1-D Mat of T ids) read
directly by the Gather; the rows are not a graph output.
Needed by: onnx2ncnn, which prints "Gather not supported yet!" for the lookup.
Order (passes/__init__.py): after id_mask_lookup, whose padding-mask table it also takes, and the
mask passes; just before embedding_gather, which remains for a lookup this pass refuses, and for
`on_host: true` (then switch this pass off: `{name: embed_layer, enabled: false}`).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Refusal, dtype_of, lookup_table, register_pass, static_shape
from deploykit.onnx.host_lookup import HostLookup


@register_pass
class EmbedLayerPass(GraphPass):
    name = "embed_layer"
    targets = ("onnx2ncnn",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.host_lookups: list[HostLookup] = []  # in_model: the embed stage writes them as Embed

    def match(self, node: gs.Node) -> Optional[Union[tuple[gs.Node, np.ndarray, gs.Variable], Refusal]]:
        table = lookup_table(node)
        if table is None or isinstance(table, str):
            return table if table is None else self.refuse(node, f"{table}; Embed looks up the rows of a 2-D "
                                                                 "float32 table")
        ids, rows = node.inputs[1], node.outputs[0]
        if ids.inputs or isinstance(ids, gs.Constant) or ids not in self.walked_graph.inputs:
            return self.refuse(node, "the ids are not a graph input (Embed reads the ids the app feeds)")
        shape, dtype = static_shape(ids), dtype_of(ids)
        if dtype is None or not np.issubdtype(dtype, np.integer) or shape is None or len(shape) != 2 or shape[0] != 1:
            return self.refuse(node, f"the ids are {ids.dtype} of shape {ids.shape}, not integers of a static "
                                     "[1, T] (onnx2ncnn drops the batch axis, Embed reads T ids)")
        if rows in self.walked_graph.outputs or static_shape(rows) is None:
            return self.refuse(node, "the rows are a graph output or have no static shape")
        return node, table, ids

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, np.ndarray, gs.Variable]) -> None:
        gather, table, ids = match
        rows = gather.outputs[0]
        gather.outputs.clear()
        gather.inputs.clear()  # the ids stay a graph input, for the Embed layer to read
        rows.dtype = np.float32
        graph.inputs.append(rows)
        self.host_lookups.append(HostLookup(rows.name, ids.name, table, list(rows.shape), in_model=True))
