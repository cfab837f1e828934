"""gather_to_slice and strided_slice: onnxruntime before/after, the .param pnnx writes before, the
ncnn runtime after, and the pre-flight check for onnx2ncnn (no onnx2ncnn binary is at hand) on the result."""

import onnx
import numpy as np
import pytest

from deploykit.passes.indexing import GatherToSlicePass, StridedSlicePass
from passkit import (assert_clean_for, assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, findings,
                     ints, model_from_text, pnnx_leaves, rand, run_on_ncnn)


def one_op(op: str, x_type: str, y_type: str, opset: int = 13, **initializers) -> onnx.ModelProto:
    """A model `y = <op>` of one input x (helper of these tests)."""
    return model_from_text(f"g ({x_type} x) => ({y_type} y) {{ y = {op} }}", initializers, opset)


# gather_to_slice

@pytest.mark.slow
@pytest.mark.parametrize("axis,index,start,y_shape,found", [
    (1, 2, 2, [1, 8], []),  # onnx2ncnn converts a scalar index on a positive axis right itself
    (-1, -1, 7, [1, 6], [("Gather", "positive_axes")]),  # on a negative one, wrong numbers
])
def test_scalar_index_becomes_a_slice_and_a_reshape(tmp_path, axis, index, start, y_shape, found):
    model = one_op(f"Gather<axis={axis}>(x, i)", "float[1,6,8]", f"float[{','.join(map(str, y_shape))}]",
                   i=ints(index))
    x = {"x": rand(1, 6, 8)}
    assert findings(model, "onnx2ncnn") == found
    rewritten = assert_rewrites(model, GatherToSlicePass, expected_ops=["Slice", "Reshape"], inputs=x)
    bounds = {i.name.rsplit("/", 1)[-1]: onnx.numpy_helper.to_array(i).tolist() for i in rewritten.graph.initializer}
    assert bounds == {"starts": [start], "ends": [start + 1], "axes": [axis % 3], "shape": y_shape}
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


@pytest.mark.slow
def test_index_list_that_pnnx_gets_wrong_becomes_slices_of_its_runs(tmp_path):
    model = one_op("Gather<axis=2>(x, i)", "float[1,6,8]", "float[1,6,4]", i=ints([0, 2, 3, -1]))
    x = {"x": rand(1, 6, 8)}
    (tmp_path / "before").mkdir()
    before = run_on_ncnn(model, x, tmp_path / "before")  # pnnx writes a Crop of one index: no error, wrong shape
    assert before["y"].size == 6
    rewritten = assert_rewrites(model, GatherToSlicePass, expected_ops=["Slice", "Slice", "Slice", "Concat"], inputs=x)
    slices = [onnx.numpy_helper.to_array(i).tolist() for i in rewritten.graph.initializer if "starts" in i.name or
              "ends" in i.name]
    assert slices == [[0], [1], [2], [4], [7], [8]]
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


def test_a_run_of_indices_is_one_slice_and_opset_9_gets_attributes():
    model = one_op("Gather<axis=1>(x, i)", "float[1,6,8]", "float[1,3,8]", opset=9, i=ints([3, 4, 5]))
    rewritten = assert_rewrites(model, GatherToSlicePass, expected_ops=["Slice"], inputs={"x": rand(1, 6, 8)})
    assert {a.name: list(a.ints) for a in rewritten.graph.node[0].attribute} == {
        "starts": [3], "ends": [6], "axes": [1]}


def test_a_list_on_a_larger_axis_0_is_sliced(tmp_path):
    model = model_from_text("""g (float[1,6,8] x) => (float[2,2,8] y) {
        r = Reshape(x, shape)
        y = Gather<axis=0>(r, i)
    }""", {"shape": ints([3, 2, 8]), "i": ints([2, 0])})
    rewritten = assert_rewrites(model, GatherToSlicePass, expected_ops=["Reshape", "Slice", "Slice", "Concat"],
                                inputs={"x": rand(1, 6, 8)})
    assert_ncnn_matches_onnxruntime(rewritten, {"x": rand(1, 6, 8)}, tmp_path)


def test_an_index_of_several_dims_is_the_same_slices_reshaped(tmp_path):
    model = one_op("Gather<axis=2>(x, i)", "float[1,6,8]", "float[1,6,2,2]", i=ints([[1, 2], [3, 4]]))
    x = {"x": rand(1, 6, 8)}
    rewritten = assert_rewrites(model, GatherToSlicePass, expected_ops=["Slice", "Reshape"], inputs=x)
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


def test_a_gather_of_every_element_in_order_is_a_reshape(tmp_path):
    # transformers 5's padding mask: mask[1, T] -> Flatten -> [T, 1] -> Gather(axis 0, arange(T) as [1, 1, T])
    model = model_from_text("""g (float[1,16] m) => (float[1,1,16,1] y) {
        f = Flatten<axis=2>(m)
        y = Gather<axis=0>(f, i)
    }""", {"i": np.arange(16, dtype=np.int64).reshape(1, 1, 16)})
    m = {"m": rand(1, 16)}
    rewritten = assert_rewrites(model, GatherToSlicePass, expected_ops=["Reshape"], inputs=m)
    assert_ncnn_matches_onnxruntime(rewritten, m, tmp_path)


