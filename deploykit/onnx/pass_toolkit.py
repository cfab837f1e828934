"""What a pass uses to read and to build: queries on tensors, the typed refusal `match` returns,
and the one builder a rewrite makes its nodes, tensors and constants with.

Every name a rewrite creates is `<anchor>/<pass>/<tag>`, with the anchor named by its node name,
else by its first output (unique in a graph), else by its op and position; so two runs of the
pipeline write byte-identical models, and two rewrites never make one name twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Value = Union[gs.Tensor, np.ndarray]  # an input of a new node: a tensor, or the value of a new constant


# ---------------------------------------------------------------------------------------------
# Queries: constants through Constant nodes and initializers alike, shapes and dtypes as inferred


def constant_value(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The value of a constant tensor (an initializer or a Constant node's output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def static_shape(tensor: gs.Tensor) -> Optional[list[int]]:
    """The shape when every dim is a known size, else None."""
    shape = tensor.shape
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return list(shape)


def known_shape(tensor: gs.Tensor) -> list[int]:
    """`static_shape` of a tensor that `match` found has one."""
    shape = static_shape(tensor)
    if shape is None:
        raise ValueError(f"{tensor.name!r} has no static shape")
    return shape


def known_value(tensor: gs.Tensor) -> np.ndarray:
    """`constant_value` of a tensor that `match` found is constant."""
    value = constant_value(tensor)
    if value is None:
        raise ValueError(f"{tensor.name!r} is not a constant")
    return value


def rank(tensor: gs.Tensor) -> Optional[int]:
    return None if tensor.shape is None else len(tensor.shape)


def dtype_of(tensor: gs.Tensor) -> Optional[np.dtype]:
    if isinstance(tensor, gs.Constant):
        return tensor.values.dtype
    if tensor.dtype is None:
        return None
    if isinstance(tensor.dtype, int):
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.dtype))
    return np.dtype(tensor.dtype)


def single_consumer(tensor: gs.Tensor) -> Optional[gs.Node]:
    """The one node reading `tensor`, or None when none or several do."""
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def lookup_table(node: gs.Node) -> Union[None, str, np.ndarray]:
    """The table of a lookup Gather(table, ids) from a constant: a float32 [V, D] table read by
    rows, or why the constant is not one (a reason to refuse); None for any other node."""
    if node.op != "Gather":
        return None
    table = constant_value(node.inputs[0])
    if table is None:
        return None
    if table.ndim != 2:
        return f"the table has rank {table.ndim}, not 2"
    if node.attrs.get("axis", 0) not in (0, -2):
        return f"it gathers along axis {node.attrs['axis']}, not the table's rows"
    if table.dtype != np.float32:
        return f"the table is {table.dtype}, not float32"
    return table


SHAPE_ONLY_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Identity")


def integer_input_source(ids: gs.Tensor, made_float_by: str = "") -> Union[str, tuple[gs.Variable, list[gs.Node]]]:
    """The integer graph input the ids are read from, through shape-only ops that nothing else
    reads, and those ops from the input on; or why there is none. A Cast whose name ends in
    `made_float_by` is one a pass gave the other readers of an input it made float: its input is
    the source."""
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
        if made_float_by and producer.op == "Cast" and producer.name.endswith(made_float_by):
            return producer.inputs[0], path[::-1]
        if producer.op not in SHAPE_ONLY_OPS:
            return f"the ids are computed by {producer.op} {producer.name!r}; only shape-only ops keep them integer"
        if len(tensor.outputs) != 1:
            return f"the ids after {producer.op} {producer.name!r} are also used elsewhere"
        path.append(producer)
        tensor = producer.inputs[0]


# ---------------------------------------------------------------------------------------------
# Refusal


@dataclass(frozen=True)
class Refusal:
    """Why `match` left a node that looked like the pattern alone (`GraphPass.refuse` makes one).
    It is falsy, so `if not found:` reads a refusal as no match."""

    op: str
    node: str
    reason: str

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return f"{self.op} {self.node!r}: {self.reason}"


M = TypeVar("M")
Matched = Union[M, Refusal, None]  # what `match` returns: what the rewrite needs, why not, or None


# ---------------------------------------------------------------------------------------------
# Builder


def anchor_name(graph: gs.Graph, node: Union[gs.Node, gs.Tensor]) -> str:
    """The name a rewrite at `node` (or at a tensor, such as a graph input) derives its names from."""
    if isinstance(node, gs.Tensor) or node.name:
        return node.name
    if node.outputs and node.outputs[0].name:
        return node.outputs[0].name
    return f"{node.op}_{next(i for i, n in enumerate(graph.nodes) if n is node)}"


class Builder:
    """Makes one rewrite's nodes, tensors and constants, each named `<anchor>/<pass>/<tag>`.

    `dtype` is the default dtype of new tensors and of constants made from numpy values;
    `output_suffix` is added to the name of the tensor a new node writes when none is given."""

    def __init__(self, graph: gs.Graph, anchor: Union[gs.Node, gs.Tensor], pass_name: str, dtype: Any = None,
                 output_suffix: str = "") -> None:
        self.graph = graph
        self.prefix = f"{anchor_name(graph, anchor)}/{pass_name}"
        self.dtype = dtype
        self.output_suffix = output_suffix
        self.made: list[gs.Node] = []

    def name(self, tag: str) -> str:
        return f"{self.prefix}/{tag}" if tag else self.prefix

    def const(self, tag: str, value: Any, dtype: Any = None) -> gs.Constant:
        """A constant named after `tag`, of `dtype` (else the builder's, else the value's own)."""
        dtype = dtype if dtype is not None else self.dtype
        return gs.Constant(self.name(tag), np.asarray(value, dtype=dtype))

    def var(self, tag: str, dtype: Any = None, shape: Optional[Sequence[Any]] = None) -> gs.Variable:
        return gs.Variable(self.name(tag), dtype=dtype if dtype is not None else self.dtype,
                           shape=None if shape is None else list(shape))

    def node(self, op: str, inputs: Sequence[Value], tag: str, outputs: Sequence[gs.Tensor],
             attrs: Optional[dict] = None) -> gs.Node:
        """Append a node named after `tag`; numpy inputs become constants `<tag>/<index>`."""
        tensors = [v if isinstance(v, gs.Tensor) else self.const(f"{tag}/{i}", v) for i, v in enumerate(inputs)]
        node = gs.Node(op, name=self.name(tag), attrs=dict(attrs or {}), inputs=tensors, outputs=list(outputs))
        self.graph.nodes.append(node)
        self.made.append(node)
        return node

    def op(self, op: str, inputs: Sequence[Value], tag: str, *, attrs: Optional[dict] = None,
           out: Optional[gs.Tensor] = None, dtype: Any = None, shape: Optional[Sequence[Any]] = None) -> gs.Tensor:
        """Append a one-output node; returns the tensor it writes: `out`, else a new one named
        after the node (of `dtype` and `shape`)."""
        if out is None:
            out = self.var(tag + self.output_suffix, dtype, shape)
        self.node(op, inputs, tag, [out], attrs)
        return out

    def slice(self, x: gs.Tensor, starts: list[int], ends: list[int], axes: list[int], tag: str,
              out: Optional[gs.Tensor] = None) -> gs.Tensor:
        """A step-1 Slice for the graph's opset (attributes before opset 10, inputs from it on)."""
        if self.graph.opset < 10:
            return self.op("Slice", [x], tag, attrs={"starts": starts, "ends": ends, "axes": axes}, out=out,
                           dtype=x.dtype)
        bounds = [self.const(f"{tag}/{key}", v, np.int64) for key, v in (("starts", starts), ("ends", ends),
                                                                           ("axes", axes))]
        return self.op("Slice", [x, *bounds], tag, out=out, dtype=x.dtype)

    def reshape(self, x: gs.Tensor, shape: list[int], tag: str, out: Optional[gs.Tensor] = None) -> gs.Tensor:
        return self.op("Reshape", [x, self.const(f"{tag}/shape", shape, np.int64)], tag, out=out, dtype=x.dtype)

    def one_hot_lookup(self, ids: gs.Tensor, ids_shape: list[int], table: np.ndarray, out: gs.Tensor) -> None:
        """out = table[ids] for float ids holding whole numbers in [0, V), as an exact product:
        onehot[..., v] = Relu(1 - |ids - v|) is exactly 1 where v == ids and 0 elsewhere, so every
        term of onehot @ table is a table value times 1 or 0 (exact for a finite table, ids < 2**24)."""
        vocab = table.shape[0]
        wide = ids_shape + [vocab]
        column = self.op("Reshape", [ids, self.const("shape", ids_shape + [1], np.int64)], "reshape",
                         out=self.var("column", np.float32, ids_shape + [1]))
        diff = self.op("Sub", [column, self.const("arange", np.arange(vocab), np.float32)], "sub",
                       out=self.var("diff", np.float32, wide))
        dist = self.op("Abs", [diff], "abs", out=self.var("dist", np.float32, wide))
        neg = self.op("Neg", [dist], "neg", out=self.var("neg", np.float32, wide))
        # 1 is 0-D: onnx2ncnn turns it into BinaryOp with_scalar
        shifted = self.op("Add", [neg, self.const("one", 1.0, np.float32)], "add",
                          out=self.var("shifted", np.float32, wide))
        onehot = self.op("Relu", [shifted], "relu", out=self.var("onehot", np.float32, wide))
        self.op("MatMul", [onehot, self.const("table", table)], "matmul", out=out)

    def write(self, value: Value, out: gs.Tensor) -> None:
        """Make the node this builder made for `value` write `out` (a tensor of the original graph)
        instead; a constant, or a tensor the graph already had, is copied there by an Identity."""
        if isinstance(value, gs.Variable) and value.inputs and any(n is value.inputs[0] for n in self.made):
            made = value
        else:
            made = self.op("Identity", [value], "result")
        made.inputs[0].outputs[0] = out

    @staticmethod
    def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
        """Every node that reads `old` reads `new` instead."""
        for reader in list(old.outputs):
            for index, tensor in enumerate(reader.inputs):
                if tensor is old:
                    reader.inputs[index] = new
