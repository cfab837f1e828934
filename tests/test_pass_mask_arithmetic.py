import numpy as np
import onnx
import pytest

from deploykit.core.errors import ConfigError, StageError
from deploykit.core.parity import run_onnx
from deploykit.onnx.graph_pass import apply_to_model, resolve_passes
from deploykit.passes.mask_arithmetic import CompareToArithmeticPass, WhereToArithmeticPass
from passkit import assert_left_alone, assert_rewrites, f32, model_from_text, pnnx_leaves, rand, run_on_ncnn

T = 5
SCORES = np.random.default_rng(0).standard_normal((1, 2, T, T)).astype(np.float32)
PAD_MASK = np.array([[1, 1, 1, 0, 0]], np.float32)  # 1 = a token, 0 = padding


def attention(fill: float) -> onnx.ModelProto:
    """Causal self-attention weights: masked_fill(~tril, fill) then Softmax (as onnxsim leaves it)."""
    return model_from_text("""
        g (float[1,2,5,5] s) => (float[1,2,5,5] y) {
            w = Where(tril, s, fill)
            y = Softmax<axis=-1>(w)
        }""", {"tril": np.tril(np.ones((T, T), bool)), "fill": f32(fill)})


@pytest.mark.slow
def test_causal_mask_with_inf_fill_is_close_after_softmax_and_runs_on_ncnn(tmp_path):
    model = attention(-np.inf)
    assert "torch.where" in pnnx_leaves(model, {"s": SCORES}, tmp_path / "before")
    rewritten = assert_rewrites(model, WhereToArithmeticPass, expected_ops=["Mul", "Add", "Softmax"],
                                inputs={"s": SCORES}, atol=1e-6)
    fill = next(i for i in rewritten.graph.initializer if i.name.endswith("/from_b"))
    masked = ~np.tril(np.ones((T, T), bool))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(fill), np.where(masked, -1e4, 0))
    reference = run_onnx(model, {"s": SCORES}, stage="test")["y"]
    ncnn_out = run_on_ncnn(rewritten, {"s": SCORES}, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(reference.shape), reference, atol=1e-5)


def test_a_finite_fill_is_exact_and_neg_inf_value_is_an_argument():
    assert_rewrites(attention(-1e9), WhereToArithmeticPass, expected_ops=["Mul", "Add", "Softmax"],
                    inputs={"s": SCORES})
    rewritten, _ = apply_to_model(attention(-np.inf), WhereToArithmeticPass(neg_inf_value=-3e4))
    fill = next(i for i in rewritten.graph.initializer if i.name.endswith("/from_b"))
    assert onnx.numpy_helper.to_array(fill).min() == np.float32(-3e4)
    with pytest.raises(ConfigError, match="neg_inf_value"):
        WhereToArithmeticPass(neg_inf_value=-np.inf)


def padding(mask_type: str, mask_ops: str) -> onnx.ModelProto:
    """scores.masked_fill(<mask_ops on the key mask `m`>, -1e9) then Softmax."""
    return model_from_text(f"""
        g (float[1,2,5,5] s, {mask_type}[1,5] mask) => (float[1,2,5,5] y) {{
            {mask_ops}
            w = Where(m, big, s)
            y = Softmax<axis=-1>(w)
        }}""", {"zero": np.array(0, np.int64 if "int" in mask_type else np.float32), "big": f32(-1e9),
                "axes": np.array([1, 2], np.int64)})


@pytest.mark.slow
def test_padding_mask_from_a_float_0_1_input_runs_on_ncnn(tmp_path):
    model = padding("float", "u = Unsqueeze(mask, axes)\n m = Equal(u, zero)")
    inputs = {"s": SCORES, "mask": PAD_MASK}
    assert {"torch.eq", "torch.where"} <= set(pnnx_leaves(model, inputs, tmp_path / "before"))
    refusals = assert_left_alone(model, WhereToArithmeticPass())
    assert "float input 'mask' is not known to hold whole numbers" in refusals[0]
    assert "integer_valued" in refusals[0]
    rewritten = assert_rewrites(model, lambda: WhereToArithmeticPass(integer_valued=["mask"]),
                                expected_ops=["Unsqueeze", "Abs", "Sub", "Relu", "Mul", "Sub", "Mul", "Add", "Softmax"],
                                inputs=inputs)
    reference = run_onnx(model, inputs, stage="test")["y"]
    assert np.all(reference[..., 3:] == 0)  # the padded keys get no weight
    ncnn_out = run_on_ncnn(rewritten, inputs, tmp_path)
    np.testing.assert_allclose(ncnn_out["y"].reshape(reference.shape), reference, atol=1e-5)


