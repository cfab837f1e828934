import numpy as np
import pytest

from deploykit.passes.expand_broadcast import ExpandBroadcastPass
from passkit import (assert_clean_for, assert_left_alone, assert_rewrites, findings, ints, model_from_text, pnnx_leaves,
                     rand, run_on_ncnn)


def initializer_shapes(model):
    return {i.name.rsplit("/", 1)[-1]: list(i.dims) for i in model.graph.initializer}


def test_expand_before_broadcasting_ops_is_dropped(tmp_path):
    model = model_from_text("""
        g (float[1,1,6] x, float[1,4,6] z) => (float[1,4,6] y, float[1,4,6] w) {
            e = Expand(x, shape)
            y = Add(e, z)
            w = Mul(z, e)
        }""", {"shape": ints(1, 4, 6)})
    assert findings(model, "onnx2ncnn") == [("Expand", "expand_broadcast")]
    inputs = {"x": rand(1, 1, 6), "z": rand(1, 4, 6)}
    rewritten = assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Add", "Mul"], inputs=inputs)
    assert_clean_for(rewritten, "onnx2ncnn")
    ncnn_out = run_on_ncnn(rewritten, inputs, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 4, 6), inputs["x"] + inputs["z"], atol=1e-5)
    np.testing.assert_allclose(ncnn_out["w"].reshape(1, 4, 6), inputs["x"] * inputs["z"], atol=1e-5)


def test_expand_before_another_op_becomes_a_mul_by_small_ones(tmp_path):
    model = model_from_text("""
        g (float[1,3,1,5] x) => (float[1,3,4,5] y) {
            e = Expand(x, shape)
            y = Relu(e)
        }""", {"shape": ints(1, 3, 4, 5)})
    x = rand(1, 3, 1, 5)
    x[0, 0, 0, :3] = [-0.0, np.inf, np.nan]  # x * 1 keeps them bit for bit
    rewritten = assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Mul", "Relu"], inputs={"x": x})
    assert initializer_shapes(rewritten) == {"ones": [1, 1, 4, 1]}
    assert_clean_for(rewritten, "onnx2ncnn")
    x[0, 0, 0, :3] = 1.0  # ncnn's Relu is not asked about NaN here
    ncnn_out = run_on_ncnn(rewritten, {"x": x}, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 3, 4, 5), np.maximum(np.broadcast_to(x, (1, 3, 4, 5)), 0),
                               atol=1e-5)


