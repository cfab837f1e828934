"""The pass engine shares one shape-annotated graph among the passes that change nothing, and
gives every pass the graph, shapes and weight bytes it would get from a fresh import."""

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from conftest import REPO
from deploykit.cli import main
from deploykit.core.config import PassEntry, load_config
from deploykit.core.errors import ConfigError
from deploykit.onnx.graph_pass import (GraphPass, PassGraph, apply_pass, apply_to_model, constant_value, describe_args,
                                       register_pass, registry, resolve_passes, with_inferred_shapes)
from deploykit.pipeline import run
from deploykit.tools.preflight import check_model
from passkit import ints, model_from_text, rand

# x @ w, through an Identity, reshaped to [batch, -1] by shape arithmetic that only data propagation
# follows: `r` is [1, 1024] only if inference reads Shape -> Slice -> Concat (Reshape-14 does).
ENGINE = """
engine (float[1, 16, 64] x) => (float[1, 1024] y) {
    h = MatMul(x, w)
    i = Identity(h)
    s = Shape(i)
    batch = Slice(s, zero, one)
    shape = Concat<axis = 0>(batch, minus_one)
    r = Reshape(i, shape)
    y = Relu(r)
}
"""
WEIGHT = rand(64, 64)  # 4096 elements: shape inference gets its dims, not its values


def engine_model(weight_as_float_data: bool = False) -> onnx.ModelProto:
    model = model_from_text(ENGINE, {"w": WEIGHT, "zero": ints([0]), "one": ints([1]), "minus_one": ints([-1])},
                            opset=17)
    if weight_as_float_data:  # how some exporters store weights; a re-encoded copy would use raw_data
        weight = next(t for t in model.graph.initializer if t.name == "w")
        weight.CopyFrom(onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, WEIGHT.shape, WEIGHT.ravel().tolist()))
    return model


class Looks(GraphPass):
    """Matches nothing; notes the dtype and shape of every tensor it is shown and reads every constant."""

    name = "test_looks"

    def __init__(self) -> None:
        self.seen: dict[str, tuple] = {}

    def match(self, node):
        for tensor in [*node.inputs, *node.outputs]:
            shape = None if tensor.shape is None else list(tensor.shape)
            self.seen[tensor.name] = (str(tensor.dtype), shape)
            constant_value(tensor)
        return None


class RenameWeight(GraphPass):
    name = "test_rename_weight"

    def match(self, node):
        return node if node.op == "MatMul" and node.inputs[1].name == "w" else None

    def rewrite(self, graph, node):
        node.inputs[1].name = "w_renamed"


def seen_after_a_fresh_import(model: onnx.ModelProto) -> dict[str, tuple]:
    looks = Looks()
    apply_pass(gs.import_onnx(onnx.shape_inference.infer_shapes(model, data_prop=True)), looks)
    return looks.seen


@pytest.fixture
def counted(monkeypatch) -> Counter:
    """How often the graph is imported, exported and shape-inferred."""
    calls = Counter()

    def spy(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(gs, "import_onnx", spy("import", gs.import_onnx))
    monkeypatch.setattr(gs, "export_onnx", spy("export", gs.export_onnx))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy("infer", onnx.shape_inference.infer_shapes))
    return calls


def test_passes_that_change_nothing_share_one_import_and_one_shape_inference(counted):
    model, graph = engine_model(), PassGraph()
    for _ in range(3):
        unchanged, result = graph.apply(model, Looks())
        assert unchanged is model and result.changed == 0
    assert counted == {"import": 1, "infer": 1}
    rewritten, result = graph.apply(model, registry()["drop_identity"]())
    assert result.changed == 1
    assert counted == {"import": 1, "infer": 1, "export": 1}
    graph.apply(rewritten, Looks())
    assert counted == {"import": 2, "infer": 2, "export": 1}  # the changed model, imported afresh


