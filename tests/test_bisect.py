"""find_culprit_pass: stage files whose graphs all match on onnxruntime, one of them written by a
pass that pnnx converts wrong; the bisection must name that pass, on pnnx and the real ncnn runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.core.config import ParitySection, load_config
from deploykit.core.errors import ParityError
from deploykit.core.parity import run_onnx
from deploykit.onnx.graph_pass import apply_to_model, load_plugins, registry
from deploykit.pipeline import run
from deploykit.tools.bisect import find_culprit_pass
from passkit import f32, ints, model_from_text, rand

# Test-only passes, loaded as a plugin. Each is exact on onnxruntime; pnnx converts all but
# slice_to_gather right: it turns a Gather of a constant index list into the Crop of one index.
PLUGIN = '''
import numpy as np
import onnx_graphsurgeon as gs

from deploykit.onnx.graph_pass import GraphPass, constant_value, register_pass


def replace(graph, node, pass_name, op, inputs, attrs=None):
    """A new node op(inputs), named after `node`, takes over its output; cleanup drops `node`."""
    out = node.outputs[0]
    node.outputs.clear()
    graph.nodes.append(gs.Node(op, f"{node.name}/{pass_name}", attrs=attrs or {}, inputs=inputs, outputs=[out]))


def const(node, pass_name, value):
    return gs.Constant(f"{node.name}/{pass_name}/value", np.asarray(value, dtype=np.float32))


class ConstantOperand(GraphPass):
    """op(x, c) with the constant c equal to `value` -> a form of the same numbers."""
    op, value = "", None

    def match(self, node):
        c = constant_value(node.inputs[1]) if node.op == self.op else None
        return node if c is not None and (self.value is None or np.all(c == self.value)) else None


@register_pass
class DoubleToAdd(ConstantOperand):
    """Mul(x, 2) -> Add(x, x)."""
    name, op, value = "test_bisect_double_to_add", "Mul", 2.0

    def rewrite(self, graph, node):
        replace(graph, node, self.name, "Add", [node.inputs[0], node.inputs[0]])


@register_pass
class SubToAdd(ConstantOperand):
    """Sub(x, c) -> Add(x, -c)."""
    name, op = "test_bisect_sub_to_add", "Sub"

    def rewrite(self, graph, node):
        replace(graph, node, self.name, "Add", [node.inputs[0], const(node, self.name, -constant_value(node.inputs[1]))])


@register_pass
class DivToMul(ConstantOperand):
    """Div(x, 4) -> Mul(x, 0.25): exact, 4 being a power of two."""
    name, op, value = "test_bisect_div_to_mul", "Div", 4.0

    def rewrite(self, graph, node):
        replace(graph, node, self.name, "Mul", [node.inputs[0], const(node, self.name, 0.25)])


@register_pass
class ReluToMax(GraphPass):
    """Relu(x) -> Max(x, 0)."""
    name = "test_bisect_relu_to_max"

    def match(self, node):
        return node if node.op == "Relu" else None

    def rewrite(self, graph, node):
        replace(graph, node, self.name, "Max", [node.inputs[0], const(node, self.name, 0.0)])


@register_pass
class SliceToGather(GraphPass):
    """Slice(x, [s, e) on axis a > 0) -> Gather(x, [s, ..., e-1], axis=a): exact, but pnnx writes it wrong."""
    name = "test_bisect_slice_to_gather"

    def match(self, node):
        if node.op != "Slice" or len(node.inputs) != 4:
            return None
        starts, ends, axes = (constant_value(t) for t in node.inputs[1:4])
        if any(v is None or v.size != 1 for v in (starts, ends, axes)) or int(axes[0]) <= 0:
            return None
        return node, int(starts[0]), int(ends[0]), int(axes[0])

    def rewrite(self, graph, found):
        node, start, end, axis = found
        indices = gs.Constant(f"{node.name}/{self.name}/indices", np.arange(start, end, dtype=np.int64))
        replace(graph, node, self.name, "Gather", [node.inputs[0], indices], {"axis": axis})


@register_pass
class CastRoundTrip(GraphPass):
    """Relu(x) -> Cast<float>(Cast<double>(Relu(x))): exact, but pnnx leaves two Tensor.to ncnn lacks."""
    name = "test_bisect_cast_round_trip"

    def match(self, node):
        return node if node.op == "Relu" else None

    def rewrite(self, graph, node):
        out, wide = node.outputs[0], gs.Variable(f"{node.name}/{self.name}/double", dtype=np.float64)
        inner = gs.Variable(f"{node.name}/{self.name}/relu", dtype=np.float32)
        node.outputs = [inner]
        graph.nodes.append(gs.Node("Cast", f"{node.name}/{self.name}/up", {"to": 11}, [inner], [wide]))
        graph.nodes.append(gs.Node("Cast", f"{node.name}/{self.name}/down", {"to": 1}, [wide], [out]))


@register_pass
class DropCastRoundTrip(GraphPass):
    """Cast<float>(Cast<double>(x: float)) -> x."""
    name = "test_bisect_drop_cast_round_trip"

    def match(self, node):
        if node.op != "Cast" or node.attrs.get("to") != 1 or not node.inputs[0].inputs:
            return None
        up = node.inputs[0].inputs[0]
        return (node, up.inputs[0]) if up.op == "Cast" and up.attrs.get("to") == 11 else None

    def rewrite(self, graph, found):
        node, source = found
        for consumer in list(node.outputs[0].outputs):
            consumer.inputs[consumer.inputs.index(node.outputs[0])] = source
        node.outputs.clear()
'''

GOOD_PASSES = ["test_bisect_double_to_add", "test_bisect_sub_to_add", "test_bisect_div_to_mul",
               "test_bisect_relu_to_max"]
BAD_PASS = "test_bisect_slice_to_gather"
INPUTS = {"x": rand(1, 6, 4)}
SETTINGS = ParitySection()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plugin") / "bisect_test_passes.py"
    path.write_text(PLUGIN)
    load_plugins([str(path)])
    return path


def build_model(rows: str = "Slice(p, starts, ends, axes)") -> onnx.ModelProto:
    """x[1,6,4] -> x*2 - c -> /4 -> Relu -> MatMul -> rows 1..3; `rows` is how the rows are taken."""
    model = model_from_text(f"""
        g (float[1,6,4] x) => (float[1,3,5] y) {{
            doubled = Mul(x, two)
            shifted = Sub(doubled, c)
            scaled = Div(shifted, four)
            relu = Relu(scaled)
            p = MatMul(relu, w)
            y = {rows}
        }}""", {"two": f32(2), "c": rand(4), "four": f32(4), "w": rand(4, 5),
                "starts": ints([1]), "ends": ints([4]), "axes": ints([1]), "rows": ints([1, 2, 3])})
    for index, node in enumerate(model.graph.node):
        node.name = f"/{node.op_type.lower()}_{index}"
    return model


def write_stages(model: onnx.ModelProto, pass_names: list[str], folder: Path) -> list[tuple[str, Path]]:
    """The files a run writes: 01_simplify.onnx (here the model itself), then one per pass, each
    checked equal to the model on onnxruntime, as the pipeline checks them."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = run_onnx(model, INPUTS, stage="test")
    stages = [("simplify", folder / "01_simplify.onnx")]
    onnx.save(model, str(stages[0][1]))
    for index, name in enumerate(pass_names, start=2):
        model, result = apply_to_model(model, registry()[name]())
        assert result.changed == 1, (name, result.refusals)
        got = run_onnx(model, INPUTS, stage="test")
        np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-6, atol=1e-6, err_msg=name)
        stages.append((f"pass:{name}", folder / f"{index:02d}_{name}.onnx"))
        onnx.save(model, str(stages[-1][1]))
    return stages


