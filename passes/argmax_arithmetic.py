"""ArgMax/ArgMin over one axis of a float tensor -> reductions and arithmetic that ncnn runs.

Before:  x:float -- ArgMax(axis, keepdims) --> i:int64                    i a graph output
After:   m = ReduceMax(x, axis, keepdims=1)
         off = Ceil(Min(m - x, 1))            0 where x is the maximum, 1 elsewhere
         i = ReduceMin(index + n * off, axis, keepdims) --> i:float       index = 0, 1, ... n - 1
                                                                          along the axis, n its length
  select_last_index=1: i = ReduceMax(index - n * off). ArgMin: m = ReduceMin(x), off from x - m.
Why: pnnx writes ncnn's ArgMax layer, which the ncnn runtime is built without (it lists the type
but cannot create it), and leaves ArgMin; onnx2ncnn maps neither. Classifiers end in argmax.
Exactness: exact. Ceil(Min(d, 1)) is 1 for every d > 0 however small, and 0 for d == 0, so `off`
marks exactly the elements equal to the extreme; the indices are whole numbers below 2**24, exact
in float32, and the reduction picks the first (or last) of them as ONNX does. On a device that
flushes subnormal numbers to zero, two values closer than 1.2e-38 count as a tie.
The index comes out as float: an ncnn blob holds floats, and a Cast back to int64 is a layer
neither converter can write. So the graph output keeps its name and values but becomes float
(passes/README.md, rule 4); the app reads a whole number from it, as the manifest says.
Constraints: the index must be a graph output that no other node reads (an index that feeds a
Gather or a comparison in the graph is refused: cut the graph before the ArgMax with `cut_at`),
x float with a known length along the axis, and an opset below 18 (from 18 the reductions take
their axes as an input, which pnnx misreads).
Needed by: pnnx and onnx2ncnn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, register_pass

LARGEST_EXACT_LENGTH = 2 ** 24  # float32 holds every whole number up to this one


@dataclass
class ArgMatch:
    node: gs.Node
    axis: int
    rank: int
    length: int
    dtype: np.dtype


@register_pass
class ArgMaxArithmeticPass(GraphPass):
    name = "argmax_arithmetic"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[ArgMatch]:
        if node.op not in ("ArgMax", "ArgMin"):
            return None
        x, index = node.inputs[0], node.outputs[0]
        dtype = np.dtype(x.dtype) if x.dtype is not None else None
        if dtype is None or not np.issubdtype(dtype, np.floating):
            return self.refuse(node, f"its input is {dtype or 'of an unknown type'}, not float: ncnn computes "
                                     "in floats (cut the graph before it with `cut_at`)")
        readers = [user.name or user.op for user in index.outputs]
        if readers:
            return self.refuse(node, f"its int64 index is read by {', '.join(readers[:3])} in the graph; this "
                                     "pass can only give a float index as a graph output (cut the graph before "
                                     "it with `cut_at`)")
        if self.opset >= 18:
            return self.refuse(node, f"at opset {self.opset} the reductions it needs take their axes as an "
                                     "input, which pnnx misreads; export at opset 17 or below")
        if x.shape is None:
            return self.refuse(node, "the rank of its input is unknown")
        rank = len(x.shape)
        axis = int(node.attrs.get("axis", 0))
        axis = axis + rank if axis < 0 else axis
        length = x.shape[axis] if 0 <= axis < rank else None
        if not isinstance(length, int) or length < 1:
            return self.refuse(node, f"the length of axis {axis} of its input is not known")
        if length >= LARGEST_EXACT_LENGTH:
            return self.refuse(node, f"axis {axis} has {length} elements, more than float32 counts exactly")
        return ArgMatch(node, axis, rank, length, dtype)

    def rewrite(self, graph: gs.Graph, match: ArgMatch) -> None:
        node, x, index = match.node, match.node.inputs[0], match.node.outputs[0]
        b = self.builder(graph, node, match.dtype)
        largest = node.op == "ArgMax"
        last = bool(node.attrs.get("select_last_index", 0))
        extreme = b.op("ReduceMax" if largest else "ReduceMin", [x], "extreme",
                       attrs={"axes": [match.axis], "keepdims": 1})
        gap = b.op("Sub", [extreme, x] if largest else [x, extreme], "gap")  # >= 0, 0 at the extreme
        off = b.op("Ceil", [b.op("Min", [gap, np.array(1.0)], "clamp")], "off")
        shape = [1] * match.rank
        shape[match.axis] = match.length
        positions = np.arange(match.length).reshape(shape)
        penalty = b.op("Mul", [off, np.array(match.length)], "penalty")
        scored = b.op("Sub" if last else "Add", [positions, penalty], "scored")
        found = b.op("ReduceMax" if last else "ReduceMin", [scored], "index",
                     attrs={"axes": [match.axis], "keepdims": int(node.attrs.get("keepdims", 1))})
        index.dtype = match.dtype
        b.write(found, index)
        node.outputs.clear()
