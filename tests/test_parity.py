import numpy as np
import pytest

from deploykit.core.config import ParitySection, Tolerance
from deploykit.core.parity import compare_output, compare_outputs

REF = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, 4.0]], dtype=np.float32)


def test_statistics_locate_the_worst_element():
    got = REF.copy()
    got[1, 2] += 0.01
    result = compare_output("y", REF, got, ParitySection(atol=1e-4, rtol=0))
    assert not result.passed
    assert result.worst_index == [1, 2]
    assert result.max_abs == pytest.approx(0.01, rel=1e-3)
    assert result.max_rel == pytest.approx(0.0025, rel=1e-3)
    assert result.worst_reference == 4.0
    assert "max abs error 0.01 at [1,2]" in result.describe()


@pytest.mark.parametrize("metric, settings, passed", [
    ("allclose", dict(atol=0.0, rtol=0.01), True),     # 0.01 <= 0.01 * 4
    ("allclose", dict(atol=0.0, rtol=0.001), False),
    ("max_abs", dict(atol=0.02), True),
    ("max_abs", dict(atol=0.005), False),
    ("cosine", dict(min_cosine=0.999), True),
    ("cosine", dict(min_cosine=0.9999999), False),
])
def test_each_metric_judges_its_own_statistic(metric, settings, passed):
    got = REF.copy()
    got[1, 2] += 0.01
    assert compare_output("y", REF, got, ParitySection(metric=metric, **settings)).passed is passed


def test_nan_never_passes_and_is_counted():
    got = REF.copy()
    got[0, 0] = np.nan
    result = compare_output("y", REF, got, ParitySection(atol=1e9))
    assert not result.passed and result.nan_count == 1 and result.worst_index == [0, 0]


def test_shapes_with_other_sizes_fail_and_same_sizes_compare_with_a_note():
    assert "differs from the reference" in compare_output("y", REF, REF[:1], ParitySection()).note
    reshaped = compare_output("y", REF, REF.reshape(3, 2), ParitySection())
    assert reshaped.passed and "runtime gave shape [3, 2]" in reshaped.note


def test_per_output_tolerance_overrides_the_default_and_missing_outputs_fail():
    settings = ParitySection(atol=1e-6, rtol=0, outputs={"loose": Tolerance(atol=0.1)})
    got = {"loose": REF + 0.05, "strict": REF + 0.05}
    result = compare_outputs({"loose": REF, "strict": REF, "gone": REF}, got, settings, against="x")
    assert [(o.name, o.passed) for o in result.outputs] == [("loose", True), ("strict", False), ("gone", False)]
    assert result.outputs[2].note == "output is missing"
    assert not result.passed


def test_histogram_counts_errors_by_decade_and_needed_atol_is_the_smallest_that_passes():
    ref = np.zeros(6, dtype=np.float32)
    got = np.array([0, 0, 5e-7, 5e-7, 3e-3, 2.0], dtype=np.float32)
    result = compare_output("y", ref, got, ParitySection(atol=1e-4, rtol=0))
    assert result.histogram == {"0": 2, "<1e-06": 2, "<0.01": 1, ">=1": 1}
    assert result.needed_atol == pytest.approx(2.0)
    assert result.median_abs == pytest.approx(5e-7, rel=1e-3)
    assert compare_output("y", ref, got, ParitySection(atol=result.needed_atol, rtol=0)).passed


def test_chain_order_keeps_each_chain_contiguous():
    import onnx

    from deploykit.onnx.onnx_io import chain_order
    from passkit import model_from_text, op_list

    model = model_from_text("""
        g (float[2] x) => (float[2] y) {
            a1 = Relu(x)
            b1 = Neg(x)
            a2 = Exp(a1)
            b2 = Abs(b1)
            y = Add(a2, b2)
        }""", {})
    ordered = chain_order(model)
    onnx.checker.check_model(ordered, full_check=True)
    assert op_list(ordered) == ["Relu", "Exp", "Neg", "Abs", "Add"]


def test_chain_order_puts_constants_first_so_a_chain_that_reads_one_stays_contiguous():
    from deploykit.onnx.onnx_io import chain_order
    from passkit import model_from_text, op_list

    model = model_from_text("""
        g (float[2] x) => (float[2] y) {
            a = Relu(x)
            two = Constant <value = float {2.0}> ()
            b = Pow(a, two)
            y = Sqrt(b)
        }""", {})
    assert op_list(chain_order(model)) == ["Constant", "Relu", "Pow", "Sqrt"]


def test_nan_and_inf_compare_coherently():
    from deploykit.core.config import ParitySection
    from deploykit.core.parity import compare_output

    reference = np.array([1.0, np.inf, np.nan, 2.0], np.float32)
    same = compare_output("y", reference, reference.copy(), ParitySection())
    assert same.passed and same.max_abs == 0.0 and same.reference_nonfinite == 2
    wrong = compare_output("y", reference, np.array([1.0, np.inf, np.nan, np.nan], np.float32), ParitySection())
    text = wrong.describe()
    assert not wrong.passed and wrong.unmatched_nonfinite == 1
    assert "(got nan, expected 2)" in text and "would pass" not in text
    assert "1 element(s) NaN or Inf where the reference has another value (2 NaN, 1 Inf in all)" in text
    assert "the reference itself has 2 NaN or Inf element(s)" in text


@pytest.mark.parametrize("got", [
    REF.copy(), REF + 1e-5, REF + 0.01, np.where(REF == 3.0, np.nan, REF), np.where(REF == 4.0, np.inf, REF),
    REF.reshape(3, 2),
])
def test_agrees_is_compare_output_passed(got):
    from deploykit.core.parity import agrees

    settings = ParitySection(atol=1e-4, rtol=1e-3)
    assert agrees("y", REF, got.astype(np.float32), settings) == compare_output("y", REF, got, settings).passed


def test_agrees_takes_a_reproduced_nan_or_inf_of_the_reference_as_compare_output_does():
    from deploykit.core.parity import agrees

    reference = np.array([1.0, np.inf, np.nan, 2.0], np.float32)
    settings = ParitySection()
    assert agrees("y", reference, reference.copy(), settings) and compare_output("y", reference, reference, settings).passed
    assert not agrees("y", reference, np.array([1.0, np.inf, np.nan, np.nan], np.float32), settings)
