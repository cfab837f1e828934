"""Integer arithmetic on a padding mask that indexes a table -> the same whole numbers in float,
and the lookup -> an exact one-hot product.

RoBERTa's positions, `cumsum(mask) * mask + pad` with `mask = (ids != pad).int()`:
Before:  m:float 0/1 (id_mask_lookup) -- Cast(bool) -- Cast(int32) --+-- CumSum(axis 1) -- Mul --+
                                                                     +-------------------------+
             -- Add(pad) -- Cast(int64) -- Gather(table[V,D]) --> y
After:   m --+-- MatMul(U[T,T]) -- Mul --+-- Add(pad) --> p:float    U[i,j] = 1 where i <= j
             +-----------------------+
         p -- Reshape -- Sub(arange V) -- Abs -- Neg -- Add(1) -- Relu -- MatMul(table) --> y
The ops above the Gather are written again in float: a Cast of a whole number is that number, a
Cast to bool of a 0/1 value is the value (of another whole number, Clip(|x|, 0, 1)), CumSum along
the last axis is a product with a constant triangle (strict for `exclusive`, lower for `reverse`),
integer constants become float ones.
Constraints: the index is computed (an index read straight from a graph input is pnnx_embed's and
embedding_gather's), from constants, lookups in constant tables of whole numbers, Casts, shape-only
ops, Add/Sub/Mul/Neg/Abs/Max/Min and CumSum along the last axis of a static shape; every value on
the way is proven, by interval arithmetic from the tables and constants, a whole number within
2**24, and the index within [0, V) with V <= max_rows.
Exact: float32 holds every whole number below 2**24 exactly, so each Add, Sub, Mul and each sum of
the triangle product (in any order) gives the integer result exactly; the one-hot product picks
table[index] exactly (Builder.one_hot_lookup).
Needed by: pnnx, which leaves CumSum, Tensor.to and pnnx.Expression for this arithmetic (ncnn holds
floats; it reads integers only in Embed, whose ids are an input), and onnx2ncnn, which has no Cast,
CumSum or Gather by computed ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs
from pydantic import PositiveInt

from deploykit.graph_pass import (SHAPE_ONLY_OPS, Builder, GraphPass, PassArgs, Refusal, Value, constant_value,
                                  dtype_of, integer_input_source, known_shape, known_value, lookup_table, register_pass,
                                  static_shape)

EXACT = 2.0 ** 24  # float32 holds every whole number up to here
MOVES = SHAPE_ONLY_OPS + ("Expand",)
ARITHMETIC = ("Add", "Sub", "Mul", "Max", "Min")


class NotWhole(Exception):
    """Why a tensor is not proven to hold whole numbers in a known range."""


class IndexArithmeticArgs(PassArgs):
    max_rows: PositiveInt = 4096  # the most table rows the one-hot product is built for


@dataclass
class IndexMatch:
    gather: gs.Node
    table: np.ndarray
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # tensor name -> [lo, hi]
    nodes: list[gs.Node] = field(default_factory=list)  # the integer ops the float form replaces


@register_pass
class IndexArithmeticPass(GraphPass):
    name = "index_arithmetic"
    targets = ("pnnx", "onnx2ncnn")
    Args = IndexArithmeticArgs
    args: IndexArithmeticArgs

    def match(self, node: gs.Node) -> Optional[Union[IndexMatch, Refusal]]:
        table = lookup_table(node)
        ids = node.inputs[1] if node.op == "Gather" else None
        if table is None or isinstance(table, str) or ids is None or constant_value(ids) is not None:
            return None
        kind = dtype_of(ids)
        if kind is None or kind.kind not in "iu" or not isinstance(integer_input_source(ids), str):
            return None  # float ids, or ids read from a graph input: the lookup passes' pattern
        found = IndexMatch(node, table)
        try:
            lo, hi = self._range(ids, found)
        except NotWhole as why:
            return self.refuse(node, f"its index is computed, and {why}")
        rows = table.shape[0]
        if lo < 0 or hi >= rows:
            return self.refuse(node, f"its index lies in [{lo:g}, {hi:g}], not within the table's {rows} rows")
        if rows > self.args.max_rows:
            return self.refuse(node, f"the table has {rows} rows, more than max_rows={self.args.max_rows}")
        if not np.isfinite(table).all():
            return self.refuse(node, "the table is not finite (0 * inf would not be 0)")
        if static_shape(ids) is None:
            return self.refuse(node, "its index has no static shape")
        return found

    def covers(self, node: gs.Node, match: IndexMatch) -> list[gs.Node]:
        return [node, *match.nodes]

    def rewrite(self, graph: gs.Graph, match: IndexMatch) -> None:
        b = self.builder(graph, match.gather, np.float32)
        ids = match.gather.inputs[1]
        index = self._float(b, ids, match, {})
        out = match.gather.outputs[0]
        match.gather.outputs.clear()
        b.one_hot_lookup(index, known_shape(ids), match.table, out)

    # -----------------------------------------------------------------------------------------
    # match: the range of every value above the index

    def _range(self, tensor: gs.Tensor, found: IndexMatch) -> tuple[float, float]:
        if tensor.name in found.ranges:
            return found.ranges[tensor.name]
        lo, hi = self._node_range(tensor, found)
        if max(abs(lo), abs(hi)) > EXACT:
            raise NotWhole(f"{tensor.name!r} can reach {max(abs(lo), abs(hi)):g}, beyond the whole numbers float32 "
                           f"holds")
        found.ranges[tensor.name] = (lo, hi)
        return lo, hi

    def _node_range(self, tensor: gs.Tensor, found: IndexMatch) -> tuple[float, float]:
        value = constant_value(tensor)
        if value is not None:
            value = value.astype(np.float64)
            if value.size == 0 or not np.all(np.isfinite(value) & (np.round(value) == value)):
                raise NotWhole(f"the constant {tensor.name!r} is not all whole numbers")
            return float(value.min()), float(value.max())
        if not tensor.inputs:
            raise NotWhole(f"it depends on the graph input {tensor.name!r}, whose range is not known")
        if dtype_of(tensor) == np.bool_:
            return self._bool_range(tensor, found)
        node = tensor.inputs[0]
        if dtype_of(tensor) != np.float32 or node.op == "Cast":  # an integer value: its float form replaces it
            found.nodes.append(node)
        if node.op == "Cast" or node.op in MOVES:
            if node.op in ("Reshape", "Expand") and static_shape(tensor) is None:
                raise NotWhole(f"{node.op} {node.name!r} has no static shape")
            return self._range(node.inputs[0], found)
        if node.op == "Gather":
            table = constant_value(node.inputs[0])
            if table is None:
                raise NotWhole(f"Gather {node.name!r} does not read a constant table")
            return self._node_range(node.inputs[0], found)
        if node.op == "CumSum":
            axis, shape = constant_value(node.inputs[1]), static_shape(node.inputs[0])
            if axis is None or shape is None or int(axis) % len(shape) != len(shape) - 1:
                raise NotWhole(f"CumSum {node.name!r} is not along the last axis of a static shape")
            lo, hi = self._range(node.inputs[0], found)
            return shape[-1] * min(lo, 0.0), shape[-1] * max(hi, 0.0)
        if node.op in ("Neg", "Abs"):
            lo, hi = self._range(node.inputs[0], found)
            if node.op == "Neg":
                return -hi, -lo
            return (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
        if node.op in ARITHMETIC and len(node.inputs) == 2:
            (a, b), (c, d) = (self._range(t, found) for t in node.inputs)
            if node.op == "Add":
                return a + c, b + d
            if node.op == "Sub":
                return a - d, b - c
            if node.op == "Max":
                return max(a, c), max(b, d)
            if node.op == "Min":
                return min(a, c), min(b, d)
            products = [a * c, a * d, b * c, b * d]
            return min(products), max(products)
        raise NotWhole(f"{node.op} {node.name!r} is not arithmetic this pass follows")

    def _bool_range(self, mask: gs.Tensor, found: IndexMatch) -> tuple[float, float]:
        """A bool that is a Cast of a whole number (id_mask_lookup's `as_bool`) is 0 or 1."""
        node = mask.inputs[0] if mask.inputs else None
        if node is None or node.op != "Cast" or (source := dtype_of(node.inputs[0])) is None \
                or source.kind != "f":
            raise NotWhole(f"the mask {mask.name!r} is not a Cast of float values (id_mask_lookup writes one "
                           f"for `ids != pad`)")
        found.nodes.append(node)
        self._range(node.inputs[0], found)
        return 0.0, 1.0

    # -----------------------------------------------------------------------------------------
    # rewrite: the float form of every value above the index

    def _float(self, b: Builder, tensor: gs.Tensor, match: IndexMatch, made: dict[str, Value]) -> Value:
        if tensor.name not in made:
            made[tensor.name] = self._float_of(b, tensor, match, made)
        return made[tensor.name]

    def _float_of(self, b: Builder, tensor: gs.Tensor, match: IndexMatch, made: dict[str, Value]) -> Value:
        value = constant_value(tensor)
        if value is not None:
            return value.astype(np.float32)
        if self._computed_in_float(tensor, match):
            return tensor  # ncnn computes it as it is (a lookup of whole numbers, a reshape of one)
        node, tag = tensor.inputs[0], f"{tensor.name}/float"
        if dtype_of(tensor) == np.bool_:  # a Cast of a float whole number x: x != 0
            source = node.inputs[0]
            lo, hi = match.ranges[source.name]
            x = self._float(b, source, match, made)
            if lo >= 0 and hi <= 1:
                return x
            return b.op("Clip", [b.op("Abs", [x], f"{tag}/abs"), np.float32(0), np.float32(1)], tag)
        if node.op == "Cast":
            return self._float(b, node.inputs[0], match, made)
        if node.op in MOVES:
            return b.op(node.op, [self._float(b, node.inputs[0], match, made), *node.inputs[1:]], tag,
                        attrs=dict(node.attrs))
        if node.op == "Gather":  # a table of whole numbers stored as integers
            return b.op("Gather", [known_value(node.inputs[0]).astype(np.float32), node.inputs[1]], tag,
                        attrs=dict(node.attrs))
        if node.op == "CumSum":
            size = known_shape(node.inputs[0])[-1]
            before = np.less_equal if not node.attrs.get("exclusive", 0) else np.less
            rows, columns = np.indices((size, size))
            # out[j] = sum of x[i] over i <= j (i < j exclusive); reversed: i >= j (i > j)
            triangle = before(columns, rows) if node.attrs.get("reverse", 0) else before(rows, columns)
            return b.op("MatMul", [self._float(b, node.inputs[0], match, made), triangle.astype(np.float32)], tag)
        return b.op(node.op, [self._float(b, t, match, made) for t in node.inputs], tag)

    def _computed_in_float(self, tensor: gs.Tensor, match: IndexMatch) -> bool:
        """float32 all the way up: no Cast or integer value on the way to the constants and lookups."""
        if constant_value(tensor) is not None:
            return True
        if dtype_of(tensor) != np.float32 or tensor.inputs[0].op == "Cast":
            return False
        node = tensor.inputs[0]
        if node.op == "Gather":
            return True
        data = node.inputs[:1] if node.op in MOVES else node.inputs
        return all(self._computed_in_float(t, match) for t in data)
