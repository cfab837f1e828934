"""Broadcasting: Expand and Tile -> forms both converters map (exact).

(a) Dropped where every consumer broadcasts anyway to the same output shape, or is a no-op:
Before:  x[1,1,6] -- Expand(shape) --> e[1,4,6] --+
         z[1,4,6] --------------------------------+-- Add --> y[1,4,6]
After:   x[1,1,6] --+
         z[1,4,6] --+-- Add --> y[1,4,6]
(b) Otherwise a broadcast becomes a Mul by a constant of ones (the "Mul by ones" variant):
Before:  x[1,3,1,5] -- Expand(shape) or Tile(repeats=[1,1,4,1]) --> y[1,3,4,5]
After:   x[1,3,1,5] -- Mul(ones:Constant[1,1,4,1]) ------------------> y[1,3,4,5]
         the ones are sized only along the axes that grow, so the constant stays small.
(c) A Tile repeating an axis of size > 1 becomes a Concat of copies along each repeated axis;
    a Tile (or Expand) that changes nothing is dropped as in (a).
Constraints: static input and output shapes (fold_shapes runs first; Expand's shape input need
not be a constant, the target is the inferred output shape); Tile's repeats are a constant of
counts >= 1; the Mul form needs a numeric dtype (no bool). Consumers that broadcast anyway: the
elementwise ops in BROADCASTING, Pow only through its base (onnxruntime computes a broadcast
exponent by another formula, so x**3 would change in the last bit). Each form is exact:
x * 1 is x bit for bit (-0, inf and NaN included), and Concat copies are the Tile's values.
Why Mul and not Tile: pnnx leaves ONNX Tile as `torch.tile` (no ncnn layer) and onnx2ncnn maps
neither Expand nor Tile, while both map Mul with a constant (MemoryData + BinaryOp) and Concat.
Needed by: onnx2ncnn, for every Expand and Tile; pnnx, for Tile. pnnx maps Expand itself
(Tensor.expand -> ncnn Tile) and drops an Expand before a binary op; the pass does the same.
Limits: ncnn runs at most 4-D (5-D with batch 1); a larger broadcast converts but cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, register_pass, static_shape

BROADCASTING = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where",
})
MUL_DTYPES = tuple(np.dtype(t) for t in ("float16", "float32", "float64", "int32", "int64", "uint32", "uint64"))


@dataclass
class BroadcastMatch:
    node: gs.Node
    bypass: bool  # every consumer may read the input itself
    ones: Optional[np.ndarray] = None  # (b): Mul by these ones
    repeats: Optional[list[int]] = None  # (c): Concat copies along each axis repeated


@register_pass
class ExpandBroadcastPass(GraphPass):
    name = "expand_broadcast"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[BroadcastMatch]:
        if node.op not in ("Expand", "Tile"):
            return None
        x, out = node.inputs[0], node.outputs[0]
        x_shape, out_shape = static_shape(x), static_shape(out)
        if x_shape is None or out_shape is None:
            return self.refuse(node, "its input or output shape is not static; give the model fixed input "
                                     "shapes and run fold_shapes first")
        found = BroadcastMatch(node, bypass=False)
        if node.op == "Tile":
            repeats = constant_value(node.inputs[1])
            if repeats is None or repeats.min(initial=1) < 1:
                return self.refuse(node, "its repeats are not a constant of positive counts")
            if any(r != 1 and d != 1 for d, r in zip(x_shape, repeats.tolist())):
                found.repeats = repeats.tolist()
        if found.repeats is None:
            consumers, unchanged = out.outputs, x_shape == out_shape
            found.bypass = bool(consumers) and all(unchanged or self._broadcasts_anyway(c, out, x_shape)
                                                   for c in consumers)
            dtype = _dtype(node)
            if dtype is not None and dtype in MUL_DTYPES:
                aligned = [1] * (len(out_shape) - len(x_shape)) + x_shape
                found.ones = np.ones([o if a == 1 else 1 for a, o in zip(aligned, out_shape)], dtype)
            elif not found.bypass:
                return self.refuse(node, f"its values ({dtype}) cannot go through a Mul, and not every "
                                         "consumer broadcasts them anyway")
        return found

    def _broadcasts_anyway(self, consumer: gs.Node, out: gs.Tensor, x_shape: list[int]) -> bool:
        if consumer.op not in BROADCASTING or (consumer.op == "Pow" and consumer.inputs[0] is not out):
            return False
        others = [static_shape(t) for t in consumer.inputs if t is not out]
        result = static_shape(consumer.outputs[0])
        known = [shape for shape in others if shape is not None]
        if result is None or len(known) != len(others):
            return False
        try:
            return list(np.broadcast_shapes(tuple(x_shape), *map(tuple, known))) == result
        except ValueError:
            return False

    def rewrite(self, graph: gs.Graph, match: BroadcastMatch) -> None:
        node, out = match.node, match.node.outputs[0]
        x = node.inputs[0]
        b = self.builder(graph, node)
        if match.bypass:
            b.replace_uses(out, x)
            if not any(output is out for output in graph.outputs) or match.ones is None:
                return  # the node is dead now, or stays for a graph output it alone can compute
        node.outputs.clear()
        if match.ones is not None:
            b.op("Mul", [x, b.const("ones", match.ones)], "mul", out=out)
            return
        assert match.repeats is not None  # (c), the only form left
        axes = [axis for axis, count in enumerate(match.repeats) if count != 1]
        current = x
        for axis in axes:
            result = out if axis == axes[-1] else b.var(f"axis{axis}", out.dtype)
            current = b.op("Concat", [current] * match.repeats[axis], f"concat{axis}", attrs={"axis": axis}, out=result)


def _dtype(node: gs.Node) -> Optional[np.dtype]:
    for tensor in (node.inputs[0], node.outputs[0]):
        if tensor.dtype is not None:
            return np.dtype(tensor.dtype)
    return None
