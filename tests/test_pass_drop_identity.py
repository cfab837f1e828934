"""Tests for passes/drop_identity.py. No onnx2ncnn binary is at hand, so each rewrite is checked on onnxruntime
and with the pre-flight check for onnx2ncnn (deploykit.tools.preflight), which says whether every node is one
that onnx2ncnn maps, in a form it reads right."""

from __future__ import annotations

import numpy as np

from deploykit.passes.drop_identity import DropIdentityPass
from passkit import assert_clean_for, assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, findings, rand, shaped


DROP_GRAPH = """g (float[1,3,8,8] x) => (float[1,3,8,8] y, float[1,3,8,8] z) {
    a = Identity(x)
    b = Relu(a)
    c = Dropout(b)
    y = Sigmoid(c)
    z = Identity(b)
}"""


def test_identity_and_dropout_are_dropped_and_pnnx_still_runs_it(tmp_path):
    model = shaped(DROP_GRAPH)
    x = rand(1, 3, 8, 8)
    rewritten = assert_rewrites(model, DropIdentityPass, expected_ops=["Relu", "Sigmoid"], inputs={"x": x}, changed=3)
    assert [o.name for o in rewritten.graph.output] == ["y", "z"]
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, {"x": x}, tmp_path)


def test_a_cast_to_the_dtype_it_has_is_dropped_and_a_real_cast_kept():
    model = shaped("""g (float[1,4] x, int64[1,4] i) => (float[1,4] y, float[1,4] z) {
        c = Cast<to=1>(x)
        y = Relu(c)
        z = Cast<to=1>(i)
    }""")
    assert findings(model, "onnx2ncnn")[0] == ("Cast", "drop_identity")
    assert_rewrites(model, DropIdentityPass, expected_ops=["Relu", "Cast"],
                    inputs={"x": rand(1, 4), "i": np.arange(4, dtype=np.int64).reshape(1, 4)})


def test_dropout_in_training_mode_is_kept():
    model = shaped("""g (float[1,4] x) => (float[1,4] y) {
        ratio = Constant<value = float {0.5}>()
        on = Constant<value = bool {1}>()
        y = Dropout(x, ratio, on)
    }""")
    assert "training mode" in assert_left_alone(model, DropIdentityPass())[0]