def test_every_pass_sees_the_shapes_a_fresh_import_gives_also_after_a_change():
    model, graph = engine_model(), PassGraph()
    first = Looks()
    graph.apply(model, first)
    assert first.seen == seen_after_a_fresh_import(model)
    assert first.seen["r"] == ("float32", [1, 1024])
    rewritten, _ = graph.apply(model, registry()["drop_identity"]())
    later = Looks()
    graph.apply(rewritten, later)
    assert "i" not in later.seen and later.seen["h"] == ("float32", [1, 16, 64])
    assert later.seen == seen_after_a_fresh_import(rewritten)
    assert later.seen["r"] == ("float32", [1, 1024])


def test_shape_inference_gets_the_large_weights_without_their_values(monkeypatch):
    handed = []
    infer_shapes = onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda m, **kw: handed.append(m) or infer_shapes(m, **kw))
    apply_to_model(engine_model(), Looks())
    given = {t.name: t for t in handed[0].graph.initializer}
    assert list(given["w"].dims) == [64, 64] and given["w"].data_type == onnx.TensorProto.FLOAT
    assert not given["w"].raw_data and not given["w"].float_data
    assert numpy_helper.to_array(given["minus_one"]).tolist() == [-1]  # small constants keep their values


def test_a_pass_that_renames_a_weight_leaves_the_source_model_as_it_was():
    model = engine_model()
    before = model.SerializeToString()
    rewritten, result = apply_to_model(model, RenameWeight())
    assert result.changed == 1 and model.SerializeToString() == before
    renamed = next(t for t in rewritten.graph.initializer if t.name == "w_renamed")
    np.testing.assert_array_equal(numpy_helper.to_array(renamed), WEIGHT)


def test_weights_are_exported_as_the_model_stores_them_after_a_pass_read_them():
    model = engine_model(weight_as_float_data=True)
    original = next(t for t in model.graph.initializer if t.name == "w").SerializeToString()
    graph = PassGraph()
    graph.apply(model, Looks())  # reads every constant's values, and changes nothing
    rewritten, result = graph.apply(model, registry()["drop_identity"]())
    assert result.changed == 1
    exported = next(t for t in rewritten.graph.initializer if t.name == "w")
    assert exported.SerializeToString() == original  # float_data as stored, not re-encoded as raw_data


@pytest.mark.slow
def test_a_run_imports_the_graph_once_and_again_only_after_the_pass_that_changed_it(tmp_path, counted):
    _, report = run(*load_config(REPO / "configs" / "mobile.yaml", [f"output={tmp_path / 'out'}"]))
    passes = [s for s in report["stages"] if s["name"].startswith("pass:")]
    assert [s["name"] for s in passes] == [f"pass:{name}" for name in report["passes"]]
    changed = [index for index, s in enumerate(passes) if s["changed"]]
    assert [passes[i]["name"] for i in changed] == ["pass:id_mask_lookup"] and 0 < changed[0] < len(passes) - 1
    for stage in passes:
        assert stage["status"] == ("ok" if stage["changed"] else "unchanged")
        assert isinstance(stage["refusals"], list)
    # One import for the passes up to the change, one for those after it, one export for the change.
    assert counted["import"] == 2 and counted["export"] == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("0*.onnx")) == [
        "00_export.onnx", "01_simplify.onnx", "02_id_mask_lookup.onnx"]


