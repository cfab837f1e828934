"""Padding mask computed from token ids (Equal -> Cast) -> a lookup in a constant 0/1 table.

Before:  ids:int[B,T] --+-- Gather(table:Constant[V,D]) ------------------> emb[B,T,D]
                        +-- Equal(c) -- [Not] -- Cast(to=float) -----------> mask[B,T]
After:   ids:int[B,T] --+-- Gather(table:Constant[V,D]) ------------------> emb[B,T,D]
                        +-- Gather(hit:Constant[V,1]) -- Reshape([B,T]) ---> mask[B,T]
         hit[v] = 1.0 where (v == c), negated when a Not follows the Equal.
Constraints: c is a constant integer scalar; ids have a static shape and are proven to lie in
[0, V) because they also index a constant table (or `num_ids=V` is given); the Equal (and Not)
output feeds only the Cast. The lookup is exact.
Needed by: pnnx, which leaves `torch.eq` and `Tensor.to` in the .param (ncnn has no such layers)
but turns a Gather from a constant table into ncnn's Embed; onnx2ncnn has no Equal either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, register_pass, static_shape


@dataclass
class IdMaskMatch:
    equal: gs.Node
    cast: gs.Node
    ids: gs.Variable
    hit_table: np.ndarray


@register_pass
class IdMaskLookupPass(GraphPass):
    name = "id_mask_lookup"
    targets = ("pnnx", "onnx2ncnn")
    order = 30

    def __init__(self, num_ids: Optional[int] = None) -> None:
        self.num_ids = num_ids

    def match(self, node: gs.Node) -> Optional[IdMaskMatch]:
        if node.op != "Equal":
            return None
        ids, value = node.inputs
        if constant_value(ids) is not None:
            ids, value = value, ids
        c = constant_value(value)
        if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.integer):
            return None
        chain = [node]
        while len(chain[-1].outputs[0].outputs) == 1 and chain[-1].outputs[0].outputs[0].op == "Not":
            chain.append(chain[-1].outputs[0].outputs[0])
        consumers = chain[-1].outputs[0].outputs
        if len(consumers) != 1 or consumers[0].op != "Cast":
            return self.refuse(node, "its result is not only cast to a number (used as a boolean instead)")
        cast = consumers[0]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(cast.attrs["to"])
        if not np.issubdtype(dtype, np.floating):
            return self.refuse(node, f"it is cast to {dtype}, not to a float type")
        if static_shape(ids) is None:
            return self.refuse(node, "the ids have no static shape; give the input a fixed shape")
        vocab = self._id_bound(ids)
        if vocab is None:
            return self.refuse(node, "nothing bounds the ids; set the pass argument num_ids")
        negate = (len(chain) - 1) % 2 == 1
        hit = (np.arange(vocab) == int(c.reshape(()))) != negate
        return IdMaskMatch(node, cast, ids, hit.astype(dtype).reshape(vocab, 1))

    def _id_bound(self, ids: gs.Variable) -> Optional[int]:
        if self.num_ids is not None:
            return self.num_ids
        for user in ids.outputs:
            if user.op != "Gather" or user.attrs.get("axis", 0) != 0 or user.inputs[1] is not ids:
                continue
            table = constant_value(user.inputs[0])
            if table is not None and table.ndim == 2:
                return int(table.shape[0])
        return None

    def rewrite(self, graph: gs.Graph, match: IdMaskMatch) -> None:
        prefix = f"{match.equal.name}/{self.name}"
        mask = match.cast.outputs[0]
        looked_up = gs.Variable(f"{prefix}/hit", dtype=match.hit_table.dtype)
        shape = gs.Constant(f"{prefix}/shape", np.array(static_shape(match.ids), dtype=np.int64))
        table = gs.Constant(f"{prefix}/table", match.hit_table)
        match.cast.outputs.clear()
        # No explicit axis attribute: pnnx recognises Gather(table, ids) as an embedding only
        # when axis is left at its default.
        graph.nodes.append(gs.Node("Gather", name=f"{prefix}/lookup", inputs=[table, match.ids],
                                   outputs=[looked_up]))
        graph.nodes.append(gs.Node("Reshape", name=f"{prefix}/reshape", inputs=[looked_up, shape],
                                   outputs=[mask]))
