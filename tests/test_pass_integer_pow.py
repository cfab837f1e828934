import numpy as np
import pytest

from deploykit.passes.integer_pow import IntegerPowPass
from passkit import assert_left_alone, assert_rewrites, f32, findings, model_from_text, pnnx_leaves, run_on_ncnn

X = np.linspace(-2, 2, 24, dtype=np.float32).reshape(1, 4, 6)
X_AWAY_FROM_0 = np.where(np.abs(X) < 0.5, np.float32(0.5), X)  # 1/x^n stays small


def power(exponent: float):
    return model_from_text("g (float[1,4,6] x) => (float[1,4,6] y) { y = Pow(x, e) }", {"e": f32(exponent)})


@pytest.mark.parametrize("exponent, ops", [(3, ["Mul", "Mul"]), (4, ["Mul", "Mul"]), (5, ["Mul", "Mul", "Mul"]),
                                           (7, ["Mul", "Mul", "Mul", "Mul"]), (-1, ["Reciprocal"]),
                                           (-3, ["Mul", "Mul", "Reciprocal"])])
def test_a_whole_exponent_becomes_multiplications(exponent, ops):
    x = X if exponent > 0 else X_AWAY_FROM_0
    rewritten = assert_rewrites(power(exponent), IntegerPowPass, expected_ops=ops, inputs={"x": x}, atol=1e-5)
    assert findings(rewritten, "pnnx") == findings(rewritten, "onnx2ncnn") == []


@pytest.mark.slow
def test_ncnn_gets_negative_bases_right_after_the_pass(tmp_path):
    # ncnn's pow computes exp(n * log(x)): 2.4e+38 for x <= 0.
    before = run_on_ncnn(power(3), {"x": X}, tmp_path / "before")["y"].reshape(X.shape)
    assert np.abs(before - X ** 3).max() > 1e30
    assert findings(power(3), "pnnx") == [("Pow", "integer_pow")]
    rewritten = assert_rewrites(power(3), IntegerPowPass, expected_ops=["Mul", "Mul"], inputs={"x": X}, atol=1e-5)
    got = run_on_ncnn(rewritten, {"x": X}, tmp_path / "after")["y"].reshape(X.shape)
    np.testing.assert_allclose(got, X ** 3, rtol=1e-6, atol=1e-6)
    assert pnnx_leaves(rewritten, {"x": X}, tmp_path / "leaves") == []


@pytest.mark.parametrize("exponent", [0.5, 2.0, 1.0, 0.0])
def test_squares_fractions_and_trivial_exponents_are_left_alone(exponent):
    assert_left_alone(power(exponent), IntegerPowPass())


def test_a_large_exponent_is_refused_with_the_knob():
    refusals = assert_left_alone(power(12), IntegerPowPass())
    assert "beyond max_exponent=8" in refusals[0]
    assert_rewrites(power(12), lambda: IntegerPowPass(max_exponent=12), expected_ops=["Mul"] * 4,
                    inputs={"x": X}, atol=1e-3)