def test_a_bool_mask_input_is_refused_because_pnnx_cannot_read_one(tmp_path):
    model = padding("bool", "n = Not(mask)\n m = Unsqueeze(n, axes)")
    inputs = {"s": SCORES, "mask": PAD_MASK.astype(bool)}
    refusals = assert_left_alone(model, WhereToArithmeticPass())
    assert "bool graph input 'mask'" in refusals[0] and "float 0/1 input" in refusals[0]
    with pytest.raises(StageError, match="unsupported tensor elem data type 9"):
        pnnx_leaves(model, inputs, tmp_path)


@pytest.mark.parametrize("mask_ops, reason", [
    ("m = Equal(mask, zero)", "'mask' is int64: ncnn reads integers only in Embed"),
    ("f = Cast<to=1>(mask)\n m = Equal(f, fzero)", "is cast from int64 'mask': ncnn cannot run that Cast"),
], ids=["int-ids", "cast-from-int"])
def test_masks_from_integer_tensors_are_refused(mask_ops, reason):
    model = model_from_text(f"""
        g (float[1,5] s, int64[1,5] mask) => (float[1,5] w, float[1,5] mf) {{
            {mask_ops}
            w = Where(m, big, s)
            mf = Cast<to=1>(m)
        }}""", {"zero": np.array(0, np.int64), "fzero": f32(0), "big": f32(-1e9)})
    for graph_pass in (WhereToArithmeticPass(), CompareToArithmeticPass()):
        refusals = assert_left_alone(model, graph_pass)
        assert len(refusals) == 1 and reason in refusals[0], refusals


T_ = np.float32(0.1)
NEAR = np.array([[-3e38, -1.0, -0.0, 0.0, np.nextafter(T_, np.float32(-1)), T_, np.nextafter(T_, np.float32(1)),
                  0.25, 1.0, 3e38]], np.float32)  # around the threshold 0.1, and the extremes


def gates(op: str, threshold_on_left: bool = False) -> onnx.ModelProto:
    """torch.where(x <op> 0.1, x, 0), and the same comparison cast to float."""
    operands = "t, x" if threshold_on_left else "x, t"
    return model_from_text(f"""
        g (float[1,10] x) => (float[1,10] y, float[1,10] s) {{
            c = {op}({operands})
            y = Where(c, x, zero)
            s = Cast<to=1>(c)
        }}""", {"t": f32(T_), "zero": f32(0)})


GATE = ["Sub", "Cast", "Clip", "Ceil", "Mul"]
NOT_GATE = ["Sub", "Cast", "Clip", "Ceil", "Sub", "Mul"]  # x >= t is 1 - (x < t)


@pytest.mark.parametrize("op, left, ops", [
    ("Greater", False, GATE), ("Less", False, GATE), ("GreaterOrEqual", False, NOT_GATE),
    ("LessOrEqual", False, NOT_GATE), ("Greater", True, GATE),  # 0.1 > x is x < 0.1
], ids=["gt", "lt", "ge", "le", "gt-mirrored"])
def test_a_real_value_against_a_constant_threshold_is_gated_exactly(op, left, ops):
    model = gates(op, left)
    where_only = assert_rewrites(model, WhereToArithmeticPass, expected_ops=[op] + ops, inputs={"x": NEAR})
    reference = run_onnx(model, {"x": NEAR}, stage="test")
    assert set(reference["s"].ravel()) == {0.0, 1.0}  # both sides of the threshold are in NEAR
    cast_too = ["Sub", "Sub", "Clip", "Clip", "Ceil", "Ceil"] + (["Sub", "Sub"] if op.endswith("OrEqual") else [])
    assert_rewrites(where_only, CompareToArithmeticPass, expected_ops=cast_too + ["Mul"], inputs={"x": NEAR})


