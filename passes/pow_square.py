"""x ** 2 outside a LayerNorm -> x * x, which ncnn computes right for every sign.

Before:  x -- Pow(2) --> y
After:   x -- Mul(x) --> y
Why: onnx2ncnn writes Pow as ncnn's BinaryOp pow, which computes exp(2 * log(x)): for x <= 0 the
ncnn runtime gives 2.4e+38 instead of x^2 (an RMSNorm's `x.pow(2).mean(-1)`, a variance written
by hand). pnnx writes x ** 2 as UnaryOp square, so only onnx2ncnn needs this; integer_pow covers
the other whole exponents for both converters.
Constraints: a float input; the exponent a constant 2. Left alone: the Pow of the chain onnx2ncnn
fuses into its LayerNorm (its input a Sub, its only reader a ReduceMean), where the fusion needs it.
Exact: x * x is the correctly rounded square, as onnxruntime's pow(x, 2) is.
Needed by: onnx2ncnn.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, constant_value, dtype_of, register_pass


@register_pass
class PowSquarePass(GraphPass):
    name = "pow_square"
    targets = ("onnx2ncnn",)

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op != "Pow":
            return None
        exponent = constant_value(node.inputs[1])
        if exponent is None or exponent.size != 1 or float(exponent.reshape(())) != 2.0:
            return None
        dtype = dtype_of(node.inputs[0])
        if dtype is not None and not np.issubdtype(dtype, np.floating):
            return self.refuse(node, f"its input is {dtype}, not a float")
        source, readers = node.inputs[0].inputs, node.outputs[0].outputs
        if source and source[0].op == "Sub" and len(readers) == 1 and readers[0].op == "ReduceMean":
            return None  # the variance of a LayerNorm: onnx2ncnn fuses the chain with this Pow in it
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        self.builder(graph, node).op("Mul", [x, x], "mul", out=y)
        node.outputs.clear()  # the engine's cleanup removes the Pow
