"""Padding mask computed from token ids (Equal -> Cast) -> a lookup in a constant 0/1 table.

Before:  ids:int[B,T] --+-- Gather(table:Constant[V,D]) ------------------> emb[B,T,D]
                        +-- Equal(c) -- [Not] -- Cast(to=float) -----------> mask[B,T]
After:   ids:int[B,T] --+-- Gather(table:Constant[V,D]) ------------------> emb[B,T,D]
                        +-- Gather(hit:Constant[V,1]) -- Reshape([B,T]) ---> mask[B,T]
         hit[v] = 1.0 where (v == c), negated when a Not follows the Equal.
A mask used as a boolean (`causal | (ids == pad)`, `masked_fill(ids == pad, ...)`) keeps its
boolean tensor, now computed from the lookup:
Before:  ids -- Equal(c) -- [Not] --------------------------------------------> m:bool[B,T]
After:   ids -- Gather(hit:Constant[V,1]) -- Reshape([B,T]) -- Cast(to=bool) --> m:bool[B,T]
         so that where_to_arithmetic and compare_to_arithmetic, which refuse an integer tensor
         computed at run time but take a Cast of a float 0/1 value, can turn its users into
         arithmetic.
Constraints: c is a constant integer scalar; ids have a static shape and are proven to lie in
[0, V) because they also index a constant table (or `num_ids=V` is given). The lookup is exact.
Needed by: pnnx, which leaves `torch.eq` and `Tensor.to` in the .param (ncnn has no such layers)
but turns a Gather from a constant table into ncnn's Embed; onnx2ncnn has no Equal either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pydantic import PositiveInt

from deploykit.graph_pass import (GraphPass, Matched, PassArgs, constant_value, register_pass, single_consumer,
                                  static_shape)


@dataclass
class IdMaskMatch:
    equal: gs.Node
    last: gs.Node                # the node whose output the lookup replaces: a float Cast, or the
    as_bool: bool                # Equal/Not itself when the mask is used as a boolean
    ids: gs.Variable
    hit_table: np.ndarray
    chain: list[gs.Node]         # what the lookup replaces: the Equal, the Nots after it, a float Cast
    pad: int                     # the id compared with


class IdMaskLookupArgs(PassArgs):
    num_ids: Optional[PositiveInt] = None  # the ids lie in [0, num_ids); else a table they index bounds them


@register_pass
class IdMaskLookupPass(GraphPass):
    name = "id_mask_lookup"
    targets = ("pnnx", "onnx2ncnn")
    Args = IdMaskLookupArgs
    args: IdMaskLookupArgs

    def match(self, node: gs.Node) -> Matched[IdMaskMatch]:
        if node.op != "Equal":
            return None
        ids, value = node.inputs
        if constant_value(ids) is not None:
            ids, value = value, ids
        c = constant_value(value)
        if c is None or c.size != 1 or not np.issubdtype(c.dtype, np.integer):
            return None
        chain = [node]
        while (user := single_consumer(chain[-1].outputs[0])) is not None and user.op == "Not":
            chain.append(user)
        consumers = chain[-1].outputs[0].outputs
        last, dtype = chain[-1], np.dtype(np.float32)
        if len(consumers) == 1 and consumers[0].op == "Cast" and chain[-1].outputs[0] not in self.walked_graph.outputs:
            cast_to = onnx.helper.tensor_dtype_to_np_dtype(consumers[0].attrs["to"])
            if np.issubdtype(cast_to, np.floating):
                last, dtype = consumers[0], cast_to
        if static_shape(ids) is None:
            return self.refuse(node, "the ids have no static shape; give the input a fixed shape")
        vocab = self._id_bound(ids)
        if vocab is None:
            return self.refuse(node, "nothing bounds the ids; set the pass argument num_ids")
        negate = (len(chain) - 1) % 2 == 1
        hit = (np.arange(vocab) == int(c.reshape(()))) != negate
        chain += [last] if last.op == "Cast" else []
        return IdMaskMatch(node, last, last.op != "Cast", ids, hit.astype(dtype).reshape(vocab, 1), chain,
                           int(c.reshape(())))

    def covers(self, node: gs.Node, match: IdMaskMatch) -> list[gs.Node]:
        return match.chain

    def _id_bound(self, ids: gs.Variable) -> Optional[int]:
        if self.args.num_ids is not None:
            return self.args.num_ids
        for user in ids.outputs:
            if user.op != "Gather" or user.attrs.get("axis", 0) != 0 or user.inputs[1] is not ids:
                continue
            table = constant_value(user.inputs[0])
            if table is not None and table.ndim == 2:
                return int(table.shape[0])
        return None

    def rewrite(self, graph: gs.Graph, match: IdMaskMatch) -> None:
        b = self.builder(graph, match.equal, match.hit_table.dtype)
        mask = match.last.outputs[0]
        match.last.outputs.clear()
        # No explicit axis attribute: pnnx recognises Gather(table, ids) as an embedding only
        # when axis is left at its default.
        hit = b.op("Gather", [b.const("table", match.hit_table), match.ids], "lookup", out=b.var("hit"))
        shape = b.const("shape", static_shape(match.ids), np.int64)
        if not match.as_bool:
            b.op("Reshape", [hit, shape], "reshape", out=mask)
            return
        flat = b.op("Reshape", [hit, shape], "reshape", out=b.var("hit_reshaped"))
        b.op("Cast", [flat], "as_bool", attrs={"to": onnx.TensorProto.BOOL}, out=mask)
