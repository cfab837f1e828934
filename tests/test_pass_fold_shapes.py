import numpy as np
import pytest
from onnx import numpy_helper

from deploykit.passes.fold_shapes import FoldShapesPass
from passkit import (assert_clean_for, assert_left_alone, assert_rewrites, findings, ints, model_from_text, rand,
                     run_on_ncnn)


def initializer(model, name):
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


# opset 11 takes Unsqueeze axes as an attribute, opset 13 as an input: the one-node evaluation
# must be built for the model's opset.
RESHAPE_BY_SHAPE = {
    11: "u = Unsqueeze<axes=[0]>(d)",
    13: "u = Unsqueeze(d, axis0)",
}


@pytest.mark.slow
@pytest.mark.parametrize("opset", [11, 13])
def test_shape_gather_unsqueeze_concat_folds_into_the_reshape_constant(opset, tmp_path):
    model = model_from_text(f"""
        g (float[1,6,4] x) => (float[1,6,2,2] y) {{
            s = Shape(x)
            d = Gather<axis=0>(s, one)
            {RESHAPE_BY_SHAPE[opset]}
            shp = Concat<axis=0>(lead, u, two, minus1)
            y = Reshape(x, shp)
        }}""", {"one": np.array(1, np.int64), "axis0": ints([0]), "lead": ints([1]), "two": ints([2]),
                "minus1": ints([-1])}, opset=opset)
    unsqueeze = [("Unsqueeze", "fold_shapes")] if opset >= 13 else []  # its axes are an input from opset 13
    assert findings(model, "onnx2ncnn") == [("Shape", "fold_shapes"), ("Gather", "fold_shapes"), *unsqueeze,
                                            ("Reshape", "fold_shapes")]
    x = rand(1, 6, 4)
    rewritten = assert_rewrites(model, FoldShapesPass, expected_ops=["Reshape"], inputs={"x": x}, changed=4)
    np.testing.assert_array_equal(initializer(rewritten, "shp"), [1, 6, 2, -1])
    assert_clean_for(rewritten, "onnx2ncnn")
    ncnn_out = run_on_ncnn(rewritten, {"x": x}, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 6, 2, 2), x.reshape(1, 6, 2, 2), atol=1e-5)


def test_range_and_constant_of_shape_chain_folds_to_one_constant(tmp_path):
    model = model_from_text("""
        g (float[1,6,4] x) => (float[1,6,4] y) {
            s = Shape(x)
            t = Slice(s, one_v, two_v)
            n = Squeeze(t, axis0)
            r = Range(zero, n, one)
            rf = Cast<to=1>(r)
            col = Unsqueeze(rf, axis1)
            os = Concat<axis=0>(t, four)
            halves = ConstantOfShape<value=float[1] {0.5}>(os)
            pos = Mul(col, halves)
            y = Add(x, pos)
        }""", {"one_v": ints([1]), "two_v": ints([2]), "axis0": ints([0]), "axis1": ints([1]), "four": ints([4]),
               "zero": np.array(0, np.int64), "one": np.array(1, np.int64)})
    assert {"Range", "ConstantOfShape", "Shape"} <= {op for op, _ in findings(model, "onnx2ncnn")}
    x = rand(1, 6, 4)
    rewritten = assert_rewrites(model, FoldShapesPass, expected_ops=["Add"], inputs={"x": x}, changed=9)
    np.testing.assert_array_equal(initializer(rewritten, "pos"), np.repeat(np.arange(6.0)[:, None] * 0.5, 4, 1))
    assert_clean_for(rewritten, "onnx2ncnn")
    ncnn_out = run_on_ncnn(rewritten, {"x": x}, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 6, 4), x + initializer(rewritten, "pos"), atol=1e-5)


def test_equal_where_shape_of_an_intermediate_tensor_gives_expand_a_constant_shape(tmp_path):
    # torch's export of `x.expand_as(z)`: Where(Equal(shape, -1), 1, shape), on a tensor computed
    # inside the graph (its static shape comes from shape inference).
    model = model_from_text("""
        g (float[1,1,6] x, float[1,4,6] z) => (float[1,4,6] y) {
            zz = Relu(z)
            s = Shape(zz)
            eq = Equal(s, minus1)
            w = Where(eq, ones, s)
            e = Expand(x, w)
            y = Add(e, zz)
        }""", {"minus1": ints(-1, -1, -1), "ones": ints(1, 1, 1)})
    inputs = {"x": rand(1, 1, 6),
              "z": rand(1, 4, 6)}
    rewritten = assert_rewrites(model, FoldShapesPass, expected_ops=["Relu", "Expand", "Add"], inputs=inputs,
                                changed=3)
    np.testing.assert_array_equal(initializer(rewritten, "w"), [1, 4, 6])
    ncnn_out = run_on_ncnn(rewritten, inputs, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 4, 6), inputs["x"] + np.maximum(inputs["z"], 0), atol=1e-5)


def test_shape_of_a_dynamic_dimension_is_left_alone():
    model = model_from_text("""
        g (float[N,4] x) => (float[N,4] y) {
            s = Shape(x)
            y = Reshape(x, s)
        }""", {})
    refusals = assert_left_alone(model, FoldShapesPass())
    assert refusals == ["Shape '': the shape of 'x' is not static; give the model fixed input shapes"]


def test_a_graph_output_is_never_folded_into_a_constant():
    model = model_from_text("""
        g (float[1,6] x) => (int64[2] s) {
            s = Shape(x)
        }""", {})
    refusals = assert_left_alone(model, FoldShapesPass())
    assert refusals and "graph output" in refusals[0]


def test_a_graph_output_with_consumers_stays_computed_and_its_consumers_fold():
    model = model_from_text("""
        g (float[1,6] x) => (int64[2] s, float[6,1] y) {
            s = Shape(x)
            flipped = Gather<axis=0>(s, order)
            y = Reshape(x, flipped)
        }""", {"order": ints(1, 0)})
    x = rand(1, 6)
    rewritten = assert_rewrites(model, FoldShapesPass, expected_ops=["Shape", "Reshape"], inputs={"x": x},
                                changed=2)
    assert [o.name for o in rewritten.graph.output] == ["s", "y"]
    np.testing.assert_array_equal(initializer(rewritten, "flipped"), [6, 1])
