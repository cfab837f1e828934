"""Gather from a constant table -> a graph input the app fills with the looked-up rows (on_host).

Before:  table:Constant[V,D] --+
         ids:int[...] ---------+-- Gather(axis=0) --> y[...,D] --> (the rest of the model)
After:   y:float32[...,D], a new graph input ----------------------> (the rest of the model)
The app feeds y = table[ids].reshape(y.shape). The pass lists a HostLookup
(deploykit/onnx/host_lookup.py) per new input in `host_lookups`; the run saves the table as
host_table_<k>.npy, records the recipe in report.json and deploykit.json, and feeds every later
check the rows computed that way. The ids input leaves the graph when nothing else reads it.
Exact: the same rows, looked up outside the model. For either converter: a table too large for
embedding_gather's one-hot product, or one to keep out of the .bin.
Every such lookup moves, also the [V,1] pad-mask table that id_mask_lookup makes of `ids == pad`:
then the ids leave the model, and onnx2ncnn needs neither float ids nor a one-hot product over V
for the mask; for pnnx, keeping the mask as an Embed would save the app one lookup in a table of
V floats, at the price of an integer input.
Constraints: a float32 table of rank 2 (any V, any values); axis 0; ids from an integer graph
input through shape-only ops that keep the element order (no Transpose); y has a static shape
and is not a graph output.
It is the variant of embedding_gather its argument `on_host: true` selects: write `[auto, {name:
embedding_gather, args: {on_host: true}}]`; for onnx2ncnn that entry configures the run `auto`
already has, for pnnx it adds one after the built-ins (configs/mobile_on_host.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Refusal, integer_input_source, lookup_table, register_pass, static_shape
from deploykit.onnx.host_lookup import HostLookup


@dataclass
class HostMatch:
    gather: gs.Node
    table: np.ndarray
    source: gs.Variable          # the integer graph input the ids come from
    path: list[gs.Node]          # shape-only ops from the source to the Gather, in order


@register_pass(variant="on_host")
class EmbeddingOnHostPass(GraphPass):
    name = "embedding_gather"
    targets = ("pnnx", "onnx2ncnn")

    def __init__(self, *args, **kwargs) -> None:  # made by embedding_gather's create, with its arguments
        super().__init__(*args, **kwargs)
        self.host_lookups: list[HostLookup] = []  # one per graph input the pass added

    def match(self, node: gs.Node) -> Optional[Union[HostMatch, Refusal]]:
        table = lookup_table(node)
        if table is None or isinstance(table, str):
            return table if table is None else self.refuse(node, table)
        rows = node.outputs[0]
        if static_shape(rows) is None:
            return self.refuse(node, f"the looked-up rows have no static shape ({rows.shape}), which a graph input "
                                     "needs")
        if rows in self.walked_graph.outputs:
            return self.refuse(node, "its result is a graph output, which would become an input of the same name")
        found = integer_input_source(node.inputs[1], made_float_by="/embedding_gather/as_int")
        if isinstance(found, str):
            return self.refuse(node, found)
        source, path = found
        if any(step.op == "Transpose" for step in path):
            return self.refuse(node, "the ids are transposed on the way; the rows would need the same transpose")
        return HostMatch(node, table, source, path)

    def rewrite(self, graph: gs.Graph, match: HostMatch) -> None:
        rows = match.gather.outputs[0]
        match.gather.outputs.clear()
        (match.path[0] if match.path else match.gather).inputs.clear()  # the ids no longer flow there
        rows.dtype = match.table.dtype
        graph.inputs.append(rows)
        if not match.source.outputs:
            graph.inputs.remove(match.source)
        self.host_lookups.append(HostLookup(rows.name, match.source.name, match.table, list(rows.shape)))
