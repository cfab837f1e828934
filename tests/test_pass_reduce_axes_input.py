import pytest

from deploykit.passes.reduce_axes_input import ReduceAxesInputPass
from passkit import assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints, model_from_text, rand


@pytest.mark.slow
@pytest.mark.parametrize("op, opset, keepdims, x_type, axis, y_type, ops", [
    ("ReduceSum", 13, 1, "float[1,16,8]", -1, "float[1,16,1]", ["Reshape", "ReduceSum", "Reshape"]),
    ("ReduceMean", 18, 1, "float[1,16,8]", -1, "float[1,16,1]", ["Reshape", "ReduceMean", "Reshape"]),  # Llama's
    ("ReduceSum", 13, 0, "float[1,16,8]", -1, "float[1,16]", ["Reshape", "ReduceSum", "Reshape"]),  # RMSNorm at 18
    ("ReduceMean", 18, 1, "float[1,32,7,7]", 1, "float[1,1,7,7]", ["Reshape", "ReduceMean", "Reshape"]),
    ("ReduceSum", 13, 0, "float[1,3,8,1]", 2, "float[1,3,1]", ["Reshape", "ReduceSum", "Reshape"]),
], ids=["sum-13", "mean-18", "sum-13-nokeep", "mean-18-channels", "sum-13-size-1-after-nokeep"])
def test_one_axis_as_input_is_reduced_with_an_axis_of_size_1(tmp_path, op, opset, keepdims, x_type, axis, y_type,
                                                            ops):
    model = model_from_text(f"g ({x_type} x) => ({y_type} y) {{ y = {op}<keepdims={keepdims}>(x, a) }}",
                            {"a": ints([axis])}, opset=opset)
    x = {"x": rand(*[int(d) for d in x_type[6:-1].split(",")])}
    trailing_ones = x_type.endswith(",1]")  # onnxruntime sums [1,3,8,1] over axis 2 in another order
    rewritten = assert_rewrites(model, ReduceAxesInputPass, expected_ops=ops, inputs=x,
                                atol=1e-6 if trailing_ones else None)
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


def test_a_middle_axis_is_refused():
    model = model_from_text("g (float[1,4,16,8] x) => (float[1,4,1,8] y) { y = ReduceSum(x, a) }", {"a": ints([2])})
    assert assert_left_alone(model, ReduceAxesInputPass()) == [
        "ReduceSum '': it reduces axis 2 of [1, 4, 16, 8], which has axes of more than one element before and after "
        "it (or is the batch); export at an opset where axes are an attribute (<= 12 for ReduceSum, <= 17 for "
        "ReduceMean)"]