def bisect(stages, tmp_path, model=None):
    reference = run_onnx(model or onnx.load(str(stages[0][1])), INPUTS, stage="test")
    return find_culprit_pass(stages, INPUTS, reference, SETTINGS, workdir=tmp_path / "probes")


@pytest.mark.slow
def test_names_the_pass_that_pnnx_converts_wrong(plugin, tmp_path):
    passes = GOOD_PASSES[:2] + [BAD_PASS] + GOOD_PASSES[2:]
    stages = write_stages(build_model(), passes, tmp_path / "run")
    culprit = bisect(stages, tmp_path)
    assert culprit is not None
    assert culprit.pass_name == BAD_PASS
    assert culprit.stage_file == "04_test_bisect_slice_to_gather.onnx"
    assert culprit.last_good_file == "03_test_bisect_sub_to_add.onnx"
    assert culprit.nodes_changed == [f"/slice_5/{BAD_PASS}"]
    # Bisection: the last stage, then 03 (matches), then 04 (differs); 01, 02, 05 never converted.
    assert culprit.probes == 3 < len(stages)
    assert sorted(culprit.verdicts) == [stages[i][1].name for i in (2, 3, 5)]
    assert sorted(p.name for p in (tmp_path / "probes").iterdir()) == ["02-03_test_bisect_sub_to_add",
                                                                     "03-04_test_bisect_slice_to_gather",
                                                                     "05-06_test_bisect_relu_to_max"]
    assert f"pass {BAD_PASS!r}" in culprit.detail and "output 'y'" in culprit.detail
    assert culprit.to_dict()["verdicts"]["03_test_bisect_sub_to_add.onnx"].startswith("matches")


