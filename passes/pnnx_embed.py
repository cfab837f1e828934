"""Gather from a constant table with an explicit axis -> the same Gather that pnnx makes an Embed.

Before:  table:Constant[V,D] --+
         ids:int[...] ---------+-- Gather(axis=0) --> y[...,D]      (pnnx leaves a `Gather` layer)
After:   table:Constant[V,D] --+
         ids:int[...] ---------+-- Gather --------> y[...,D]        (pnnx writes ncnn `Embed`)
Constraints: input 0 is a rank-2 constant; axis is 0; the ids are integers. Exact: the node is
the same computation with its default axis written implicitly, and a name where it had none.
Needed by: pnnx, which recognises an embedding only in a Gather without an `axis` attribute (the
form the TorchScript exporter writes; the torch.export-based exporter writes `axis=0`). ncnn has
no Gather layer, so the left-over layer fails to load.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, register_pass


@register_pass
class PnnxEmbedPass(GraphPass):
    name = "pnnx_embed"
    targets = ("pnnx",)

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op != "Gather" or ("axis" not in node.attrs and node.name):
            return None
        table = constant_value(node.inputs[0])
        if table is None or table.ndim != 2:
            return None
        if node.attrs.get("axis", 0) not in (0, -2):
            return self.refuse(node, f"it gathers along axis {node.attrs['axis']}, not the table's rows")
        ids = node.inputs[1]
        if ids.dtype is not None and not np.issubdtype(np.dtype(ids.dtype), np.integer):
            return self.refuse(node, f"the ids are {np.dtype(ids.dtype)}, not integers")
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        node.attrs.pop("axis", None)
        if not node.name:
            node.name = self.builder(graph, node).prefix
