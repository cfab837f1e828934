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

With `on_host: true` the lookup leaves the model and the app does it (either converter: for a
table too large for the one-hot product, or one to keep out of the .bin):
Before:  table:Constant[V,D] --+
         ids:int[...] ---------+-- Gather(axis=0) --> y[...,D] --> (the rest of the model)
After:   y:float32[...,D], a new graph input ----------------------> (the rest of the model)
         The app feeds y = table[ids].reshape(y.shape). The pass lists a HostLookup
         (deploykit/host_lookup.py) per new input in `host_lookups`; the run saves the table as
         host_table_<k>.npy, records the recipe in report.json and deploykit.json, and feeds every
         later check the rows computed that way. The ids input leaves the graph when nothing else
         reads it. Exact: the same rows, looked up outside the model.
         Every such lookup moves, also the [V,1] pad-mask table that id_mask_lookup makes of
         `ids == pad`: then the ids leave the model, and onnx2ncnn needs neither float ids nor a
         one-hot product over V for the mask; for pnnx, keeping the mask as an Embed would save
         the app one lookup in a table of V floats, at the price of an integer input.
Constraints: a float32 table of rank 2 (any V, any values); axis 0; ids from an integer graph
input through shape-only ops that keep the element order (no Transpose); y has a static shape
and is not a graph output.
Order: after id_mask_lookup and the mask passes. Write `[auto, {name: embedding_gather, args:
{on_host: true}}]`: for onnx2ncnn that entry configures the run `auto` already has, for pnnx it adds
one after the built-ins (configs/mobile_on_host.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, register_pass, static_shape
from deploykit.host_lookup import HostLookup

SHAPE_ONLY_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Identity")
AS_INT = "as_int"  # suffix of the Cast this pass gives the other users of a converted input


@dataclass
class EmbeddingMatch:
    gather: gs.Node
    table: np.ndarray
    source: gs.Variable          # the graph input the ids come from (int, or already converted)
    path: list[gs.Node]          # shape-only ops from the source to the Gather, in order
    ids_shape: Optional[list[int]]


@register_pass
class EmbeddingGatherPass(GraphPass):
    name = "embedding_gather"
    targets = ("onnx2ncnn",)
    order = 42  # after id_mask_lookup (30) and where/compare_to_arithmetic (40, 41), which read a
                # Gather from a 0/1 table as whole numbers but not the one-hot product it becomes

    def __init__(self, max_vocab: int = 4096, on_host: bool = False) -> None:
        self.max_vocab = max_vocab
        self.on_host = on_host
        self.host_lookups: list[HostLookup] = []  # with on_host: one per graph input the pass added

    def match(self, node: gs.Node) -> Optional[EmbeddingMatch]:
        if node.op != "Gather":
            return None
        table = constant_value(node.inputs[0])
        if table is None:
            return None
        if table.ndim != 2:
            return self.refuse(node, f"the table has rank {table.ndim}, not 2")
        if node.attrs.get("axis", 0) not in (0, -2):
            return self.refuse(node, f"it gathers along axis {node.attrs['axis']}, not the table's rows")
        if table.dtype != np.float32:
            return self.refuse(node, f"the table is {table.dtype}, not float32")
        reason = self._host_constraint(node) if self.on_host else self._one_hot_constraint(node, table)
        if reason:
            return self.refuse(node, reason)
        found = self._integer_source(node.inputs[1])
        if isinstance(found, str):
            return self.refuse(node, found)
        source, path = found
        if self.on_host and any(step.op == "Transpose" for step in path):
            return self.refuse(node, "the ids are transposed on the way; the rows would need the same transpose")
        return EmbeddingMatch(node, table, source, path, static_shape(node.inputs[1]))

    def _one_hot_constraint(self, node: gs.Node, table: np.ndarray) -> Optional[str]:
        if not np.isfinite(table).all():
            return "the table is not finite (0 * inf would not be 0)"
        if table.shape[0] > self.max_vocab:
            return (f"the table has {table.shape[0]} rows, more than max_vocab={self.max_vocab}: the one-hot "
                    "product would be too large; do the lookup on the host with the argument on_host: true")
        shape = static_shape(node.inputs[1])
        if shape is None or len(shape) != 2 or shape[0] != 1:
            return (f"the ids have shape {node.inputs[1].shape}; a static [1, T] is needed (onnx2ncnn takes "
                    "axis 0 as the batch, and writes the product as an InnerProduct, which flattens more axes)")
        return None

    def _host_constraint(self, node: gs.Node) -> Optional[str]:
        rows = node.outputs[0]
        if static_shape(rows) is None:
            return f"the looked-up rows have no static shape ({rows.shape}), which a graph input needs"
        if rows in self.graph.outputs:
            return "its result is a graph output, which would become an input of the same name"
        return None

    def _integer_source(self, ids: gs.Tensor) -> Union[str, tuple[gs.Variable, list[gs.Node]]]:
        """Walk from the ids back to an integer graph input; a reason string when that fails."""
        path: list[gs.Node] = []
        tensor = ids
        while True:
            if isinstance(tensor, gs.Constant):
                return "the ids are a constant (fold the lookup instead)"
            if not tensor.inputs:  # a graph input
                if tensor.dtype is None or not np.issubdtype(np.dtype(tensor.dtype), np.integer):
                    return f"the ids come from the graph input {tensor.name!r} of type {tensor.dtype}, not integers"
                return tensor, path[::-1]
            producer = tensor.inputs[0]
            if producer.op == "Cast" and producer.name.endswith(f"/{self.name}/{AS_INT}"):
                return producer.inputs[0], path[::-1]  # an input this pass already made float
            if producer.op not in SHAPE_ONLY_OPS:
                return f"the ids are computed by {producer.op} {producer.name!r}; only shape-only ops keep them integer"
            if len(tensor.outputs) != 1:
                return f"the ids after {producer.op} {producer.name!r} are also used elsewhere"
            path.append(producer)
            tensor = producer.inputs[0]

    def rewrite(self, graph: gs.Graph, match: EmbeddingMatch) -> None:
        if self.on_host:
            self._move_to_host(graph, match)
        else:
            self._one_hot(graph, match)

    def _move_to_host(self, graph: gs.Graph, match: EmbeddingMatch) -> None:
        rows = match.gather.outputs[0]
        match.gather.outputs.clear()
        (match.path[0] if match.path else match.gather).inputs.clear()  # the ids no longer flow there
        rows.dtype = match.table.dtype
        graph.inputs.append(rows)
        if not match.source.outputs:
            graph.inputs.remove(match.source)
        self.host_lookups.append(HostLookup(rows.name, match.source.name, match.table, list(rows.shape)))

    def _one_hot(self, graph: gs.Graph, match: EmbeddingMatch) -> None:
        prefix = f"{match.gather.name or match.gather.outputs[0].name}/{self.name}"
        ids = self._ids_as_float(graph, match)
        vocab, width = match.table.shape
        y = match.gather.outputs[0]
        match.gather.outputs.clear()

        def var(name: str, shape: list[int]) -> gs.Variable:
            return gs.Variable(f"{prefix}/{name}", dtype=np.float32, shape=shape)

        column = var("column", match.ids_shape + [1])
        onehot_shape = match.ids_shape + [vocab]
        diff, dist, neg, shifted, onehot = (var(n, onehot_shape) for n in ("diff", "dist", "neg", "shifted", "onehot"))
        consts = {
            "shape": np.array(match.ids_shape + [1], dtype=np.int64),
            "arange": np.arange(vocab, dtype=np.float32),
            "one": np.array(1.0, dtype=np.float32),  # 0-D: onnx2ncnn turns it into BinaryOp with_scalar
        }
        c = {k: gs.Constant(f"{prefix}/{k}", v) for k, v in consts.items()}
        table = gs.Constant(f"{prefix}/table", match.table)
        chain = [("Reshape", [ids, c["shape"]], column), ("Sub", [column, c["arange"]], diff),
                 ("Abs", [diff], dist), ("Neg", [dist], neg), ("Add", [neg, c["one"]], shifted),
                 ("Relu", [shifted], onehot), ("MatMul", [onehot, table], y)]
        for op, inputs, output in chain:
            graph.nodes.append(gs.Node(op, name=f"{prefix}/{op.lower()}", inputs=inputs, outputs=[output]))

    def _ids_as_float(self, graph: gs.Graph, match: EmbeddingMatch) -> gs.Tensor:
        """Make the source input float32 (giving its other users a Cast back) and the path float."""
        source, path = match.source, match.path
        first = path[0] if path else match.gather
        if np.issubdtype(np.dtype(source.dtype), np.integer):
            others = [user for user in source.outputs if user is not first]
            if others:
                as_int = gs.Variable(f"{source.name}/{self.name}/{AS_INT}", dtype=source.dtype, shape=source.shape)
                for user in others:
                    for index, tensor in enumerate(user.inputs):
                        if tensor is source:
                            user.inputs[index] = as_int
                to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(source.dtype))
                graph.nodes.append(gs.Node("Cast", name=f"{source.name}/{self.name}/{AS_INT}", attrs={"to": to},
                                           inputs=[source], outputs=[as_int]))
            source.dtype = np.float32
        if not path:
            return source
        path[0].inputs[0] = source  # it may have read the source through a Cast of ours
        for node in path:
            node.outputs[0].dtype = np.float32
        return path[-1].outputs[0]
