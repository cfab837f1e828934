import math

import numpy as np

from deploykit.core.parity import run_onnx
from deploykit.onnx.graph_pass import apply_to_model
from deploykit.passes.erf_polynomial import ErfPolynomialPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, f32, findings, model_from_text, run_on_ncnn

GELU = """
    g (float[1,8,64] x) => (float[1,8,64] y) {
        d = Div(x, r2)
        e = Erf(d)
        a = Add(e, one)
        m = Mul(x, a)
        y = Mul(m, half)
    }"""
GELU_INITS = {"r2": f32(math.sqrt(2.0)), "one": f32(1.0), "half": f32(0.5)}
X = np.linspace(-8, 8, 8 * 64, dtype=np.float32).reshape(1, 8, 64)
EXPECTED_OPS = ["Div", "Mul", "Abs", "Clip", "Mul", "Mul", "Add", "Neg", "Reciprocal", "Exp", "Mul", "Add", "Mul",
                "Add", "Mul", "Add", "Mul", "Add", "Mul", "Mul", "Neg", "Add", "Mul", "Add", "Mul", "Mul"]


def erf_model(n: int):
    return model_from_text(f"g (float[{n}] x) => (float[{n}] y) {{ y = Erf(x) }}")


def test_gelu_erf_becomes_ops_onnx2ncnn_maps_within_2e_6():
    model = model_from_text(GELU, GELU_INITS)
    assert findings(model, "onnx2ncnn") == []  # onnx2ncnn 20250916 maps Erf; this is for older builds
    rewritten = assert_rewrites(model, ErfPolynomialPass, expected_ops=EXPECTED_OPS, inputs={"x": X}, atol=2e-6)
    assert_clean_for(rewritten, "onnx2ncnn")


def test_erf_error_over_the_whole_line():
    x = np.concatenate([np.linspace(-6, 6, 20001), [0.0, 1e-4, -1e-4, 5e-5, -5e-5, 1e-30, 50.0, -50.0]])
    x = x.astype(np.float32)
    rewritten, result = apply_to_model(erf_model(len(x)), ErfPolynomialPass())
    assert result.changed == 1
    got = run_onnx(rewritten, {"x": x}, stage="test")["y"]
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    error = np.abs(got - exact)
    assert error[np.abs(x) >= 1e-4].max() < 5e-7
    assert error.max() < 3e-5                       # the sign ramp below |x| = 1e-4
    assert got[x == 0.0].tolist() == [0.0] * int((x == 0.0).sum())
    assert np.isfinite(got).all() and got.max() <= 1.0 and got.min() >= -1.0


def test_the_rewritten_gelu_runs_on_ncnn(tmp_path):
    rewritten, _ = apply_to_model(model_from_text(GELU, GELU_INITS), ErfPolynomialPass())
    got = run_on_ncnn(rewritten, {"x": X}, tmp_path)["y"].reshape(X.shape)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in X.ravel().astype(np.float64)])
    np.testing.assert_allclose(got.ravel(), exact, rtol=0, atol=1e-5)


def test_a_double_erf_is_left_alone():
    model = model_from_text("g (double[4] x) => (double[4] y) { y = Erf(x) }")
    assert "float64, not float32" in assert_left_alone(model, ErfPolynomialPass())[0]