@pytest.mark.slow
def test_the_culprit_as_the_last_stage_and_as_the_first_pass(plugin, tmp_path):
    stages = write_stages(build_model(), GOOD_PASSES + [BAD_PASS], tmp_path / "last")
    culprit = bisect(stages, tmp_path / "a")
    assert (culprit.pass_name, culprit.last_good_file) == (BAD_PASS, "05_test_bisect_relu_to_max.onnx")
    stages = write_stages(build_model(), [BAD_PASS] + GOOD_PASSES, tmp_path / "first")
    culprit = bisect(stages, tmp_path / "b")
    assert (culprit.pass_name, culprit.last_good_file) == (BAD_PASS, "01_simplify.onnx")


def test_every_stage_fine_on_ncnn_gives_none(plugin, tmp_path):
    stages = write_stages(build_model(), GOOD_PASSES, tmp_path / "run")
    assert bisect(stages, tmp_path) is None


@pytest.mark.slow
def test_already_wrong_before_any_pass(plugin, tmp_path):
    model = build_model("Gather<axis=1>(p, rows)")
    stages = write_stages(model, GOOD_PASSES, tmp_path / "run")
    culprit = bisect(stages, tmp_path, model)
    assert culprit.pass_name is None and culprit.last_good_file is None
    assert culprit.stage_file == "01_simplify.onnx" and culprit.nodes_changed == []
    assert "before any pass" in culprit.detail


@pytest.mark.slow
def test_a_stage_ncnn_cannot_run_is_stepped_over(plugin, tmp_path):
    # 03 leaves Tensor.to layers: not comparable; 04 removes them again; 05 is the culprit.
    passes = ["test_bisect_double_to_add", "test_bisect_cast_round_trip", "test_bisect_drop_cast_round_trip",
              BAD_PASS, "test_bisect_sub_to_add"]
    stages = write_stages(build_model(), passes, tmp_path / "run")
    culprit = bisect(stages, tmp_path)
    assert culprit.pass_name == BAD_PASS
    assert culprit.last_good_file == "04_test_bisect_drop_cast_round_trip.onnx"
    assert culprit.verdicts["03_test_bisect_cast_round_trip.onnx"].startswith("not comparable")
    assert "Tensor.to" in culprit.verdicts["03_test_bisect_cast_round_trip.onnx"]
    assert culprit.probes < len(stages)