@pytest.mark.slow
def test_a_float_threshold_gate_runs_on_ncnn(tmp_path):
    model = model_from_text("""
        g (float[1,8] x) => (float[1,8] y) {
            h = MatMul(x, w)
            c = Greater(h, t)
            y = Where(c, h, zero)
        }""", {"w": rand(8, 8), "t": f32(T_), "zero": f32(0)})
    inputs = {"x": rand(1, 8)}
    assert {"torch.gt", "torch.where"} <= set(pnnx_leaves(model, inputs, tmp_path / "before"))
    rewritten = assert_rewrites(model, WhereToArithmeticPass, expected_ops=["MatMul", "Sub", "Clip", "Ceil", "Mul"],
                                inputs=inputs)
    reference = run_onnx(model, inputs, stage="test")["y"]
    assert 0 < np.count_nonzero(reference) < reference.size
    got = run_on_ncnn(rewritten, inputs, tmp_path)["y"].reshape(reference.shape)
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got == 0, reference == 0)  # the same elements gated


@pytest.mark.parametrize("ops, constants, reason", [
    ("c = Greater(h, x)", {}, "'h' (MatMul output) is not known to hold whole numbers"),
    ("c = Equal(h, t)", {"t": f32(0.5)}, "only in an ordered comparison with a constant threshold"),
    ("c = Greater(h, t)", {"t": f32(1e-35)}, "below 2**-100"),
    ("c = Greater(h, t)", {"t": f32(np.inf)}, "not a finite float32"),
], ids=["two-tensors", "equal", "subnormal-difference", "infinite"])
def test_real_valued_comparisons_without_an_exact_form_are_refused(ops, constants, reason):
    model = model_from_text(f"""
        g (float[1,5] x) => (float[1,5] w) {{
            h = MatMul(x, weight)
            {ops}
            w = Where(c, h, zero)
        }}""", {"weight": np.eye(5, dtype=np.float32), "zero": f32(0), **constants})
    refusals = assert_left_alone(model, WhereToArithmeticPass())
    assert len(refusals) == 1 and reason in refusals[0], refusals


def test_a_mask_cast_to_integers_and_back_is_the_mask():
    # transformers 5: attention_mask = (ids != pad).to(torch.int64), then .bool() again
    model = model_from_text("""
        g (float[1,1,5,5] s, float[1,5] keep) => (float[1,1,5,5] y) {
            m = Cast<to=9>(keep)
            i = Cast<to=7>(m)
            b = Cast<to=9>(i)
            u = Unsqueeze(b, axes)
            w = Where(u, zero, low)
            y = Add(s, w)
        }""", {"axes": np.array([1, 2], np.int64), "zero": f32(0), "low": f32(np.finfo(np.float32).min)})
    inputs = {"s": SCORES[:, :1], "keep": PAD_MASK}
    assert_rewrites(model, lambda: WhereToArithmeticPass(integer_valued=["keep"]),
                    expected_ops=["Abs", "Clip", "Unsqueeze", "Sub", "Mul", "Add"], inputs=inputs)


LOGIC = """g (float[1,8] x) => (float[1,8] between, float[1,8] outside, float[1,8] flip, float[1,1,8] nonzero) {
    gt = Greater(x, two)
    le = LessOrEqual(x, four)
    both = And(gt, le)
    between = Cast<to=1>(both)
    lt = Less(x, one)
    ge = GreaterOrEqual(x, five)
    either = Or(lt, ge)
    outside = Cast<to=1>(either)
    nz = Cast<to=9>(x)
    eq = Equal(x, zero)
    ne = Not(eq)
    xor = Xor(nz, ne)
    flip = Cast<to=1>(xor)
    u = Unsqueeze(ne, axes)
    nonzero = Cast<to=1>(u)
}"""
LOGIC_CONSTANTS = {"one": f32(1), "two": f32(2), "four": f32(4), "five": f32(5), "zero": f32(0),
                   "axes": np.array([1], np.int64)}
WHOLE = {"x": f32([[-1, 0, 1, 2, 3, 4, 5, 6]])}


