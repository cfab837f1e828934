"""The shared checks every pass test makes, so each pass test is a few lines: building models and
arrays, applying a pass, what the pre-flight check says for a converter, and the converters (pnnx,
the real onnx2ncnn) + the ncnn runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from deploykit.core.config import ConverterSection
from deploykit.core.parity import run_onnx
from deploykit.ncnn.converters.base import Conversion
from deploykit.ncnn.converters.onnx2ncnn import Onnx2NcnnConverter
from deploykit.ncnn.converters.pnnx import PnnxConverter
from deploykit.ncnn.judge import convert_and_run
from deploykit.ncnn.runtime import unknown_layers
from deploykit.onnx.graph_pass import GraphPass, apply_to_model
from deploykit.onnx.onnx_io import chain_order
from deploykit.tools.preflight import check_model

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Arrays and models


def ints(*values) -> np.ndarray:
    """An int64 array: ints(1, 4, 6) is [1, 4, 6]; one argument is read as numpy reads it, so
    ints([5]) is [5] and ints(0) is a 0-D scalar."""
    return np.array(values[0] if len(values) == 1 else values, dtype=np.int64)


def f32(value) -> np.ndarray:
    """A float32 array (or 0-D scalar) of `value`."""
    return np.array(value, np.float32)


def rand(*shape: int) -> np.ndarray:
    """Standard normal float32 values of `shape`, from one seeded generator."""
    return RNG.standard_normal(shape).astype(np.float32)


def model_from_text(graph_text: str, initializers: Optional[dict[str, np.ndarray]] = None, opset: int = 13,
                    domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    """A model from ONNX text for the graph, with numpy initializers added, and checked unless it
    uses ops of the extra `domains` (opset 1 each), which the checker may not know."""
    graph = onnx.parser.parse_graph(graph_text)
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in (initializers or {}).items())
    opsets = [onnx.helper.make_opsetid("", opset)] + [onnx.helper.make_opsetid(domain, 1) for domain in domains]
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if not domains:
        onnx.checker.check_model(model, full_check=True)
    return model


def shaped(graph_text: str, initializers: Optional[dict] = None, opset: int = 13) -> onnx.ModelProto:
    """model_from_text with every tensor's shape inferred, as onnxsim leaves a model."""
    return onnx.shape_inference.infer_shapes(model_from_text(graph_text, initializers, opset), strict_mode=True)


