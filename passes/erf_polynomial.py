"""Erf (GELU's erf form) -> a rational-exponential approximation in ops onnx2ncnn maps.

Before:  x -- Erf --> y
After:   z = |x|,  t = 1 / (1 + p*z)
         q = ((((a5*t + a4)*t + a3)*t + a2)*t + a1) * t * exp(-z*z)
         s = Clip(x * 1e4, -1, 1)                        (the sign of x, 0 at x == 0)
         y = s * (1 - q)
         x -- Abs -- Mul(p) -- Add(1) -- Reciprocal ------------------------------ t
         t -- Mul(a5) -- Add(a4) -- Mul(t) -- Add(a3) -- ... -- Add(a1) -- Mul(t) -- q0
         z -- Mul(z) -- Neg -- Exp -- Mul(q0) -- Neg -- Add(1) -- Mul(s) --> y
Accuracy: 1 - q is Abramowitz & Stegun 7.1.26 for erf(z), z >= 0: absolute error below 1.5e-7
(tested below 5e-7 on float32 with rounding). The sign is exact for |x| >= 1e-4; below it s is
x * 1e4, which puts the result within 3e-5 of erf(x) there (in GELU, x * 0.5 * (1 + erf(x/sqrt 2)),
that is below 1e-8). 1e4 rather than a larger factor keeps the constant finite in float16.
Constraints: float32 input. Every new constant is 0-D and the second input of its node, the form
onnx2ncnn writes as a BinaryOp with a scalar; Clip takes its bounds from constants.
Needed by: builds of onnx2ncnn older than ncnn 20250916, which have no Erf ("Erf not supported
yet!"). The 20250916 binary writes ncnn's Erf layer, which the runtime computes exactly (tested on
the real binary), so `passes: auto` no longer runs this approximation; name it in a list for an
older build. pnnx converts Erf itself.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, register_pass

P = 0.3275911
A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)  # a1 .. a5
SIGN_SCALE = 1e4


@register_pass
class ErfPolynomialPass(GraphPass):
    """Erf -> 1 - poly(t) * exp(-x^2) with the sign of x (A&S 7.1.26, error < 1.5e-7)."""

    name = "erf_polynomial"
    targets = ()  # in no converter's `auto`: onnx2ncnn 20250916 maps Erf (see the module docstring)

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op != "Erf":
            return None
        dtype = node.inputs[0].dtype
        if dtype is not None and np.dtype(dtype) != np.float32:
            return self.refuse(node, f"its input is {np.dtype(dtype)}, not float32")
        return node

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        b = self.builder(graph, node, x.dtype)

        def op(kind: str, name: str, *inputs: gs.Tensor, out: Optional[gs.Tensor] = None) -> gs.Tensor:
            return b.op(kind, inputs, name, out=out)

        def scalar(name: str, value: float) -> gs.Constant:
            return b.const(name, value, np.float32)

        one = scalar("one", 1.0)
        z = op("Abs", "z", x)
        t = op("Reciprocal", "t", op("Add", "one_plus_pz", op("Mul", "pz", z, scalar("p", P)), one))
        poly = op("Mul", "a5t", t, scalar("a5", A[4]))
        for index in (3, 2, 1, 0):
            poly = op("Add", f"plus_a{index + 1}", poly, scalar(f"a{index + 1}", A[index]))
            poly = op("Mul", f"times_t{index + 1}", poly, t)
        gauss = op("Exp", "gauss", op("Neg", "minus_z2", op("Mul", "z2", z, z)))
        one_minus_q = op("Add", "one_minus_q", op("Neg", "minus_q", op("Mul", "q", poly, gauss)), one)
        sign = op("Clip", "sign", op("Mul", "scaled", x, scalar("scale", SIGN_SCALE)), scalar("lo", -1.0),
                  scalar("hi", 1.0))
        op("Mul", "erf", sign, one_minus_q, out=y)
        node.outputs.clear()
