"""The pass engine gives every pass the graph, shapes and weight bytes it would get from a fresh
import of the model, while shape inference never copies the large weights."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from deploykit.graph_pass import GraphPass, apply_pass, apply_to_model, constant_value
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


def engine_model() -> onnx.ModelProto:
    return model_from_text(ENGINE, {"w": WEIGHT, "zero": ints([0]), "one": ints([1]), "minus_one": ints([-1])},
                           opset=17)


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


def test_a_pass_sees_the_shapes_a_fresh_import_gives():
    model = engine_model()
    looks = Looks()
    apply_to_model(model, looks)
    assert looks.seen == seen_after_a_fresh_import(model)
    assert looks.seen["r"] == ("float32", [1, 1024])


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
