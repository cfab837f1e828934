import numpy as np
import pytest

from deploykit.passes.dilated_conv_center import DilatedConvCenterPass
from passkit import assert_left_alone, assert_rewrites, model_from_text, rand, run_on_ncnn

X = np.random.default_rng(1).standard_normal((1, 4, 10, 10)).astype(np.float32)


def dilated(dilation: int, pads: int, strides: int = 1, group: int = 1, kernel: int = 3):
    return model_from_text(f"""
        g (float[1,4,10,10] x) => (float[1,6,h,w] y) {{
            y = Conv<dilations=[{dilation},{dilation}], pads=[{pads},{pads},{pads},{pads}],
                     strides=[{strides},{strides}], group={group}>(x, w, b)
        }}""", {"w": rand(6, 4 // group, kernel, kernel), "b": rand(6)})


@pytest.mark.slow
@pytest.mark.parametrize("dilation, kernel", [(10, 3), (12, 3), (36, 3), (10, 5)])
def test_a_conv_whose_off_centre_taps_read_only_padding_becomes_1x1(dilation, kernel, tmp_path):
    model = dilated(dilation, dilation * (kernel - 1) // 2, kernel=kernel)
    rewritten = assert_rewrites(model, DilatedConvCenterPass, expected_ops=["Conv"], inputs={"x": X}, atol=1e-5)
    weight = next(i for i in rewritten.graph.initializer if i.name.endswith("/weight"))
    assert list(weight.dims) == [6, 4, 1, 1]
    conv = rewritten.graph.node[0]
    assert {a.name: list(a.ints) for a in conv.attribute if a.ints} == {
        "kernel_shape": [1, 1], "dilations": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0]}
    got = run_on_ncnn(rewritten, {"x": X}, tmp_path)["y"].reshape(1, 6, 10, 10)
    before = run_on_ncnn(model, {"x": X}, tmp_path / "before")["y"].reshape(1, 6, 10, 10)
    np.testing.assert_allclose(got, before, rtol=0, atol=1e-5)


def test_grouped_convolution_keeps_its_groups():
    rewritten = assert_rewrites(dilated(12, 12, group=2), DilatedConvCenterPass, expected_ops=["Conv"],
                                inputs={"x": X}, atol=1e-5)
    assert next(a.i for a in rewritten.graph.node[0].attribute if a.name == "group") == 2


def test_taps_that_reach_the_image_or_other_forms_are_left_alone():
    refusals = assert_left_alone(dilated(6, 6), DilatedConvCenterPass())
    assert "do not exceed the input's spatial size [10, 10]" in refusals[0]
    assert_left_alone(dilated(12, 13), DilatedConvCenterPass())          # not "same" padding
    assert_left_alone(dilated(1, 1), DilatedConvCenterPass())            # not dilated