@pytest.mark.parametrize("x_type,op,y_type,indices,reason", [
    ("float[1,6,8]", "Gather<axis=0>(x, i)", "float[6,8]", ints(0), "axis 0 of size 1, the batch axis"),
    ("float[3,6,8]", "Gather<axis=0>(x, i)", "float[6,8]", ints(1), "left to pnnx"),
    ("float[1,6,8]", "Gather<axis=2>(x, i)", "float[1,6,0]", np.zeros(0, np.int64), "gathers nothing"),
    ("float[1,6,8]", "Gather<axis=2>(x, i)", "float[1,6,3]", ints([0, 2, 4]), "3 slices, more than max_slices=2"),
    ("float[1,2,3,4,5]", "Gather<axis=2>(x, i)", "float[1,2,4,5]", ints(1), "5 dims"),
    ("float[1,6,8]", "Gather<axis=2>(x, i)", "float[1,6]", ints(9), "out of range"),
], ids=["batch", "axis0-scalar", "empty", "too-many", "5d", "out-of-range"])
def test_near_misses_are_refused(x_type, op, y_type, indices, reason):
    model = model_from_text(f"g ({x_type} x) => ({y_type} y) {{ y = {op} }}", {"i": indices})
    refusals = assert_left_alone(model, GatherToSlicePass(max_slices=2))
    assert len(refusals) == 1 and reason in refusals[0]


def test_computed_indices_are_refused_and_a_table_lookup_is_not_indexing():
    model = model_from_text("""g (float[1,6,8] x, int64[2] i, int64[1,3] ids) => (float[1,6,2] y, float[1,3,8] e) {
        y = Gather<axis=2>(x, i)
        e = Gather(table, ids)
    }""", {"table": rand(10, 8)})
    assert assert_left_alone(model, GatherToSlicePass()) == [
        "Gather '': its indices are computed at run time, not constants"]


# strided_slice

@pytest.mark.slow
def test_every_second_element_becomes_reshape_slice_reshape(tmp_path):
    model = one_op("Slice(x, starts, ends, axes, steps)", "float[1,6,8]", "float[1,6,4]",
                   starts=ints([0]), ends=ints([8]), axes=ints([2]), steps=ints([2]))
    x = {"x": rand(1, 6, 8)}
    assert pnnx_leaves(model, x, tmp_path / "before") == ["Tensor.slice"]
    rewritten = assert_rewrites(model, StridedSlicePass, expected_ops=["Reshape", "Slice", "Reshape"], inputs=x)
    shapes = [onnx.numpy_helper.to_array(i).tolist() for i in rewritten.graph.initializer if i.name.endswith("shape")]
    assert shapes == [[1, 24, 2], [1, 6, 4]]
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


@pytest.mark.slow
@pytest.mark.parametrize("x_shape,bounds,y_type,expected_ops", [
    # Focus / space-to-depth: x[:, :, 1::2, ::2]; the window of axis 2 starts one early
    ([1, 3, 8, 8], ([1, 0], [8, 8], [2, 3], [2, 2]), "float[1,3,4,4]", ["Reshape", "Slice", "Reshape"] * 2),
    # x[:, :, ::2] with 7 rows: no window of 4*2 fits, so the last row is sliced alone
    ([1, 3, 7, 8], ([0], [99], [2], [2]), "float[1,3,4,8]",
     ["Slice", "Slice", "Reshape", "Slice", "Reshape", "Concat"]),
    # a step-1 axis, a negative start and a step of 3
    ([1, 3, 8, 8], ([1, -7], [3, 7], [1, -1], [1, 3]), "float[1,2,8,2]",
     ["Slice", "Slice", "Reshape", "Slice", "Reshape"]),
], ids=["focus", "odd-length", "mixed"])
def test_offsets_odd_lengths_and_mixed_steps_run_on_ncnn(tmp_path, x_shape, bounds, y_type, expected_ops):
    starts, ends, axes, steps = (ints(v) for v in bounds)
    model = one_op("Slice(x, starts, ends, axes, steps)", f"float[{','.join(map(str, x_shape))}]", y_type,
                   starts=starts, ends=ends, axes=axes, steps=steps)
    x = {"x": rand(*x_shape)}
    rewritten = assert_rewrites(model, StridedSlicePass, expected_ops=expected_ops, inputs=x)
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


def test_a_step_over_a_single_element_is_a_plain_slice():
    model = one_op("Slice(x, starts, ends, axes, steps)", "float[1,6,8]", "float[1,6,1]",
                   starts=ints([5]), ends=ints([8]), axes=ints([2]), steps=ints([4]))
    rewritten = assert_rewrites(model, StridedSlicePass, expected_ops=["Slice"], inputs={"x": rand(1, 6, 8)})
    assert len(rewritten.graph.node[0].input) == 4


def test_negative_steps_and_computed_bounds_are_refused():
    model = model_from_text("""g (float[1,6,8] x, int64[1] e) => (float[1,6,8] r, float[1,6,N] y) {
        r = Slice(x, last, before_first, axes, back)
        y = Slice(x, zero, e, axes, two)
    }""", {"last": ints([-1]), "before_first": ints([-9]), "axes": ints([2]), "back": ints([-1]),
           "zero": ints([0]), "two": ints([2])})
    assert assert_left_alone(model, StridedSlicePass()) == [
        "Slice '': a negative step [-1] reverses an axis, which no ncnn layer does",
        "Slice '': its starts, ends, axes or steps are computed at run time"]