@pytest.mark.slow
def test_comparisons_and_logic_on_whole_numbers_run_on_ncnn(tmp_path):
    model = model_from_text(LOGIC, LOGIC_CONSTANTS)
    leaves = set(pnnx_leaves(model, WHOLE, tmp_path / "before"))
    assert {"torch.gt", "torch.le", "torch.lt", "torch.ge", "torch.eq", "torch.logical_and", "torch.logical_or",
            "torch.logical_not", "torch.logical_xor", "Tensor.to"} <= leaves
    rewritten = assert_rewrites(model, lambda: CompareToArithmeticPass(integer_valued=["x"]), changed=4, inputs=WHOLE,
                                expected_ops=["Sub", "Sub", "Sub", "Sub", "Abs", "Abs", "Abs", "Clip", "Sub", "Clip",
                                              "Clip", "Clip", "Sub", "Sub", "Clip", "Max", "Relu", "Relu", "Mul",
                                              "Sub", "Sub", "Sub", "Unsqueeze", "Abs"])
    reference = run_onnx(model, WHOLE, stage="test")
    np.testing.assert_array_equal(reference["between"], [[0, 0, 0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(reference["outside"], [[1, 1, 0, 0, 0, 0, 1, 1]])
    ncnn_out = run_on_ncnn(rewritten, WHOLE, tmp_path)
    for name, expected in reference.items():
        np.testing.assert_allclose(ncnn_out[name].reshape(expected.shape), expected, atol=1e-5, err_msg=name)


def test_clip_takes_attributes_before_opset_11():
    model = model_from_text("g (float[1,8] x) => (float[1,8] y) { gt = Greater(x, two)\n y = Cast<to=1>(gt) }",
                            {"two": f32(2)}, opset=10)
    rewritten = assert_rewrites(model, lambda: CompareToArithmeticPass(integer_valued=["x"]),
                                expected_ops=["Sub", "Clip"], inputs=WHOLE)
    assert {a.name for a in rewritten.graph.node[1].attribute} == {"min", "max"}


def test_a_mask_looked_up_in_a_whole_table_needs_no_promise_and_runs_on_ncnn(tmp_path):
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6,1] y) {
            x = Gather(table, ids)
            big = GreaterOrEqual(x, two)
            y = Cast<to=1>(big)
        }""", {"table": f32([[0], [3], [1], [2], [0], [0], [0], [0], [0], [0]]), "two": f32(2)})
    model.graph.node[0].name = "lookup"  # pnnx makes an Embed only of a named Gather
    # (and traces it with random ids below 10, hence the 10 rows)
    inputs = {"ids": np.array([[0, 1, 2, 3, 3, 0]], np.int64)}
    rewritten = assert_rewrites(model, CompareToArithmeticPass, expected_ops=["Gather", "Sub", "Clip"], inputs=inputs)
    ncnn_out = run_on_ncnn(rewritten, inputs, tmp_path)
    np.testing.assert_array_equal(ncnn_out["y"].reshape(6), [0, 1, 0, 1, 1, 0])


@pytest.mark.parametrize("a, b, expected_ops", [
    ("s", "t", ["Abs", "Sub", "Relu", "Sub", "Mul", "Mul", "Add"]),
    ("zero", "s", ["Abs", "Sub", "Relu", "Sub", "Mul"]),  # masked_fill(m, 0): the zero product is dropped
], ids=["two-tensors", "zero-fill"])
def test_where_blends_exactly(a, b, expected_ops):
    model = model_from_text(f"""
        g (float[1,5] s, float[1,5] t, float[1,5] mask) => (float[1,5] w) {{
            m = Equal(mask, zero)
            w = Where(m, {a}, {b})
        }}""", {"zero": f32(0)})
    inputs = {"s": SCORES[0, 0, :1], "t": SCORES[0, 1, :1], "mask": PAD_MASK}
    assert_rewrites(model, lambda: WhereToArithmeticPass(integer_valued=["mask"]), expected_ops=expected_ops,
                    inputs=inputs)


def test_auto_runs_them_after_id_mask_lookup_for_both_converters():
    for converter in ("pnnx", "onnx2ncnn"):
        names = [p.name for p in resolve_passes(None, converter)]
        assert names.index("id_mask_lookup") < names.index("where_to_arithmetic") < names.index("compare_to_arithmetic")