def pipeline_config(tmp_path: Path, plugin: Path, passes: list[str]) -> tuple[Path, Path]:
    """A config running build_model() through `passes`; returns it and its output folder."""
    model_path = tmp_path / "model.onnx"
    onnx.save(build_model(), str(model_path))
    out = tmp_path / "out"
    config = tmp_path / "bisect.yaml"
    config.write_text(f"model: {{onnx: {model_path}}}\ninputs: [{{name: x, shape: [1, 6, 4]}}]\n"
                      f"output: {out}\nplugins: [{plugin}]\npasses: [{', '.join(passes)}]\n"
                      "variations: []\n")  # the run as configured: without the bad pass, a variation verifies
    return config, out


@pytest.mark.slow
def test_through_the_pipeline_the_report_leads_to_the_plugin_pass(plugin, tmp_path):
    config, out = pipeline_config(tmp_path, plugin, GOOD_PASSES[:2] + [BAD_PASS] + GOOD_PASSES[2:])
    with pytest.raises(ParityError) as raised:  # the default budget, 1x the conversion, may cut a slow machine short
        run(*load_config(config, ["parity.diagnose_budget=600"]))
    assert raised.value.stage == "verify"
    assert f"ncnn first differs after pass {BAD_PASS!r}" in raised.value.message
    report = json.loads((out / "report.json").read_text())
    verify = next(s for s in report["stages"] if s["name"] == "verify")
    assert verify["culprit"]["pass_name"] == BAD_PASS
    assert verify["culprit"]["stage_file"] == "04_test_bisect_slice_to_gather.onnx"
    assert verify["culprit"]["nodes_changed"] == [f"/slice_5/{BAD_PASS}"]
    # The run's own verdict on the last stage is reused: only 03 and 04 are converted again.
    assert verify["culprit"]["probes"] == 2
    assert verify["culprit"]["verdicts"]["06_test_bisect_relu_to_max.onnx"].startswith("differs")
    assert not any(p.name.startswith(".work-") for p in out.iterdir())
    stages = [(s["name"], out / s["artifact"]) for s in report["stages"]
              if s["name"] not in ("import", "export") and (s.get("artifact") or "").endswith(".onnx")]
    assert [name for name, _ in stages] == ["simplify", *(f"pass:{p}" for p in report["passes"])]
    with np.load(out / report["goldens"]["inputs"]) as saved:
        inputs = {name: saved[name] for name in saved.files}
    with np.load(out / report["goldens"]["reference"]) as saved:
        reference = {name: saved[name] for name in saved.files}
    settings = ParitySection.model_validate(report["config"]["parity"])
    culprit = find_culprit_pass(stages, inputs, reference, settings, workdir=tmp_path / "probes")
    assert culprit.pass_name == BAD_PASS
    assert culprit.stage_file == "04_test_bisect_slice_to_gather.onnx"
    assert culprit.last_good_file == "03_test_bisect_sub_to_add.onnx"
    assert culprit.probes < len(stages)


@pytest.mark.slow
def test_a_spent_budget_says_so_and_how_to_go_further(plugin, tmp_path):
    config, out = pipeline_config(tmp_path, plugin, [BAD_PASS, GOOD_PASSES[0]])
    with pytest.raises(ParityError) as raised:
        run(*load_config(config, ["parity.diagnose_budget=0"]))
    message = raised.value.message
    assert "First divergence: not found within the diagnosis budget (nothing was compared)." in message
    assert "The pass bisection did not run. The diagnosis stopped at its budget of 0 s (parity.diagnose_budget: 0)." \
        in message
    assert f"`deploykit reduce {out / '03_test_bisect_double_to_add.onnx'} -o reduced`" in message
    assert "`--set parity.diagnose_budget=4x`" in message
    verify = next(s for s in json.loads((out / "report.json").read_text())["stages"] if s["name"] == "verify")
    assert verify["divergence"]["stopped"] is True and verify["culprit"]["stopped"] is True
