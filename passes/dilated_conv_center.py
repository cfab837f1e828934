"""A dilated Conv whose off-centre taps read only padding -> the 1x1 Conv of its centre tap.

Before:  x[N,C,H,W] -- Conv(W[M,C,k,k], dilations=d, pads=d*(k-1)/2, strides=1) --> y[N,M,H,W]
After:   x[N,C,H,W] -- Conv(W[:, :, c, c][..., None, None], no pads, no dilation) ----> y
         c = (k-1)/2. An output pixel i reads x[i + d*(t - c)] for tap t; with d >= H (and W)
         every tap but the centre falls outside the image, in the zero padding, and adds 0.
Where: DeepLabV3's ASPP (dilations 12/24/36) at small input sizes; at 160x160 its 10x10 feature
map makes all three 3x3 convolutions 1x1, which ncnn otherwise runs at full 3x3 cost (about 17 of
24 ms of the whole model on ncnn, scripts/README.md).
Constraints: constant weight; odd kernel sides; strides 1; zero ("same") padding d*(k-1)/2 on each
side; static spatial size; d >= that size on every spatial axis; any group count.
Exactness: the same products, without the zero ones; onnxruntime sums in another order (a few ulp).
Needed by: neither converter to convert; both to run the model at the speed of its real work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from deploykit.graph_pass import GraphPass, Matched, constant_value, register_pass, static_shape


@dataclass
class CenterTap:
    conv: gs.Node
    weight: np.ndarray  # the centre tap, [M, C/g, 1, ...]


@register_pass
class DilatedConvCenterPass(GraphPass):
    name = "dilated_conv_center"

    def match(self, node: gs.Node) -> Matched[CenterTap]:
        if node.op != "Conv" or len(node.inputs) < 2:
            return None
        dilations = list(node.attrs.get("dilations", []))
        if not dilations or max(dilations) == 1:
            return None
        weight = constant_value(node.inputs[1])
        shape = static_shape(node.inputs[0])
        if weight is None or shape is None or len(shape) != weight.ndim:
            return None
        kernel = list(weight.shape[2:])
        spatial = shape[2:]
        if any(k % 2 == 0 for k in kernel) or any(s != 1 for s in node.attrs.get("strides", [1] * len(kernel))):
            return None
        if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return None
        same = [d * (k - 1) // 2 for d, k in zip(dilations, kernel)]
        if list(node.attrs.get("pads", [0] * 2 * len(kernel))) != same + same:
            return None
        if any(d < size for d, size, k in zip(dilations, spatial, kernel) if k > 1):
            return self.refuse(node, f"dilations {dilations} do not exceed the input's spatial size {spatial}, so "
                                     "off-centre taps read the image")
        center = tuple(slice((k - 1) // 2, (k - 1) // 2 + 1) for k in kernel)
        index = (slice(None), slice(None), *center)
        return CenterTap(node, np.ascontiguousarray(weight[index]))

    def rewrite(self, graph: gs.Graph, match: CenterTap) -> None:
        conv = match.conv
        b = self.builder(graph, conv)
        ones = [1] * (match.weight.ndim - 2)
        attrs = {"kernel_shape": ones, "dilations": ones, "strides": ones, "pads": [0] * (2 * len(ones)),
                 "group": conv.attrs.get("group", 1)}
        b.node("Conv", [conv.inputs[0], b.const("weight", match.weight), *conv.inputs[2:]], "", list(conv.outputs),
               attrs)
        conv.outputs.clear()
