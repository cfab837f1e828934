"""Squeeze/Unsqueeze/Split/Pad reading axes, sizes or a value from inputs -> forms onnx2ncnn reads.

Before:  Squeeze/Unsqueeze(x, axes:Constant)     After:  Reshape(x, the static output shape)
         Split(x, split:Constant), equal parts           Split(x)  (no sizes: equal parts)
         Split(x, split:Constant), unequal parts         one Slice per part
         Pad(x, pads, value:Constant), value 0           Pad(x, pads)
         Pad(x, pads, value:Constant), value v           Pad(x, pads) -- Add(mask)   mask = v where
                                                         padded, 0 inside
Refused: ReduceX(x, axes:Input): no exact form exists. Exact.
onnx2ncnn (Tencent/ncnn tools/onnx/onnx2ncnn.cpp) reads Squeeze/Unsqueeze/Split/ReduceX axes and
Pad's value only from attributes. Why not put the opset-11 attributes back: those nodes are
invalid at opset 13 (onnx.checker and onnxruntime reject them), and the engine keeps the model's
opset_import, so lowering the whole model with onnx.version_converter cannot be done from a pass;
nor could it lower opset 17+ (LayerNormalization has no down-conversion). Every rewrite here is
valid at the model's opset.
Constraints: constant axes, sizes, pads and value; a batch of 1 at axis 0 left alone; ranks 2..5.
Needed by: onnx2ncnn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import Builder, GraphPass, Refusal, constant_value, rank, register_pass, static_shape

REDUCE_OPS = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceSum", "ReduceSumSquare",
              "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp")


@dataclass
class SqueezeAsReshape:
    """Squeeze/Unsqueeze(x, axes) -> Reshape(x, shape)."""

    node: gs.Node
    shape: list[int]

    def rewrite(self, b: Builder) -> None:
        b.op("Reshape", [self.node.inputs[0], b.const("shape", self.shape, np.int64)], "reshape",
             out=self.node.outputs[0])
        self.node.outputs.clear()


@dataclass
class EqualSplit:
    """Split(x, sizes) into equal parts -> Split(x), which splits equally, as onnx2ncnn writes it."""

    node: gs.Node

    def rewrite(self, b: Builder) -> None:
        self.node.inputs.pop()
        if b.graph.opset >= 18:
            self.node.attrs["num_outputs"] = len(self.node.outputs)


@dataclass
class SplitAsSlices:
    """Split(x, sizes) into unequal parts -> one Slice per part."""

    node: gs.Node
    axis: int
    sizes: list[int]

    def rewrite(self, b: Builder) -> None:
        ends, axes = np.cumsum(self.sizes), b.const("axis", [self.axis], np.int64)
        for i, out in enumerate(list(self.node.outputs)):
            start = b.const(f"start{i}", [ends[i] - self.sizes[i]], np.int64)
            b.op("Slice", [self.node.inputs[0], start, b.const(f"end{i}", [ends[i]], np.int64), axes], f"slice{i}",
                 out=out)
        self.node.outputs.clear()


@dataclass
class PadWithoutValue:
    """Pad(x, pads, 0), or a mode that reads no value -> Pad(x, pads)."""

    node: gs.Node

    def rewrite(self, b: Builder) -> None:
        self.node.inputs.pop()


@dataclass
class PadValueMask:
    """Pad(x, pads, v) -> Pad(x, pads) + mask: x + 0 inside, 0 + v where padded, both exact."""

    node: gs.Node
    shape: list[int]
    pads: np.ndarray  # [2, rank]: begins, ends
    value: np.ndarray

    def rewrite(self, b: Builder) -> None:
        inside = np.zeros(self.shape, dtype=bool)
        mask = np.pad(inside, [(max(lo, 0), max(hi, 0)) for lo, hi in self.pads.T], constant_values=True)
        mask = mask[tuple(slice(max(-lo, 0), mask.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(self.pads.T))]
        y = self.node.outputs[0]
        padded = b.var("padded", y.dtype, shape=list(mask.shape))
        self.node.outputs[0] = padded
        self.node.inputs.pop()
        fill = b.const("fill", np.where(mask, self.value, 0), np.dtype(y.dtype or np.float32))
        b.op("Add", [padded, fill], "fill", out=y)


Rule = Union[SqueezeAsReshape, EqualSplit, SplitAsSlices, PadWithoutValue, PadValueMask]


@register_pass
class LegacyAxesAttributesPass(GraphPass):
    name = "legacy_axes_attributes"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Optional[Union[Rule, Refusal]]:
        if node.op in ("Squeeze", "Unsqueeze") and len(node.inputs) == 2:
            return self._reshape_instead(node)
        if node.op == "Split" and len(node.inputs) == 2 and node.inputs[1].name:
            return self._split_parts(node)
        if node.op == "Pad" and len(node.inputs) >= 3 and node.inputs[2].name:
            return self._pad_value(node)
        if node.op in REDUCE_OPS and len(node.inputs) == 2 and node.inputs[1].name:
            return self.refuse(node, "its axes are an input, which onnx2ncnn ignores (it would reduce every axis), "
                                     "and no exact form exists at this opset; export with opset 12 (ReduceSum) "
                                     "or 17 (the other reductions)")
        return None

    def _reshape_instead(self, node: gs.Node) -> Union[SqueezeAsReshape, Refusal]:
        given, shape = constant_value(node.inputs[1]), static_shape(node.inputs[0])
        if given is None or shape is None:
            return self.refuse(node, "its axes are not constant or its input has no static shape")
        out_rank = len(shape) + (given.size if node.op == "Unsqueeze" else -given.size)
        axes = sorted(int(a) % (out_rank if node.op == "Unsqueeze" else len(shape)) for a in given.reshape(-1))
        if 0 in axes or shape[0] != 1 or not 2 <= out_rank <= 5:
            return self.refuse(node, f"it acts on axis 0 or makes rank {out_rank} (onnx2ncnn needs a batch of 1 "
                                     "at axis 0 and ranks 2..5)")
        if node.op == "Squeeze":
            return SqueezeAsReshape(node, [d for i, d in enumerate(shape) if i not in axes])
        rest = iter(shape)
        return SqueezeAsReshape(node, [1 if i in axes else next(rest) for i in range(out_rank)])

    def _split_parts(self, node: gs.Node) -> Union[EqualSplit, SplitAsSlices, Refusal]:
        given, r = constant_value(node.inputs[1]), rank(node.inputs[0])
        if given is None or r is None:
            return self.refuse(node, "its split sizes are not constant or its input has no static rank")
        axis = node.attrs.get("axis", 0) % r
        if axis == 0:
            return self.refuse(node, "it splits axis 0, which onnx2ncnn takes as the batch")
        sizes = [int(s) for s in given.reshape(-1)]
        return EqualSplit(node) if len(set(sizes)) == 1 else SplitAsSlices(node, axis, sizes)

    def _pad_value(self, node: gs.Node) -> Union[PadWithoutValue, PadValueMask, Refusal]:
        value, pads = constant_value(node.inputs[2]), constant_value(node.inputs[1])
        if value is None or pads is None or len(node.inputs) > 3:
            return self.refuse(node, "its pads or value are not constant, or it has axes (onnx2ncnn reads neither)")
        if node.attrs.get("mode", "constant") != "constant" or float(value.reshape(-1)[0]) == 0:
            return PadWithoutValue(node)
        shape = static_shape(node.inputs[0])
        if shape is None:
            return self.refuse(node, "its input has no static shape, needed for the mask that adds the value")
        return PadValueMask(node, shape, pads.reshape(2, -1), value.reshape(()))

    def rewrite(self, graph: gs.Graph, rule: Rule) -> None:
        rule.rewrite(self.builder(graph, rule.node))
