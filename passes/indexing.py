"""Indexing with constants -> contiguous Slices, which ncnn runs as Crop.

gather_to_slice                                              x[:, 2], x[:, [0, 2, 3]]
Before:  x[1,N,D] -- Gather(axis=1, i:Constant) ------------------------------------> y
After:   x -- Slice(axis 1, [2, 3)) -- Reshape(y's shape) -----------------------------> y   (i = 2)
         x -+- Slice(axis 1, [0, 1)) --+
            +- Slice(axis 1, [2, 4)) --+-- Concat(axis 1) -----------------------------> y   (i = [0, 2, 3])
         m[1,T] -- Flatten(axis 2) -- Gather(axis 0, arange(T) as [1,1,T]) ----------> y[1,1,T,1]
         m[1,T] -- Reshape([1,1,T,1]) --------------------------------------------------> y   (transformers 5's masks;
                                                            the Flatten, read only here, is merged in)
Constraints: i is a constant (negative entries normalised; runs i, i+1, ... share one Slice, and a
run over the whole axis is no Slice; at most `max_slices` Slices; an index of several dims is the
same list, reshaped to y's shape after); x has a static shape and at most 4 dims (5-D data is
batch_axis_reshape's); the axis is not axis 0 of size 1, the batch axis ncnn drops. Axis 0 of a
larger size is taken for a list (ncnn runs one sample, so that axis is no batch, and pnnx slices
it); a scalar there is left to pnnx, which converts `qkv[0]` itself and fuses attention around it.
A Gather from a constant (an embedding, for pnnx_embed / embedding_gather) or from a Shape (shape
arithmetic, which pnnx folds) is not this pattern. Exact.
Needed by: onnx2ncnn, which has no Gather ("Gather not supported yet!"), and pnnx, which turns a
Gather of a list into the Crop of a single index (silently wrong); it converts a scalar one itself.

strided_slice                                                x[..., ::2], x[:, 1::2]
Before:  x[1,C,N] -- Slice(axis 2, start s, end e, step k > 1) ----------------------> y[1,C,n]
After:   x -- Slice(axis 2, [s-j, s-j+n*k)) -- Reshape([1, C*n, k]) -- Slice(axis 2, [j, j+1))
           -- Reshape(y's shape) -----------------------------------------------------> y
         In general Reshape([X0, P*n, k*Q]) and Slice [j*Q, (j+1)*Q), with P, Q the sizes of the
         axes between the batch and the sliced axis and after it: at most 3-D, batch first and alone.
         j is chosen so the window of n*k fits in N; when none fits (x[::2] with N odd) the last
         element is sliced alone and concatenated. Axes with step 1 (or one element) are one Slice.
Constraints: constant starts/ends/axes/steps; x has a static shape; steps > 0 (a negative step
reverses an axis, which no ncnn layer does). Exact.
Needed by: pnnx, which leaves `Tensor.slice` for a step > 1 (and drops a negative-step Slice);
onnx2ncnn, which prints "Unsupported slice step !".
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from pydantic import PositiveInt

from deploykit.graph_pass import Builder, GraphPass, Matched, PassArgs, constant_value, register_pass, static_shape


@dataclass
class GatherMatch:
    node: gs.Node
    data: gs.Tensor
    axis: int
    runs: list[tuple[int, int]]  # [start, stop) of each Slice, in the order of the indices
    out_shape: Optional[list[int]]  # the shape to reshape to for an index that is not 1-D, else None


class GatherToSliceArgs(PassArgs):
    max_slices: PositiveInt = 16  # the most Slices one Gather becomes


@register_pass
class GatherToSlicePass(GraphPass):
    """Gather with a constant index or index list (x[:, 0], x[:, [0, 2, 4]]) -> Slices (+ Concat)."""

    name = "gather_to_slice"
    targets = ("pnnx", "onnx2ncnn")
    Args = GatherToSliceArgs
    args: GatherToSliceArgs

    def match(self, node: gs.Node) -> Matched[GatherMatch]:
        if node.op != "Gather":
            return None
        data, indices = node.inputs
        if constant_value(data) is not None or any(p.op == "Shape" for p in data.inputs):
            return None
        index = constant_value(indices)
        if index is None:
            return self.refuse(node, "its indices are computed at run time, not constants")
        if index.size == 0:
            return self.refuse(node, f"its indices have shape {list(index.shape)}: it gathers nothing")
        shape = static_shape(data)
        if shape is None:
            return self.refuse(node, "the data has no static shape; export with fixed input shapes")
        if len(shape) > 4:
            return self.refuse(node, f"the data has {len(shape)} dims, more than ncnn holds "
                                     f"(batch_axis_reshape brings such tensors within 4-D)")
        axis = node.attrs.get("axis", 0) % len(shape)
        if axis == 0 and shape[0] == 1:
            return self.refuse(node, "it indexes axis 0 of size 1, the batch axis ncnn drops")
        if axis == 0 and index.ndim == 0:
            return self.refuse(node, "a scalar index on axis 0 is left to pnnx, which converts it itself (and "
                                     "fuses attention around it); onnx2ncnn cannot slice axis 0 either")
        size = shape[axis]
        flat = [int(i) + size if i < 0 else int(i) for i in index.reshape(-1)]
        if not all(0 <= i < size for i in flat):
            return self.refuse(node, f"index {index.tolist()} is out of range for an axis of {size}")
        runs: list[tuple[int, int]] = []
        for i in flat:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        if len(runs) > self.args.max_slices:
            return self.refuse(node, f"its indices need {len(runs)} slices, more than "
                                     f"max_slices={self.args.max_slices}")
        out_shape = shape[:axis] + list(index.shape) + shape[axis + 1:] if index.ndim != 1 else None
        return GatherMatch(node, data, axis, runs, out_shape)

    def rewrite(self, graph: gs.Graph, match: GatherMatch) -> None:
        b = self.builder(graph, match.node, output_suffix=":out")
        out = match.node.outputs[0]
        match.node.outputs.clear()
        last = out if match.out_shape is None else None  # else a Reshape writes it
        if match.runs == [(0, match.data.shape[match.axis])]:
            joined = match.data  # every element in order: no Slice
            producer = joined.inputs[0] if joined.inputs else None
            if match.out_shape is not None and producer is not None and producer.op in ("Flatten", "Reshape") \
                    and len(joined.outputs) == 1:
                joined = producer.inputs[0]  # a reshape of a reshape: one Reshape (onnx2ncnn has no Flatten(2))
        elif len(match.runs) == 1:
            (start, stop), = match.runs
            joined = b.slice(match.data, [start], [stop], [match.axis], "slice", last)
        else:
            pieces = [b.slice(match.data, [start], [stop], [match.axis], f"slice{k}")
                      for k, (start, stop) in enumerate(match.runs)]
            joined = b.op("Concat", pieces, "concat", attrs={"axis": match.axis}, out=last)
        if match.out_shape is not None:
            b.reshape(joined, match.out_shape, "reshape", out)
        elif joined is match.data:
            b.write(joined, out)


# ---------------------------------------------------------------------------------------------


@dataclass
class StridedMatch:
    node: gs.Node
    shape: list[int]
    plain: list[tuple[int, int, int]]  # (axis, start, stop) taken with step 1
    strided: list[tuple[int, int, int, int]]  # (axis, start, count, step) with count > 1, step > 1


@register_pass
class StridedSlicePass(GraphPass):
    """Slice with a step > 1 (x[..., ::2]) -> Reshape + Slice of step 1 + Reshape, within 4-D."""

    name = "strided_slice"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[StridedMatch]:
        if node.op != "Slice" or len(node.inputs) < 5 or not node.inputs[4].name:
            return None  # no steps input: every step is 1
        steps = constant_value(node.inputs[4])
        if steps is not None and np.all(steps == 1):
            return None
        starts, ends = constant_value(node.inputs[1]), constant_value(node.inputs[2])
        axes = constant_value(node.inputs[3]) if node.inputs[3].name else None
        if axes is None and not node.inputs[3].name and starts is not None:
            axes = np.arange(len(starts))
        if starts is None or ends is None or axes is None or steps is None:
            return self.refuse(node, "its starts, ends, axes or steps are computed at run time")
        if np.any(steps < 0):
            return self.refuse(node, f"a negative step {steps.tolist()} reverses an axis, which no ncnn layer does")
        shape = static_shape(node.inputs[0])
        if shape is None:
            return self.refuse(node, "the data has no static shape; export with fixed input shapes")
        plain, strided = [], []
        for axis, start, end, step in zip(axes.tolist(), starts.tolist(), ends.tolist(), steps.tolist()):
            axis %= len(shape)
            size = shape[axis]
            start, end = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
            count = max(0, -(-(end - start) // step))
            if count == 0:
                return self.refuse(node, f"it selects nothing on axis {axis}")
            if step == 1 or count == 1:
                plain.append((axis, start, start + (count - 1) * step + 1))
            else:
                strided.append((axis, start, count, step))
        return StridedMatch(node, shape, plain, strided)

    def rewrite(self, graph: gs.Graph, match: StridedMatch) -> None:
        b = self.builder(graph, match.node, output_suffix=":out")
        out = match.node.outputs[0]
        x = match.node.inputs[0]
        match.node.outputs.clear()
        shape = list(match.shape)
        if match.plain:
            axes, starts, stops = (list(v) for v in zip(*match.plain))
            last = not match.strided
            x = b.slice(x, starts, stops, axes, "slice", out if last else None)
            for axis, start, stop in match.plain:
                shape[axis] = stop - start
        for number, (axis, start, count, step) in enumerate(match.strided):
            last = number == len(match.strided) - 1
            x = self._every_kth(b, f"axis{axis}", x, shape, axis, start, count, step, out if last else None)
            shape[axis] = count

    def _every_kth(self, b: Builder, tag: str, x: gs.Tensor, shape: list[int], axis: int, start: int,
                   count: int, step: int, out: Optional[gs.Tensor]) -> gs.Tensor:
        """x[start : : step][:count] along `axis`, from step-1 Slices and Reshapes."""
        size = shape[axis]
        offset = next((j for j in range(step) if start - j >= 0 and start - j + count * step <= size), None)
        if offset is None:  # no window of count*step fits: take the last element on its own
            head = self._every_kth(b, f"{tag}/head", x, shape, axis, start, count - 1, step, None)
            last = start + (count - 1) * step
            tail = b.slice(x, [last], [last + 1], [axis], f"{tag}/tail")
            out = out if out is not None else b.var(f"{tag}:out", dtype=x.dtype)
            return b.op("Concat", [head, tail], f"{tag}/concat", attrs={"axis": axis}, out=out)
        begin = start - offset
        if (begin, begin + count * step) != (0, size):
            x = b.slice(x, [begin], [begin + count * step], [axis], f"{tag}/window")
        inner = prod(shape[axis + 1:])
        grouped = [shape[0], prod(shape[1:axis]) * count, step * inner] if axis > 0 else [count, step * inner]
        x = b.reshape(x, grouped, f"{tag}/group")
        x = b.slice(x, [offset * inner], [(offset + 1) * inner], [len(grouped) - 1], f"{tag}/pick")
        result = shape[:axis] + [count] + shape[axis + 1:]
        return b.reshape(x, result, f"{tag}/ungroup", out)
