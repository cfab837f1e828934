"""Rewrites for the legacy onnx2ncnn converter: forms it reads right, still valid at the model's opset.

onnx2ncnn (Tencent/ncnn tools/onnx/onnx2ncnn.cpp) reads Squeeze/Unsqueeze/Split/ReduceX axes and
Pad's value only from attributes, takes axis 0 as the batch (writing `axis - 1`), drops shape[0]
of every Reshape, and fuses LayerNorm only from a fixed chain of consecutive nodes.

Why not put the opset-11 attributes back: those nodes are invalid at opset 13 (onnx.checker and
onnxruntime reject them), and the engine keeps the model's opset_import, so lowering the whole
model with onnx.version_converter cannot be done from a pass; nor could it lower opset 17+
(LayerNormalization has no down-conversion). Every rewrite here is valid at the model's opset.

- legacy_axes_attributes: Squeeze/Unsqueeze(x, axes:Constant) -> Reshape(x, static out shape);
  Split(x, split:Constant) -> Split(x) when the parts are equal, else one Slice per part;
  Pad(x, pads, value:Constant) -> Pad(x, pads) when value is 0, else Pad(x, pads) + mask with
  mask = value where padded, 0 inside. ReduceX(x, axes:Input) is refused: no exact form exists.
- positive_axes: negative `axis` of Softmax/Concat/Gather/Flatten/Split and negative Squeeze/
  Unsqueeze `axes` attributes -> positive, from static ranks; Softmax without an axis gets its
  default written out (onnx2ncnn assumes 1; opset 13 means -1). Reduce* axes are left negative on
  purpose: onnx2ncnn passes negative reduction axes to ncnn unchanged (correct), and its LayerNorm
  fusion looks for axes -1 / (-2, -1). Transpose perms cannot be negative in valid ONNX.
- decompose_layernorm: LayerNormalization -> ReduceMean, Sub, Pow(2), ReduceMean, Add(eps),
  Sqrt, Div, Mul(scale), Add(bias): the chain onnx2ncnn fuses into ncnn LayerNorm. Approximate:
  onnxruntime's kernel sums in another order (differences of a few ulp, tested at 1e-5).
- batched_matmul_2d: MatMul(A[1,H,M,K], B[1,H,K,N]), both computed -> per head
  Reshape([1,M,K]) x Reshape([1,K,N]) -> Reshape([1,1,M,N]), Concat(axis=1); with H == 1 only
  the Reshapes. onnx2ncnn writes dynamic MatMul as a 2-D Gemm, right only for [1,M,K] operands.
- drop_identity: Identity, inference Dropout and a Cast to the dtype its input already has ->
  removed (their readers read the input).
- scalar_constants: Add/Sub/Mul/Div/Max/Min/Pow with a constant of shape [1] -> the same constant
  0-D (onnx2ncnn's BinaryOp with_scalar takes only 0-D constants as input 1), constant moved to
  input 1 of commutative ops; Gemm(A, B:Constant, C, transB=0, beta) -> B transposed, transB=1,
  beta folded into C (onnx2ncnn writes InnerProduct only for alpha=beta=1, transA=0, transB=1).
Needed by: onnx2ncnn only (drop_identity also runs for pnnx, where it is harmless).
Not done: Flatten(axis != 1) and Gemm alpha != 1 or transA (no exact form). GELU's Erf has no
exact form in ops onnx2ncnn maps: erf_polynomial (its own file) approximates it within 1.5e-7.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx_graphsurgeon as gs
from onnx.helper import tensor_dtype_to_np_dtype

from deploykit.graph_pass import GraphPass, constant_value, register_pass, static_shape

REDUCE_OPS = ("ReduceMax", "ReduceMin", "ReduceMean", "ReduceProd", "ReduceSum", "ReduceSumSquare",
              "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp")


class _LegacyPass(GraphPass):
    """Shared by the passes below: naming and small graph-building helpers."""

    targets = ("onnx2ncnn",)

    def prefix(self, node: gs.Node) -> str:
        return f"{node.name or node.outputs[0].name}/{self.name}"

    def const(self, node: gs.Node, name: str, value: Any, dtype=np.int64) -> gs.Constant:
        return gs.Constant(f"{self.prefix(node)}/{name}", np.asarray(value, dtype=dtype))

    def add(self, graph: gs.Graph, anchor: gs.Node, op: str, name: str, inputs: list, output: gs.Tensor,
            **attrs) -> gs.Tensor:
        graph.nodes.append(gs.Node(op, name=f"{self.prefix(anchor)}/{name}", attrs=attrs, inputs=inputs,
                                   outputs=[output]))
        return output

    def var(self, anchor: gs.Node, name: str, like: gs.Tensor, shape=None) -> gs.Variable:
        return gs.Variable(f"{self.prefix(anchor)}/{name}", dtype=like.dtype, shape=shape)


def rank(tensor: gs.Tensor) -> Optional[int]:
    return None if tensor.shape is None else len(tensor.shape)


@register_pass
class LegacyAxesAttributesPass(_LegacyPass):
    """Squeeze/Unsqueeze/Split/Pad reading axes, sizes or a value from inputs -> forms onnx2ncnn reads."""

    name = "legacy_axes_attributes"
    order = 80

    def match(self, node: gs.Node) -> Optional[tuple[gs.Node, str, Any]]:
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

    def _reshape_instead(self, node: gs.Node) -> Optional[tuple[gs.Node, str, Any]]:
        axes, shape = constant_value(node.inputs[1]), static_shape(node.inputs[0])
        if axes is None or shape is None:
            return self.refuse(node, "its axes are not constant or its input has no static shape")
        out_rank = len(shape) + (axes.size if node.op == "Unsqueeze" else -axes.size)
        axes = sorted(int(a) % (out_rank if node.op == "Unsqueeze" else len(shape)) for a in axes.reshape(-1))
        if 0 in axes or shape[0] != 1 or not 2 <= out_rank <= 5:
            return self.refuse(node, f"it acts on axis 0 or makes rank {out_rank} (onnx2ncnn needs a batch of 1 "
                                     "at axis 0 and ranks 2..5)")
        if node.op == "Squeeze":
            out = [d for i, d in enumerate(shape) if i not in axes]
        else:
            rest = iter(shape)
            out = [1 if i in axes else next(rest) for i in range(out_rank)]
        return node, "reshape", out

    def _split_parts(self, node: gs.Node) -> Optional[tuple[gs.Node, str, Any]]:
        sizes, r = constant_value(node.inputs[1]), rank(node.inputs[0])
        if sizes is None or r is None:
            return self.refuse(node, "its split sizes are not constant or its input has no static rank")
        axis = node.attrs.get("axis", 0) % r
        if axis == 0:
            return self.refuse(node, "it splits axis 0, which onnx2ncnn takes as the batch")
        sizes = [int(s) for s in sizes.reshape(-1)]
        return node, ("equal_split" if len(set(sizes)) == 1 else "slices"), (axis, sizes)

    def _pad_value(self, node: gs.Node) -> Optional[tuple[gs.Node, str, Any]]:
        value, pads = constant_value(node.inputs[2]), constant_value(node.inputs[1])
        if value is None or pads is None or len(node.inputs) > 3:
            return self.refuse(node, "its pads or value are not constant, or it has axes (onnx2ncnn reads neither)")
        if node.attrs.get("mode", "constant") != "constant" or float(value.reshape(-1)[0]) == 0:
            return node, "drop_value", None
        shape = static_shape(node.inputs[0])
        if shape is None:
            return self.refuse(node, "its input has no static shape, needed for the mask that adds the value")
        return node, "value_mask", (shape, pads.reshape(2, -1), value.reshape(()))

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, str, Any]) -> None:
        node, kind, data = match
        if kind == "reshape":
            self.add(graph, node, "Reshape", "reshape", [node.inputs[0], self.const(node, "shape", data)],
                     node.outputs[0])
            node.outputs.clear()
        elif kind == "equal_split":
            node.inputs.pop()  # Split with no sizes splits equally, which is what onnx2ncnn writes
            if graph.opset >= 18:
                node.attrs["num_outputs"] = len(node.outputs)
        elif kind == "slices":
            axis, sizes = data
            ends, axes = np.cumsum(sizes), self.const(node, "axis", [axis])
            for i, out in enumerate(list(node.outputs)):
                start, end = self.const(node, f"start{i}", [ends[i] - sizes[i]]), self.const(node, f"end{i}", [ends[i]])
                self.add(graph, node, "Slice", f"slice{i}", [node.inputs[0], start, end, axes], out)
            node.outputs.clear()
        elif kind == "drop_value":
            node.inputs.pop()
        else:
            self._add_value_mask(graph, node, *data)

    def _add_value_mask(self, graph: gs.Graph, node: gs.Node, shape: list[int], pads: np.ndarray,
                        value: np.ndarray) -> None:
        """Pad with zeros, then add `value` where padded: x + 0 inside, 0 + value outside, both exact."""
        inside = np.zeros(shape, dtype=bool)
        mask = np.pad(inside, [(max(b, 0), max(e, 0)) for b, e in pads.T], constant_values=True)
        mask = mask[tuple(slice(max(-b, 0), mask.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(pads.T))]
        y = node.outputs[0]
        padded = self.var(node, "padded", y, shape=list(mask.shape))
        node.outputs[0] = padded
        node.inputs.pop()
        fill = self.const(node, "fill", np.where(mask, value, 0), dtype=np.dtype(y.dtype or np.float32))
        self.add(graph, node, "Add", "fill", [padded, fill], y)


@register_pass
class PositiveAxesPass(_LegacyPass):
    """Negative axes (Softmax, Concat, Gather, Flatten, Split, Squeeze...) -> positive ones."""

    name = "positive_axes"
    order = 81
    AXIS_OPS = ("Softmax", "Concat", "Gather", "Flatten", "Split")

    def match(self, node: gs.Node) -> Optional[tuple[gs.Node, dict, int]]:
        r = rank(node.inputs[0]) if node.inputs else None
        softmax_default = node.op == "Softmax" and "axis" not in node.attrs
        if node.op in self.AXIS_OPS and node.attrs.get("axis", 0) < 0 or softmax_default:
            if r is None:
                return self.refuse(node, "its input has no static rank; run shape inference (onnxsim) first")
            if "axis" not in node.attrs:
                return node, {"axis": None}, r  # the default depends on the opset: settled in rewrite
            return node, {"axis": node.attrs["axis"] + r}, r
        if node.op in ("Squeeze", "Unsqueeze") and any(a < 0 for a in node.attrs.get("axes", [])):
            if r is None:
                return self.refuse(node, "its input has no static rank; run shape inference (onnxsim) first")
            axes = node.attrs["axes"]
            out_rank = r + len(axes) if node.op == "Unsqueeze" else r
            return node, {"axes": [a % out_rank for a in axes]}, r
        return None

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, dict, int]) -> None:
        node, attrs, r = match
        if attrs.get("axis", 0) is None:  # Softmax: 1 before opset 13 (with 2-D coercion), -1 from 13 on
            attrs["axis"] = 1 if graph.opset < 13 else r - 1
        node.attrs.update(attrs)


@register_pass
class DecomposeLayerNormPass(_LegacyPass):
    """LayerNormalization (opset 17) -> the ReduceMean/Sub/Pow/Sqrt/Div chain onnx2ncnn fuses into LayerNorm."""

    name = "decompose_layernorm"
    order = 82

    def match(self, node: gs.Node) -> Optional[tuple[gs.Node, list[int], np.ndarray, np.ndarray]]:
        if node.op != "LayerNormalization":
            return None
        r = rank(node.inputs[0])
        if r is None:
            return self.refuse(node, "its input has no static rank; run shape inference (onnxsim) first")
        axis = node.attrs.get("axis", -1) % r
        if axis not in (r - 1, r - 2) or axis == 0:
            return self.refuse(node, f"it normalises from axis {axis} of {r}; onnx2ncnn fuses only the last one or two")
        scale = constant_value(node.inputs[1])
        bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else np.zeros_like(scale)
        if scale is None or bias is None:
            return self.refuse(node, "its scale or bias is not constant (ncnn LayerNorm stores them as weights)")
        if any(out.outputs for out in node.outputs[1:]):
            return self.refuse(node, "its mean or inverse deviation output is used")
        return node, [-1] if axis == r - 1 else [-2, -1], scale, bias

    def rewrite(self, graph: gs.Graph, match) -> None:
        node, axes, scale, bias = match
        x, y = node.inputs[0], node.outputs[0]
        eps = node.attrs.get("epsilon", 1e-5)
        dtype = np.dtype(x.dtype or np.float32)

        axes_input = self.const(node, "axes", axes)

        def reduce_mean(name: str, data: gs.Tensor) -> gs.Tensor:
            out = self.var(node, name, x)
            if graph.opset >= 18:  # valid ONNX, but onnx2ncnn reads only the attribute: export at opset 17
                return self.add(graph, node, "ReduceMean", name, [data, axes_input], out)
            return self.add(graph, node, "ReduceMean", name, [data], out, axes=axes)

        mean = reduce_mean("mean", x)
        diff = self.add(graph, node, "Sub", "diff", [x, mean], self.var(node, "diff", x))
        square = self.add(graph, node, "Pow", "square", [diff, self.const(node, "two", 2.0, dtype)],
                          self.var(node, "square", x))
        var = reduce_mean("var", square)
        shifted = self.add(graph, node, "Add", "eps", [var, self.const(node, "epsilon", eps, dtype)],
                           self.var(node, "shifted", x))
        std = self.add(graph, node, "Sqrt", "std", [shifted], self.var(node, "std", x))
        normed = self.add(graph, node, "Div", "normed", [diff, std], self.var(node, "normed", x))
        scaled = self.add(graph, node, "Mul", "scale", [normed, self.const(node, "scale", scale, dtype)],
                          self.var(node, "scaled", x))
        self.add(graph, node, "Add", "bias", [scaled, self.const(node, "bias", bias, dtype)], y)
        node.outputs.clear()


@register_pass
class BatchedMatMul2dPass(_LegacyPass):
    """MatMul of two computed [1,H,M,K] x [1,H,K,N] tensors -> per-head [1,M,K] MatMuls ncnn Gemm runs."""

    name = "batched_matmul_2d"
    targets = ()  # in no `auto`: deploykit's onnx2ncnn converter writes such a MatMul as ncnn's MatMul
    order = 84

    def __init__(self, max_heads: int = 64) -> None:
        self.max_heads = max_heads

    def match(self, node: gs.Node) -> Optional[tuple[gs.Node, list[int], list[int]]]:
        if node.op != "MatMul" or any(constant_value(t) is not None for t in node.inputs):
            return None
        a, b = (static_shape(t) for t in node.inputs)
        if a is None or b is None:
            return self.refuse(node, "its operands have no static shapes") if max(map(rank, node.inputs)) > 3 else None
        if any(len(s) == 3 and s[0] != 1 for s in (a, b)) or max(len(a), len(b)) > 4:
            return self.refuse(node, f"operands {a} x {b}: onnx2ncnn takes axis 0 as a batch of 1, and only "
                                     "[1,H,M,K] x [1,H,K,N] is split into 2-D products")
        if max(len(a), len(b)) <= 3:
            return None  # [1,M,K] x [1,K,N] is the 2-D product onnx2ncnn's Gemm computes
        a, b = ([1] * (4 - len(s)) + s for s in (a, b))
        if a[0] != 1 or b[0] != 1:
            return self.refuse(node, f"operands {a} x {b} have a batch other than 1 at axis 0")
        if max(a[1], b[1]) > self.max_heads:
            return self.refuse(node, f"{max(a[1], b[1])} heads is more than max_heads={self.max_heads}")
        return node, a, b

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, list[int], list[int]]) -> None:
        node, a, b = match
        heads, m, n = max(a[1], b[1]), a[2], b[3]
        y = node.outputs[0]
        per_head = [self._heads(graph, node, side, shape) for side, shape in zip("ab", (a, b))]
        products, out_shape = [], self.const(node, "out_shape", [1, 1, m, n])
        for h in range(heads):
            lhs, rhs = (parts[h % len(parts)] for parts in per_head)
            product = self.add(graph, node, "MatMul", f"matmul{h}", [lhs, rhs], self.var(node, f"product{h}", y))
            out = y if heads == 1 else self.var(node, f"head{h}", y)
            products.append(self.add(graph, node, "Reshape", f"head{h}", [product, out_shape], out))
        if heads > 1:
            self.add(graph, node, "Concat", "concat", products, y, axis=1)
        node.outputs.clear()

    def _heads(self, graph: gs.Graph, node: gs.Node, side: str, shape: list[int]) -> list[gs.Tensor]:
        """The operand as [1, rows, cols] matrices, one per head (one if it is broadcast)."""
        tensor, count = node.inputs["ab".index(side)], shape[1]
        parts = [tensor]
        if count > 1:
            parts = [self.var(node, f"{side}{h}", tensor) for h in range(count)]
            attrs = {"num_outputs": count} if graph.opset >= 18 else {}
            graph.nodes.append(gs.Node("Split", name=f"{self.prefix(node)}/split_{side}", attrs={"axis": 1, **attrs},
                                       inputs=[tensor], outputs=parts))
        matrix = self.const(node, f"{side}_shape", [1] + shape[2:])
        return [self.add(graph, node, "Reshape", f"{side}{h}_2d", [part, matrix],
                         self.var(node, f"{side}{h}_2d", tensor)) for h, part in enumerate(parts)]


@register_pass
class DropIdentityPass(_LegacyPass):
    """Identity, inference Dropout and a Cast to the dtype the input has -> removed."""

    name = "drop_identity"
    targets = ("pnnx", "onnx2ncnn")
    order = 85

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op not in ("Identity", "Dropout", "Cast"):
            return None
        if node.op == "Cast" and (node.inputs[0].dtype is None or
                                  np.dtype(node.inputs[0].dtype) != tensor_dtype_to_np_dtype(node.attrs["to"])):
            return None
        if node.op == "Dropout":
            if len(node.outputs) > 1 and node.outputs[1].outputs:
                return self.refuse(node, "its mask output is used")
            has_mode = len(node.inputs) > 2 and node.inputs[2].name
            training = constant_value(node.inputs[2]) if has_mode else np.array(False)
            if training is None or bool(training):
                return self.refuse(node, "it may run in training mode")
        x, y = node.inputs[0], node.outputs[0]
        if not y.outputs and not x.inputs:
            return self.refuse(node, "it copies a graph input or constant straight to a graph output")
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        if y in graph.outputs and x not in graph.outputs:  # keep the output's name: its producer writes it
            producer = x.inputs[0]
            producer.outputs[producer.outputs.index(x)] = y
            x, y = y, x
        for reader in list(y.outputs):
            for index, tensor in enumerate(reader.inputs):
                if tensor is y:
                    reader.inputs[index] = x


@register_pass
class ScalarConstantsPass(_LegacyPass):
    """One-element constants of binary ops -> 0-D scalars; Gemm normalised (transB, beta folded)."""

    name = "scalar_constants"
    order = 86
    BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow")

    def match(self, node: gs.Node) -> Optional[tuple[gs.Node, str, Any]]:
        if node.op == "Gemm":
            return self._gemm(node)
        if node.op not in self.BINARY or len(node.inputs) != 2:
            return None
        first, second = (constant_value(t) for t in node.inputs)
        swap = first is not None and second is None and node.op in ("Add", "Mul") and first.size == 1
        value = first if swap else second
        if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
            return None
        if value.ndim == 0 and not swap:
            return None
        other = node.inputs[0 if not swap else 1]
        if value.ndim > 0 and not (rank(other) or 0) >= value.ndim:
            return self.refuse(node, "the other operand's rank is unknown or lower, so a 0-D constant would "
                                     "change the output shape")
        return node, "scalar", (swap, value.reshape(()))

    def _gemm(self, node: gs.Node) -> Optional[tuple[gs.Node, str, Any]]:
        b = constant_value(node.inputs[1])
        c = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        trans_b, beta = node.attrs.get("transB", 0), node.attrs.get("beta", 1.0)
        if b is None or (trans_b == 1 and (beta == 1.0 or c is None)):
            return None
        if node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("transA", 0) != 0 or (beta != 1.0 and c is None):
            return self.refuse(node, "alpha != 1 or transA is set: folding them into the weights is not exact")
        return node, "gemm", (b if trans_b else b.T, c if c is None else (c * np.float32(beta)).astype(c.dtype))

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, str, Any]) -> None:
        node, kind, data = match
        if kind == "scalar":
            swap, value = data
            other = node.inputs[1 if swap else 0]
            node.inputs[0] = other
            node.inputs[1] = self.const(node, "scalar", value, value.dtype)
            return
        b, c = data
        node.inputs[1] = self.const(node, "weight", np.ascontiguousarray(b), b.dtype)
        if c is not None:
            node.inputs[2] = self.const(node, "bias", c, c.dtype)
        node.attrs.update(transB=1, beta=1.0)
