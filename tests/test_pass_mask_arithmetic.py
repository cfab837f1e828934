import numpy as np
import onnx
import pytest

from deploykit.errors import ConfigError, StageError
from deploykit.graph_pass import apply_to_model, resolve_passes
from deploykit.parity import run_onnx
from deploykit.passes.mask_arithmetic import CompareToArithmeticPass, WhereToArithmeticPass
from passkit import assert_left_alone, assert_rewrites, f32, model_from_text, pnnx_leaves, run_on_ncnn

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


def test_a_threshold_on_real_values_is_refused():
    model = model_from_text("""
        g (float[1,5] s) => (float[1,5] w, float[1,5] hit) {
            h = MatMul(s, weight)
            m = Greater(h, half)
            w = Where(m, h, zero)
            whole = Less(zero, one)
            both = And(whole, m)
            hit = Cast<to=1>(both)
        }""", {"weight": np.eye(5, dtype=np.float32), "half": f32(0.5), "zero": f32(0), "one": f32(1)})
    for graph_pass in (WhereToArithmeticPass(), CompareToArithmeticPass()):
        refusals = assert_left_alone(model, graph_pass)
        assert "'h' (MatMul output) is not known to hold whole numbers" in refusals[0]
        assert "threshold on real values" in refusals[0]


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
