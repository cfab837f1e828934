import numpy as np
import pytest

from deploykit.passes.argmax_arithmetic import ArgMaxArithmeticPass
from passkit import assert_left_alone, assert_rewrites, findings, model_from_text, pnnx_leaves, run_on_ncnn

OPS = ["ReduceMax", "Sub", "Min", "Ceil", "Mul", "Add", "ReduceMin"]
# Ties, a maximum at either end, negative values, and a gap of one ulp.
X = np.array([[[0.5, 2.0, 2.0, -1.0, 0.0, 2.0],
               [7.0, 1.0, 3.0, 7.0, -7.0, 0.0],
               [-3.0, -2.0, -1.0, -4.0, -5.0, -1.0],
               [1.0, np.nextafter(np.float32(1.0), np.float32(2.0)), 1.0, 0.0, 0.0, 0.0]]], dtype=np.float32)


def arg(op: str = "ArgMax", axis: int = -1, keepdims: int = 0, last: int = 0, out: str = "int64[1,4]"):
    return model_from_text(f"""
        g (float[1,4,6] x) => ({out} i) {{
            i = {op}<axis = {axis}, keepdims = {keepdims}, select_last_index = {last}>(x)
        }}""")


@pytest.mark.parametrize("op, last, expected", [("ArgMax", 0, [1, 0, 2, 1]), ("ArgMax", 1, [5, 3, 5, 1]),
                                                ("ArgMin", 0, [3, 4, 4, 3]), ("ArgMin", 1, [3, 4, 4, 5])])
def test_the_index_of_the_first_or_last_extreme_comes_out_exactly_as_a_float(op, last, expected):
    ops = [OPS[0].replace("Max", "Max" if op == "ArgMax" else "Min"), *OPS[1:]]
    if last:
        ops[-2:] = ["Sub", "ReduceMax"]
    rewritten = assert_rewrites(arg(op, last=last), ArgMaxArithmeticPass, expected_ops=ops, inputs={"x": X},
                                made_float=("i",))
    assert rewritten.graph.output[0].type.tensor_type.elem_type == 1  # float
    assert findings(arg(op, last=last), "pnnx")[0][0] == op and findings(rewritten, "pnnx") == []
    assert findings(rewritten, "onnx2ncnn") == []
    from deploykit.core.parity import run_onnx

    assert run_onnx(rewritten, {"x": X}, stage="test")["i"].tolist() == [expected]


def test_another_axis_with_keepdims():
    assert_rewrites(arg(axis=1, keepdims=1, out="int64[1,1,6]"), ArgMaxArithmeticPass, expected_ops=OPS,
                    inputs={"x": X}, made_float=("i",))


@pytest.mark.slow
def test_ncnn_runs_it_where_pnnx_leaves_argmax(tmp_path):
    assert pnnx_leaves(arg(), {"x": X}, tmp_path / "before") == ["ArgMax"]
    rewritten = assert_rewrites(arg(), ArgMaxArithmeticPass, expected_ops=OPS, inputs={"x": X}, made_float=("i",))
    got = run_on_ncnn(rewritten, {"x": X}, tmp_path / "after")["i"]
    assert got.reshape(-1).tolist() == [1.0, 0.0, 2.0, 1.0]


def test_an_index_the_graph_reads_further_is_refused_with_the_way_out():
    model = model_from_text("""
        g (float[1,4,6] x, float[1,4] y) => (float[1,4] z) {
            i = ArgMax<axis = -1, keepdims = 0>(x)
            f = Cast<to = 1>(i)
            z = Add(f, y)
        }""")
    refusals = assert_left_alone(model, ArgMaxArithmeticPass())
    assert "its int64 index is read by" in refusals[0] and "cut_at" in refusals[0]
    assert findings(model, "pnnx")[0] == ("ArgMax", "no pass — do this on the host (cut the graph before it "
                                                    "with `cut_at`)")


def test_integer_input_and_opset_18_are_refused():
    ints = model_from_text("""
        g (int64[1,6] x) => (int64[1] i) { i = ArgMax<axis = 1, keepdims = 0>(x) }""")
    assert "not float" in assert_left_alone(ints, ArgMaxArithmeticPass())[0]
    late = model_from_text("""
        g (float[1,6] x) => (int64[1] i) { i = ArgMax<axis = 1, keepdims = 0>(x) }""", opset=18)
    assert "export at opset 17 or below" in assert_left_alone(late, ArgMaxArithmeticPass())[0]
