"""Pow by a constant whole exponent -> multiplications, which ncnn computes right for every sign.

Before:  x -- Pow(n) --> y                     n a constant whole number, |n| >= 3 (or n == -1, -2)
After:   x -- Mul(x) -- Mul(.) ... --> y       x^|n| by repeated squaring (x^3 = x*x*x,
                                               x^4 = (x*x)*(x*x), ...), then Reciprocal if n < 0
Why: both converters write Pow as ncnn's BinaryOp pow, which computes exp(n * log(x)): for x <= 0
the ncnn runtime (1.0.20261020, x86) gives 2.4e+38 instead of x^n. GPT-2's GELU has x**3. pnnx
writes x**2 as UnaryOp square, which is right, so n == 2 is left alone, as are n == 0 and 1 and
fractional exponents (x**0.5 is NaN for x < 0 in ONNX too).
Exactness: within 1 ulp per multiplication of onnxruntime's pow (|n| <= max_exponent, default 8).
Needed by: pnnx and onnx2ncnn.
"""

from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from pydantic import PositiveInt

from deploykit.graph_pass import GraphPass, Matched, PassArgs, constant_value, register_pass


class IntegerPowArgs(PassArgs):
    max_exponent: PositiveInt = 8  # the largest |n| written as multiplications


@register_pass
class IntegerPowPass(GraphPass):
    name = "integer_pow"
    Args = IntegerPowArgs
    args: IntegerPowArgs

    def match(self, node: gs.Node) -> Matched[tuple[gs.Node, int]]:
        if node.op != "Pow":
            return None
        exponent = constant_value(node.inputs[1])
        if exponent is None or exponent.size != 1 or not np.issubdtype(np.dtype(node.inputs[0].dtype or np.float32),
                                                                        np.floating):
            return None
        value = float(exponent.reshape(()))
        if value != round(value) or int(value) in (0, 1, 2):
            return None
        if abs(value) > self.args.max_exponent:
            return self.refuse(node, f"the exponent {value:g} is beyond max_exponent={self.args.max_exponent}")
        return node, int(value)

    def rewrite(self, graph: gs.Graph, match: tuple[gs.Node, int]) -> None:
        node, exponent = match
        x, y = node.inputs[0], node.outputs[0]
        b = self.builder(graph, node, x.dtype)

        def mul(a: gs.Tensor, c: gs.Tensor) -> gs.Tensor:
            return b.op("Mul", [a, c], f"mul{len(b.made) + 1}")

        result, square, n = None, x, abs(exponent)
        while True:  # the bits of n, lowest first: result *= x^(2^k) where bit k is set
            if n & 1:
                result = square if result is None else mul(result, square)
            n >>= 1
            if not n:
                break
            square = mul(square, square)
        if exponent < 0:
            result = b.op("Reciprocal", [result], "reciprocal")
        b.write(result, y)  # the node that computes the whole power writes y
        node.outputs.clear()