def test_expand_that_adds_axes_and_is_a_graph_output_keeps_its_name(tmp_path):
    model = model_from_text("""
        g (float[1,5] x, float[1,3,4,5] z) => (float[1,3,4,5] e, float[1,3,4,5] y) {
            e = Expand(x, shape)
            y = Sub(z, e)
        }""", {"shape": ints(1, 3, 4, 1)})
    inputs = {"x": rand(1, 5), "z": rand(1, 3, 4, 5)}
    rewritten = assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Sub", "Mul"], inputs=inputs)
    assert [o.name for o in rewritten.graph.output] == ["e", "y"]
    assert initializer_shapes(rewritten) == {"ones": [1, 3, 4, 1]}
    sub = rewritten.graph.node[0]
    assert list(sub.input) == ["z", "x"]  # the Sub reads x itself
    ncnn_out = run_on_ncnn(rewritten, inputs, tmp_path)
    np.testing.assert_allclose(ncnn_out["e"].reshape(1, 3, 4, 5), np.broadcast_to(inputs["x"], (1, 3, 4, 5)),
                               atol=1e-5)
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 3, 4, 5), inputs["z"] - inputs["x"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("x_shape, repeats, expected_ops, ones", [
    ((1, 3, 1, 5), (1, 1, 4, 1), ["Mul"], {"ones": [1, 1, 4, 1]}),
    ((1, 3, 2, 5), (1, 1, 3, 2), ["Concat", "Concat"], {}),
], ids=["broadcast", "copies"])
def test_tile_that_pnnx_leaves_as_torch_tile_converts_after_the_pass(x_shape, repeats, expected_ops, ones,
                                                                     tmp_path):
    out_shape = [d * r for d, r in zip(x_shape, repeats)]
    model = model_from_text(f"""
        g (float[{",".join(map(str, x_shape))}] x) => (float[{",".join(map(str, out_shape))}] y) {{
            y = Tile(x, repeats)
        }}""", {"repeats": ints(*repeats)})
    x = rand(*x_shape)
    assert pnnx_leaves(model, {"x": x}, tmp_path / "before") == ["torch.tile"]
    assert findings(model, "onnx2ncnn") == [("Tile", "expand_broadcast")]
    rewritten = assert_rewrites(model, ExpandBroadcastPass, expected_ops=expected_ops, inputs={"x": x})
    assert initializer_shapes(rewritten) == ones
    assert_clean_for(rewritten, "onnx2ncnn")
    ncnn_out = run_on_ncnn(rewritten, {"x": x}, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(out_shape), np.tile(x, repeats), atol=1e-5)


def test_tile_by_ones_is_removed():
    model = model_from_text("""
        g (float[1,3,4] x) => (float[1,3,4] y) {
            t = Tile(x, repeats)
            y = Relu(t)
        }""", {"repeats": ints(1, 1, 1)})
    assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Relu"], inputs={"x": rand(1, 3, 4)})


def test_expand_whose_consumer_would_broadcast_to_a_smaller_shape_is_kept_as_a_mul():
    model = model_from_text("""
        g (float[1,1,6] x) => (float[1,4,6] y) {
            e = Expand(x, shape)
            y = Add(e, bias)
        }""", {"shape": ints(1, 4, 6), "bias": rand(6)})
    rewritten = assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Mul", "Add"], inputs={"x": rand(1, 1, 6)})
    assert initializer_shapes(rewritten) == {"bias": [6], "ones": [1, 4, 1]}


def test_pow_keeps_its_expanded_exponent_as_a_mul():
    # onnxruntime computes Pow with a broadcast exponent by another formula (x**3 differs in the last
    # bit for about 1 in 4 values), so dropping the Expand of an exponent is not exact; Mul by ones is.
    model = model_from_text("""
        g (float[1,4,6] x, float[1,1,1] p) => (float[1,4,6] y) {
            e = Expand(p, shape)
            y = Pow(x, e)
        }""", {"shape": ints(1, 4, 6)})
    inputs = {"x": np.abs(rand(1, 4, 6)) + 0.5, "p": np.array([[[3.0]]], np.float32)}
    rewritten = assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Mul", "Pow"], inputs=inputs)
    assert initializer_shapes(rewritten) == {"ones": [1, 4, 6]}


def test_bool_expand_that_is_not_broadcast_anyway_is_refused():
    model = model_from_text("""
        g (bool[1,1,6] m) => (bool[1,4,6] y) {
            e = Expand(m, shape)
            y = Not(e)
        }""", {"shape": ints(1, 4, 6)})
    refusals = assert_left_alone(model, ExpandBroadcastPass())
    assert refusals == ["Expand '': its values (bool) cannot go through a Mul, and not every consumer "
                        "broadcasts them anyway"]


def test_bool_expand_into_where_is_dropped():
    model = model_from_text("""
        g (bool[1,1,6] m, float[1,4,6] z) => (float[1,4,6] y) {
            e = Expand(m, shape)
            y = Where(e, z, zero)
        }""", {"shape": ints(1, 4, 6), "zero": np.array(0, np.float32)})
    inputs = {"m": np.array([[[True, False, True, True, False, False]]]), "z": rand(1, 4, 6)}
    assert_rewrites(model, ExpandBroadcastPass, expected_ops=["Where"], inputs=inputs)


def test_dynamic_shapes_and_computed_repeats_are_refused():
    model = model_from_text("""
        g (float[N,1] x, int64[2] r) => (float[N,4] y, float[M,K] t) {
            y = Expand(x, shape)
            t = Tile(x, r)
        }""", {"shape": ints(1, 4)})
    refusals = assert_left_alone(model, ExpandBroadcastPass())
    assert len(refusals) == 2 and all("not static" in reason for reason in refusals)
    # repeats computed from a static shape: shape inference knows the output, but the repeats are
    # not a constant until fold_shapes has run
    model = model_from_text("""
        g (float[1,3] x, float[2,2] z) => (float[2,6] t) {
            r = Shape(z)
            t = Tile(x, r)
        }""", {})
    assert assert_left_alone(model, ExpandBroadcastPass()) == [
        "Tile '': its repeats are not a constant of positive counts"]
