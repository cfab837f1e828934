"""The pass bisection's search and the diagnosis budget, with a fake judge and a fake clock: no
converter, no ncnn, milliseconds."""

import pytest

from deploykit.tools.bisect import DIFFERS, MATCHES, NOT_COMPARABLE, Verdict, search_stages
from deploykit.tools.diagnose import Budget


def judge_of(outcomes: str, clock=None, cost: float = 0.0):
    """A judge reading stage i's outcome from outcomes[i] (m: matches, d: differs, n: not
    comparable), recording what it was asked, each call advancing `clock` by `cost`."""
    names = {"m": MATCHES, "d": DIFFERS, "n": NOT_COMPARABLE}
    asked = []

    def judge(index: int) -> Verdict:
        asked.append(index)
        if clock is not None:
            clock.now += cost
        return Verdict(names[outcomes[index]])

    return judge, asked


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("outcomes, culprit", [
    ("mmmdddd", 3), ("mmmmmmd", 6), ("dddddd", 0), ("mdddddddddddddddd", 1), ("mmmmmmmmmmmmmmmmd", 16),
])
def test_finds_the_first_stage_that_differs_in_log_steps(outcomes, culprit):
    judge, asked = judge_of(outcomes)
    search = search_stages(len(outcomes), judge)
    assert (search.good, search.bad, search.stopped) == (culprit - 1, culprit, False)
    assert len(asked) == len(set(asked)) <= 1 + len(outcomes).bit_length()
    assert asked[0] == len(outcomes) - 1


def test_a_last_stage_that_matches_gives_none_after_one_judgement():
    judge, asked = judge_of("ddm")
    assert search_stages(3, judge) is None and asked == [2]


def test_stages_not_comparable_are_stepped_over():
    judge, asked = judge_of("mmnnnd")
    search = search_stages(6, judge)
    assert (search.good, search.bad) == (1, 5)
    assert [search.verdicts[i].outcome for i in (2, 3, 4)] == [NOT_COMPARABLE] * 3


def test_a_known_verdict_is_not_judged_again():
    judge, asked = judge_of("mmmdd")
    search = search_stages(5, judge, known={4: Verdict(DIFFERS, "seen by verify")})
    assert 4 not in asked and search.bad == 3 and search.verdicts[4].reason == "seen by verify"


def test_a_suspect_is_judged_first_and_settles_it_in_two_judgements():
    judge, asked = judge_of("mmmmmmmmmmmmdddd")
    search = search_stages(16, judge, known={15: Verdict(DIFFERS)}, first=[11, 12])
    assert asked == [11, 12] and (search.good, search.bad) == (11, 12)


def test_a_wrong_suspect_costs_one_judgement_more_than_bisection():
    judge, asked = judge_of("mmmdddddddddddd")
    search = search_stages(15, judge, known={14: Verdict(DIFFERS)}, first=[9, 10])
    assert (search.good, search.bad) == (2, 3)
    assert asked[0] == 9 and len(asked) <= 1 + 4


def test_the_budget_stops_the_search_with_the_bounds_so_far():
    clock = Clock()
    judge, asked = judge_of("m" * 40 + "d" * 24, clock, cost=10.0)
    search = search_stages(64, judge, known={63: Verdict(DIFFERS)}, budget=Budget(25.0, clock=clock))
    assert search.stopped and len(asked) == 3  # 0 -> 10 -> 20 -> 30 s: the fourth is not started
    assert search.good < 40 <= search.bad < 63
    assert all(v.outcome in (MATCHES, DIFFERS) for v in search.verdicts.values())


def test_no_budget_left_judges_nothing():
    clock = Clock()
    judge, asked = judge_of("md", clock)
    search = search_stages(2, judge, budget=Budget(0.0, clock=clock))
    assert search.stopped and asked == [] and search.verdicts == {}


def test_budget_timeouts_never_exceed_what_is_left():
    clock = Clock()
    budget = Budget(30.0, "test", clock=clock)
    assert budget.timeout(300) == 30.0 and budget.timeout(5) == 5
    clock.now = 29.5
    assert budget.timeout(300) == pytest.approx(0.5) and not budget.exhausted()
    clock.now = 31
    assert budget.exhausted() and budget.timeout(300) > 0
    assert budget.describe() == "30 s (test)"


@pytest.mark.parametrize("setting, conversion, run, seconds", [
    ("1x", 20.0, 30.0, 20.0), ("0.5x", 20.0, 30.0, 15.0), ("1x", 0.2, 9.0, 4.5), ("0x", 20.0, 30.0, 0.0),
    (45, 20.0, 30.0, 45.0), ("0", 5.0, 30.0, 0.0), (2, 5.0, 30.0, 2.0),
])
def test_the_budget_setting_is_seconds_or_a_factor_of_the_conversion(setting, conversion, run, seconds):
    """A factor gives at least half the run's time until then; seconds are seconds."""
    from deploykit.core.config import ParitySection

    assert ParitySection(diagnose_budget=setting).diagnose_seconds(conversion, run) == seconds


@pytest.mark.parametrize("setting", ["fast", "-2x", -1])
def test_a_budget_setting_that_is_neither_is_refused(setting):
    from pydantic import ValidationError

    from deploykit.core.config import ParitySection

    with pytest.raises(ValidationError, match="diagnose_budget"):
        ParitySection(diagnose_budget=setting)


def test_the_stage_that_wrote_a_node_is_found_from_the_files(tmp_path):
    import onnx
    from onnx import helper

    from deploykit.tools.bisect import stage_that_wrote

    def stage(index, nodes):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
        path = tmp_path / f"{index:02d}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return (f"pass:{index}", path)

    relu = helper.make_node("Relu", ["x"], ["y"], name="act")
    stages = [stage(1, [helper.make_node("Sigmoid", ["x"], ["y"], name="act")]),
              stage(2, [helper.make_node("Relu", ["x"], ["y"], name="act", alpha=1.0)]),  # same name, edited after
              stage(3, [relu]), stage(4, [relu])]
    assert stage_that_wrote(stages, "act") == 2
    assert stage_that_wrote(stages[2:], "act") == 0  # there from the first stage on
    assert stage_that_wrote(stages, "missing") is None