def failing_inference(monkeypatch, fails_on) -> None:
    infer_shapes = onnx.shape_inference.infer_shapes

    def infer(model, **kwargs):
        if fails_on(model):
            raise onnx.shape_inference.InferenceError("[ShapeInferenceError] made to fail")
        return infer_shapes(model, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", infer)


def without_values(model: onnx.ModelProto) -> bool:
    weight = next(t for t in model.graph.initializer if t.name == "w")
    return not weight.raw_data and not weight.float_data


def test_where_inference_fails_without_the_weights_values_the_whole_model_decides(monkeypatch):
    failing_inference(monkeypatch, without_values)
    inferred, left_out = with_inferred_shapes(engine_model())
    assert left_out == {} and not without_values(inferred)
    looks = Looks()
    apply_to_model(engine_model(), looks)
    assert looks.seen["r"] == ("float32", [1, 1024])
    findings = check_model(engine_model(), "pnnx")  # the pre-flight check takes the same way
    assert findings == []


def test_where_inference_fails_on_the_whole_model_too_passes_still_run_with_fewer_shapes(monkeypatch):
    failing_inference(monkeypatch, lambda model: True)
    inferred, left_out = with_inferred_shapes(engine_model())
    assert set(left_out) == {"w"} and without_values(inferred)
    looks = Looks()
    _, result = apply_to_model(engine_model(), looks)
    assert result.changed == 0
    assert looks.seen["r"] == ("None", None) and looks.seen["w"] == ("float32", [64, 64])
    assert check_model(engine_model(), "pnnx") == []


def test_the_auto_order_lists_every_built_in_pass_once():
    from deploykit.passes import AUTO

    built_ins = sorted(name for name, cls in registry().items() if cls.__module__.startswith("deploykit.passes."))
    assert sorted(AUTO) == built_ins and len(set(AUTO)) == len(AUTO)


@pytest.mark.parametrize("args,key,got", [({"max_vocab": "big"}, "max_vocab", "'big'"),
                                          ({"on_host": "no"}, "on_host", "'no'"),
                                          ({"max_vocabs": 8}, "max_vocabs", "unknown argument")])
def test_a_wrong_pass_argument_is_a_config_error_naming_its_key(tmp_path, capsys, args, key, got):
    config = tmp_path / "bad.yaml"
    config.write_text((REPO / "configs" / "mobile.yaml").read_text().replace(
        "passes: auto", f"passes: [auto, {{name: embedding_gather, args: {args}}}]").replace(
        "output: artifacts/mobile", f"output: {tmp_path / 'out'}"))
    assert main(["run", str(config)]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert f"passes[1].args.{key}:" in message and got in message and "(pass 'embedding_gather')" in message
    assert "max_vocab: int > 0 = 4096, on_host: bool = False" in message
    assert "bug" not in message and not (tmp_path / "out" / "00_export.onnx").exists()


def test_a_pass_made_in_code_validates_its_arguments_too():
    with pytest.raises(ConfigError, match=r"gather_to_slice.args.max_slices: Input should be greater than 0, got 0"):
        registry()["gather_to_slice"](max_slices=0)
    assert registry()["where_to_arithmetic"](integer_valued="mask").args.integer_valued == ["mask"]


def test_deploykit_passes_prints_each_argument_with_its_type_and_default(capsys, monkeypatch):
    passes = registry()
    assert describe_args(passes["gather_to_slice"]) == ["max_slices: int > 0 = 16"]
    assert describe_args(passes["id_mask_lookup"]) == ["num_ids: int > 0 or None = None"]
    assert describe_args(passes["where_to_arithmetic"]) == ["integer_valued: list[str] = []",
                                                            "neg_inf_value: float < 0, finite = -10000.0"]
    assert describe_args(passes["fold_shapes"]) == []
    monkeypatch.setenv("COLUMNS", "240")  # a table with no cell wrapped
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "max_slices: int > 0 = 16" in out and "integer_valued: list[str] = []" in out


class TakesItsArgumentsInInit(GraphPass):
    """A plugin written before passes declared `Args`."""

    name = "test_takes_its_arguments_in_init"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def match(self, node):
        return None


def test_a_plugin_that_takes_its_arguments_in_init_still_gets_them():
    register_pass(TakesItsArgumentsInInit)
    [made] = resolve_passes([PassEntry(name=TakesItsArgumentsInInit.name, args={"threshold": 0.25})], "pnnx")
    assert made.threshold == 0.25
    with pytest.raises(ConfigError, match=r"passes\[0\] \(test_takes_its_arguments_in_init\).args: .*'other'"):
        resolve_passes([PassEntry(name=TakesItsArgumentsInInit.name, args={"other": 1})], "pnnx")