def op_list(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def as_fed(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs cast to the dtypes the model declares, as the pipeline feeds a rewritten model
    (a pass may turn integer ids into a float input of the same values)."""
    declared = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in model.graph.input}
    return {name: value.astype(declared[name]) if name in declared else value for name, value in inputs.items()}


# ---------------------------------------------------------------------------------------------
# Applying a pass


def assert_rewrites(model: onnx.ModelProto, make_pass: Callable[[], GraphPass], *, expected_ops: list[str],
                    inputs: dict[str, np.ndarray], changed: int = 1, atol: Optional[float] = None,
                    made_float: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Apply a pass and check: full onnx.checker, the exact op list, onnxruntime outputs equal
    to the original's (within `atol` for a pass its docstring calls approximate; inputs a pass
    moved to the host are fed their rows; outputs in `made_float`, integers before, float32
    after), and a second run that changes nothing. Returns the rewritten model."""
    graph_pass = make_pass()
    rewritten, result = apply_to_model(model, graph_pass)
    assert result.changed == changed, result.refusals
    onnx.checker.check_model(rewritten, full_check=True)
    assert op_list(rewritten) == expected_ops, op_list(rewritten)
    before = run_onnx(model, inputs, stage="test")
    after = run_onnx(rewritten, as_fed(rewritten, {**inputs, **host_rows(graph_pass, inputs)}), stage="test")
    assert before.keys() == after.keys()
    for name in before:
        assert after[name].dtype == (np.float32 if name in made_float else before[name].dtype), name
        if atol is None:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        else:
            np.testing.assert_allclose(after[name], before[name], rtol=0, atol=atol, err_msg=name)
    again, second = apply_to_model(rewritten, make_pass())
    assert second.changed == 0 and again is rewritten
    return rewritten


def host_rows(graph_pass: GraphPass, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs a pass that moved table lookups to the host added, computed from the ids as the
    pipeline (and the app) computes them."""
    return {found.input: found.rows(inputs[found.ids]) for found in getattr(graph_pass, "host_lookups", ())}


def assert_left_alone(model: onnx.ModelProto, graph_pass: GraphPass) -> list[str]:
    """A near-miss graph is returned untouched; returns the pass's recorded refusals."""
    rewritten, result = apply_to_model(model, graph_pass)
    assert result.changed == 0
    assert rewritten is model
    return result.refusals


# ---------------------------------------------------------------------------------------------
# What a converter takes: deploykit.tools.preflight is the one source of truth


def findings(model: onnx.ModelProto, target: str) -> list[tuple[str, str]]:
    """(op, fix) of every node the pre-flight check says `target` refuses or gets wrong."""
    return [(finding.op, finding.fix) for finding in check_model(model, target)]


def assert_clean_for(model: onnx.ModelProto, target: str) -> None:
    """The pre-flight check finds nothing `target` would refuse or get wrong; else shows what it found."""
    found = check_model(model, target)
    assert found == [], "\n".join(f"{f.op} {f.node!r}: {f.reason} Fix: {f.fix}" for f in found)


# ---------------------------------------------------------------------------------------------
# pnnx and the ncnn runtime


def pnnx_convert(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workdir: Path,
                 file_name: str = "model.onnx", converter: str = "pnnx") -> Conversion:
    """Save `model` in `workdir` (made if missing) and convert it there with pnnx, or with the
    real onnx2ncnn ($ONNX2NCNN; the graph chain-ordered as the convert stage gives it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / file_name
    onnx.save(chain_order(model) if converter == "onnx2ncnn" else model, str(path))
    outputs = [out.name for out in model.graph.output]
    tool = Onnx2NcnnConverter() if converter == "onnx2ncnn" else PnnxConverter()
    return tool.convert(path, inputs, outputs, workdir, fp16=False, args=[], timeout=120)


def onnx2ncnn_outcome(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workdir: Path,
                      atol: float = 1e-5) -> str:
    """What the real onnx2ncnn and the ncnn runtime make of a graph: "refused" (it printed that it
    could not convert a node), "unknown" (it wrote a layer ncnn cannot create), "crash" (the ncnn
    runtime died or failed running it), "wrong" (it ran, and an output differs from onnxruntime's,
    within `atol`, in size or values), else "ok"."""
    inputs = as_fed(model, inputs)
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = convert_and_run(model, inputs, ConverterSection(name="onnx2ncnn"), workdir, timeout=120)
    if outcome.problems:
        return "refused"
    if outcome.leftovers:
        return "unknown"
    if outcome.outputs is None:  # onnx2ncnn itself, or the ncnn runtime, died or failed
        return "crash"
    got = outcome.outputs
    want = run_onnx(model, inputs, stage="test")
    same = all(got[name].size == want[name].size and
               np.allclose(got[name].reshape(want[name].shape), want[name], atol=atol, rtol=1e-4)
               for name in want)
    return "ok" if same else "wrong"


def assert_onnx2ncnn_fixed(before: onnx.ModelProto, after: onnx.ModelProto, inputs: dict[str, np.ndarray],
                           workdir: Path, *, shows: str, atol: float = 1e-5) -> None:
    """The real onnx2ncnn fails on the graph before a pass the way its rule says (`shows`, an
    onnx2ncnn_outcome), and converts the graph after it into a model ncnn runs right."""
    assert onnx2ncnn_outcome(before, inputs, workdir / "before", atol) == shows
    assert onnx2ncnn_outcome(after, inputs, workdir / "after", atol) == "ok"


def pnnx_leaves(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workdir: Path) -> list[str]:
    """The layer types, one per layer, that pnnx writes for `model` and ncnn has no implementation of."""
    return [kind for kind, _ in unknown_layers(pnnx_convert(model, inputs, workdir, "before.onnx").param)]


def run_on_ncnn(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workdir: Path,
                converter: str = "pnnx") -> dict[str, np.ndarray]:
    """Convert with `converter` and run on the ncnn runtime; asserts every layer is one ncnn has."""
    inputs = as_fed(model, inputs)
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = convert_and_run(model, inputs, ConverterSection(name=converter), workdir, timeout=120)
    assert outcome.outputs is not None, outcome.why_not()
    return outcome.outputs


def assert_ncnn_matches_onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray], workdir: Path,
                                    converter: str = "pnnx") -> None:
    """Convert with `converter`, run on ncnn, compare every output with onnxruntime (ncnn drops the
    batch axis of one, so its arrays are compared in the ONNX shape)."""
    expected = run_onnx(model, as_fed(model, inputs), stage="test")
    got = run_on_ncnn(model, inputs, workdir, converter)
    for name, want in expected.items():
        assert got[name].size == want.size, (name, got[name].shape, want.shape)
        np.testing.assert_allclose(got[name].reshape(want.shape), want, atol=1e-5, err_msg=name)
