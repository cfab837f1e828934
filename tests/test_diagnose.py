"""Which tensor first diverges: a wrong rewrite among correct ones, and a wrong layer in an ncnn
model, are each named, on the shipped encoder; models that agree give None."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from conftest import REPO
from deploykit.core.config import ParitySection
from deploykit.ncnn.converters.base import Conversion
from deploykit.ncnn.converters.pnnx import PnnxConverter
from deploykit.onnx.graph_pass import GraphPass, apply_to_model, registry
from deploykit.tools.diagnose import first_divergence_ncnn, first_divergence_onnx

MOBILE = REPO / "configs" / "mobile.yaml"
MIDDLE_SOFTMAX = "/layers.0/attention/Softmax"  # the first layer's attention; the second's is the output
LAST_SOFTMAX = "/layers.1/attention/Softmax"


@dataclass
class Encoder:
    exported: onnx.ModelProto  # after onnxsim, before any pass
    inputs: dict[str, np.ndarray]
    settings: ParitySection
    folder: Path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Encoder:
    from deploykit.core.config import load_config
    from deploykit.pipeline import run

    folder = tmp_path_factory.mktemp("encoder")
    config, path = load_config(MOBILE, [f"output={folder}"])
    code, _ = run(config, path)
    assert code == 0
    with np.load(folder / "inputs.npz") as saved:
        inputs = {name: saved[name] for name in saved.files}
    return Encoder(onnx.load(str(folder / "01_simplify.onnx")), inputs, config.parity, folder)


# --- ONNX against ONNX: test-only passes, one wrong ---------------------------------------------

class WrongSoftmaxAxis(GraphPass):
    """Test-only and wrong: moves one Softmax to another axis, optionally renaming its output."""

    name = "test_wrong_softmax_axis"

    def __init__(self, node_name: str, rename_to: str = "") -> None:
        self.node_name, self.rename_to = node_name, rename_to

    def match(self, node):
        return node if node.op == "Softmax" and node.name == self.node_name else None

    def rewrite(self, graph, node):
        node.attrs["axis"] = 2
        if self.rename_to:
            node.outputs[0].name = self.rename_to


class DecomposeSoftmax(GraphPass):
    """Test-only and correct: Softmax(x) -> Div(Exp(Sub(x, ReduceMax(x))), ReduceSum(...)), new
    names inside, the same output tensor."""

    name = "test_decompose_softmax"

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name

    def match(self, node):
        return node if node.op == "Softmax" and node.name == self.node_name else None

    def rewrite(self, graph, node):
        x, y = node.inputs[0], node.outputs[0]
        axes = gs.Constant(f"{node.name}/axes", np.array([-1], dtype=np.int64))
        top = graph.layer(op="ReduceMax", inputs=[x], outputs=[f"{node.name}/max"], attrs={"axes": [-1]})[0]
        shifted = graph.layer(op="Sub", inputs=[x, top], outputs=[f"{node.name}/shifted"])[0]
        exp = graph.layer(op="Exp", inputs=[shifted], outputs=[f"{node.name}/exp"])[0]
        total = graph.layer(op="ReduceSum", inputs=[exp, axes], outputs=[f"{node.name}/sum"])[0]
        node.outputs.clear()
        graph.layer(op="Div", inputs=[exp, total], outputs=[y])


def rewritten(model: onnx.ModelProto, *passes: GraphPass) -> onnx.ModelProto:
    for graph_pass in passes:
        model, result = apply_to_model(model, graph_pass)
        assert result.changed == 1, (graph_pass.name, result.refusals)
    return model


def correct_passes() -> list[GraphPass]:
    return [registry()["id_mask_lookup"](), DecomposeSoftmax(LAST_SOFTMAX)]


@pytest.mark.slow
def test_a_wrong_rewrite_among_correct_ones_is_named(encoder):
    after = rewritten(encoder.exported, registry()["id_mask_lookup"](), WrongSoftmaxAxis(MIDDLE_SOFTMAX),
                      DecomposeSoftmax(LAST_SOFTMAX))
    found = first_divergence_onnx(encoder.exported, after, encoder.inputs, encoder.settings)
    assert found is not None
    assert (found.where, found.tensor, found.node, found.op) == (
        "onnx", f"{MIDDLE_SOFTMAX}_output_0", MIDDLE_SOFTMAX, "Softmax")
    assert found.statistics["passed"] is False and found.statistics["max_abs"] > 0.01
    assert found.compared > 10 and found.matched == found.compared - 1
    assert f"'{MIDDLE_SOFTMAX}_output_0' of Softmax node '{MIDDLE_SOFTMAX}'" in found.describe()


@pytest.mark.slow
def test_a_renamed_tensor_is_compared_under_its_new_name(encoder):
    after = rewritten(encoder.exported, WrongSoftmaxAxis(MIDDLE_SOFTMAX, rename_to="renamed_probabilities"))
    unmapped = first_divergence_onnx(encoder.exported, after, encoder.inputs, encoder.settings)
    assert unmapped is not None and unmapped.op == "MatMul"  # the first consumer the two graphs share
    mapped = first_divergence_onnx(encoder.exported, after, encoder.inputs, encoder.settings,
                                   renames={f"{MIDDLE_SOFTMAX}_output_0": "renamed_probabilities"})
    assert mapped is not None and (mapped.tensor, mapped.node) == ("renamed_probabilities", MIDDLE_SOFTMAX)


@pytest.mark.slow
def test_graphs_that_agree_have_no_divergence(encoder):
    assert first_divergence_onnx(encoder.exported, encoder.exported, encoder.inputs, encoder.settings) is None
    after = rewritten(encoder.exported, *correct_passes())
    assert first_divergence_onnx(encoder.exported, after, encoder.inputs, encoder.settings) is None


# --- ONNX against ncnn: hand-edited .param files ------------------------------------------------

@pytest.fixture(scope="module")
def converted(encoder, tmp_path_factory) -> tuple[onnx.ModelProto, Conversion]:
    model = rewritten(encoder.exported, registry()["id_mask_lookup"]())
    folder = tmp_path_factory.mktemp("pnnx")
    onnx.save(model, str(folder / "final.onnx"))
    conversion = PnnxConverter().convert(folder / "final.onnx", encoder.inputs, [o.name for o in model.graph.output],
                                         folder, fp16=False, args=[], timeout=120)
    return model, conversion


def edited_param(conversion: Conversion, folder: Path, edit) -> Path:
    lines = conversion.param.read_text().splitlines()
    edit(lines)
    path = folder / "edited.ncnn.param"
    path.write_text("\n".join(lines) + "\n")
    return path


def layer_index(lines: list[str], kind: str, contains: str = "") -> int:
    return next(i for i, line in enumerate(lines) if line.split()[0] == kind and contains in line)


def change(lines: list[str], kind: str, contains: str, old: str, new: str) -> str:
    """Edit the first `kind` layer whose line holds `contains`; returns the layer's name."""
    index = layer_index(lines, kind, contains)
    assert old in lines[index]
    lines[index] = lines[index].replace(old, new)
    return lines[index].split()[1]


