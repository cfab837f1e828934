"""Tests for passes/onnx2ncnn_legacy.py. No onnx2ncnn binary is at hand, so each rewrite is checked
on onnxruntime and with `assert_onnx2ncnn_maps`, which says whether every node is one that
onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# The op types tools/onnx/onnx2ncnn.cpp (Tencent/ncnn, commit d9b4836) writes an ncnn layer for;
# anything else it prints as "<op> not supported yet!".
ONNX2NCNN_OPS = frozenset("""
    Abs Acos Add Asin Atan AveragePool MaxPool BatchNormalization Ceil Clip Concat Constant Conv
    ConvTranspose Cos DepthToSpace Div Dropout Elu Exp Flatten Floor Gemm GlobalAveragePool
    GlobalMaxPool HardSigmoid HardSwish ImageScaler InstanceNormalization LeakyRelu Log LRN LSTM
    MatMul Max Min Mul Neg Pad Pow PRelu Reciprocal ReduceMax ReduceMin ReduceMean ReduceProd
    ReduceSum ReduceSumSquare ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp Relu Reshape Sigmoid
    Sin Slice Softmax Split Sqrt Squeeze Sub Sum Tan Tanh Transpose Upsample Resize Unsqueeze
""".split())
BATCH_AXIS_OPS = ("Softmax", "Concat", "Split", "Gather")  # onnx2ncnn writes `axis - 1`


def onnx2ncnn_problems(model: onnx.ModelProto) -> list[str]:
    """What onnx2ncnn would not map, or would read wrong, in this model (empty when all is well)."""
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    problems = []
    for node in model.graph.node:
        op, where = node.op_type, f"{node.op_type} {node.name!r}"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        inputs = [i for i in node.input if i]
        if op not in ONNX2NCNN_OPS:
            problems.append(f"{where}: not mapped")
        elif op in ("Squeeze", "Unsqueeze", "Split") or op.startswith("Reduce"):
            if len(inputs) > 1:
                problems.append(f"{where}: axes/split come from an input; onnx2ncnn reads only the attribute")
            axes = attrs.get("axes", [attrs.get("axis", 1)])
            if any(a == 0 for a in axes) or (op in ("Squeeze", "Unsqueeze", "Split") and any(a < 0 for a in axes)):
                problems.append(f"{where}: axes {list(axes)} (onnx2ncnn subtracts 1, taking axis 0 as the batch)")
        elif op == "Pad" and len(inputs) > 2 and float(consts.get(inputs[2], np.ones(1)).reshape(-1)[0]) != 0:
            problems.append(f"{where}: its constant_value input is ignored by onnx2ncnn")
        elif op == "Reshape":
            shape = consts.get(inputs[1])
            if shape is None or len(shape) < 2 or shape[0] != 1:
                problems.append(f"{where}: shape {shape} (onnx2ncnn drops shape[0] as the batch)")
        elif op == "MatMul" and inputs[1] not in consts:
            problems.append(f"{where}: dynamic B; check the ranks with onnx2ncnn_matmul_problems")
        elif op in BATCH_AXIS_OPS and attrs.get("axis", 1) < 1:
            problems.append(f"{where}: axis {attrs.get('axis')} (onnx2ncnn writes axis - 1)")
        elif op == "Softmax" and "axis" not in attrs:
            problems.append(f"{where}: no axis; onnx2ncnn assumes 1")
    return problems


def assert_onnx2ncnn_maps(model: onnx.ModelProto, allow_dynamic_matmul: bool = False) -> None:
    problems = onnx2ncnn_problems(model)
    if allow_dynamic_matmul:
        problems = [p for p in problems if "dynamic B" not in p]
    assert problems == []
