"""The shared checks every pass test makes, so each pass test is a few lines."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from deploykit.converters.pnnx import PnnxConverter
from deploykit.graph_pass import GraphPass, apply_to_model
from deploykit.ncnn_runtime import run_ncnn, unknown_layers
from deploykit.parity import run_onnx


def model_from_text(graph_text: str, initializers: dict[str, np.ndarray], opset: int = 13) -> onnx.ModelProto:
    """A model from ONNX text for the graph, with numpy initializers added (and checked)."""
    graph = onnx.parser.parse_graph(graph_text)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in initializers.items())
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def op_list(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_rewrites(model: onnx.ModelProto, make_pass: Callable[[], GraphPass], *, expected_ops: list[str],
                    inputs: dict[str, np.ndarray], changed: int = 1) -> onnx.ModelProto:
    """Apply a pass and check: full onnx.checker, the exact op list, onnxruntime outputs equal
    to the original's, and a second run that changes nothing. Returns the rewritten model."""
    rewritten, result = apply_to_model(model, make_pass())
    assert result.changed == changed, result.refusals
    onnx.checker.check_model(rewritten, full_check=True)
    assert op_list(rewritten) == expected_ops
    before = run_onnx(model, inputs, stage="test")
    after = run_onnx(rewritten, inputs, stage="test")
    assert before.keys() == after.keys()
    for name in before:
        assert after[name].dtype == before[name].dtype, name
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    again, second = apply_to_model(rewritten, make_pass())
    assert second.changed == 0 and again is rewritten
    return rewritten


def assert_left_alone(model: onnx.ModelProto, graph_pass: GraphPass) -> list[str]:
    """A near-miss graph is returned untouched; returns the pass's recorded refusals."""
    rewritten, result = apply_to_model(model, graph_pass)
    assert result.changed == 0
    assert rewritten is model
    return result.refusals


def run_on_ncnn(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workdir: Path) -> dict[str, np.ndarray]:
    """Convert with pnnx and run on the ncnn runtime; asserts every layer is one ncnn has."""
    path = workdir / "rewritten.onnx"
    onnx.save(model, str(path))
    outputs = [out.name for out in model.graph.output]
    conversion = PnnxConverter().convert(path, inputs, outputs, workdir, fp16=False, args=[], timeout=120)
    assert unknown_layers(conversion.param) == []
    return run_ncnn(conversion.param, conversion.bin, [(b, inputs[b.onnx_name]) for b in conversion.inputs],
                    conversion.outputs)