def add_detour(lines: list[str]) -> None:
    """Scale the attention scores by 2 and back by 0.5 before the first division: a blob no ONNX
    tensor matches, yet everything after it agrees again, as after a fused or re-laid-out layer."""
    index = layer_index(lines, "BinaryOp", " 2=4.0")
    fields = lines[index].split()
    scores = fields[4]
    fields[4] = "detour_back"
    lines[index] = " ".join(fields)
    lines[index:index] = [f"BinaryOp detour_double 1 1 {scores} detour_there 0=2 1=1 2=2.0",
                          "BinaryOp detour_half 1 1 detour_there detour_back 0=2 1=1 2=0.5"]
    layer_count, blob_count = map(int, lines[1].split())
    lines[1] = f"{layer_count + 2} {blob_count + 2}"


def diagnose(converted, encoder, param: Path):
    model, conversion = converted
    return first_divergence_ncnn(model, param, conversion.bin, encoder.inputs, conversion.inputs, encoder.settings)


@pytest.mark.slow
@pytest.mark.parametrize("kind, contains, old, new, onnx_op", [
    ("Softmax", "", " 0=2 ", " 0=1 ", "Softmax"),  # the first layer's attention over the wrong axis
    ("BinaryOp", " 2=4.0", " 2=4.0", " 2=3.0", "Div"),  # scores divided by 3, not sqrt(16)
])
def test_a_wrong_ncnn_layer_is_named(converted, encoder, tmp_path, kind, contains, old, new, onnx_op):
    names = []
    param = edited_param(converted[1], tmp_path, lambda lines: names.append(change(lines, kind, contains, old, new)))
    found = diagnose(converted, encoder, param)
    assert found is not None
    assert (found.where, found.layer_type, found.layer) == ("ncnn", kind, names[0])
    assert found.op == onnx_op and found.node.startswith("/layers.0/attention/")
    assert found.statistics["passed"] is False
    assert found.matched == found.compared - 1  # every blob before it matched an ONNX tensor
    assert f"{kind} '{names[0]}' (blob {found.blob})" in found.describe()


@pytest.mark.slow
def test_an_unmatched_blob_the_model_recovers_from_is_not_a_divergence(converted, encoder, tmp_path):
    assert diagnose(converted, encoder, edited_param(converted[1], tmp_path, add_detour)) is None

    def detour_and_wrong_softmax(lines):
        add_detour(lines)
        names.append(change(lines, "Softmax", "", " 0=2 ", " 0=1 "))

    names = []
    found = diagnose(converted, encoder, edited_param(converted[1], tmp_path, detour_and_wrong_softmax))
    assert found is not None and (found.layer_type, found.layer) == ("Softmax", names[0])
    assert found.matched == found.compared - 2  # the detour's first blob matched nothing


@pytest.mark.slow
def test_an_unedited_ncnn_model_has_no_divergence(converted, encoder):
    assert diagnose(converted, encoder, converted[1].param) is None


def test_a_blob_finds_its_tensor_among_hundreds_of_its_size_that_differ_in_few_elements():
    """The sampled elements rank the candidates; with allclose, every candidate they do not rule out
    is compared in full, so tensors equal on the sample but not elsewhere cannot hide the match."""
    from deploykit.tools.diagnose import _BySize, _closest_agreeing

    rng = np.random.default_rng(0)
    value = rng.standard_normal((4, 2500)).astype(np.float32)
    values = {}
    for i in range(300):  # each differs from `value` in 10 of its 10000 elements
        other = value.copy().reshape(-1)
        other[rng.choice(other.size, 10, replace=False)] += 1.0
        values[f"near_{i}"] = other.reshape(4, 2500)
    values["the_one"] = value.copy()
    values["other_size"] = value[:2]
    settings = ParitySection()
    blob = value.reshape(1, 4, 2500) + np.float32(1e-6)  # ncnn's shape, a rounding away
    assert _closest_agreeing("blob_7", blob, _BySize(values, settings), values, settings) == ["the_one"]
    assert _closest_agreeing("blob_7", blob + 1, _BySize(values, settings), values, settings) == []
