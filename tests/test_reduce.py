"""deploykit reduce: real pnnx + ncnn on failing models built here (a strided Slice pnnx leaves as
Tensor.slice, a Gather of an index list pnnx turns into a wrong Crop), a model that does not
fail, the probe budget, and the search itself with a stand-in probe."""

import time

import numpy as np
import onnx
import pytest

from deploykit.core.errors import ConfigError
from deploykit.tools.reduce import Failure, probe, probe_inputs, reduce_model, same_failure
from passkit import model_from_text, op_list

RNG = np.random.default_rng(0)


def deep_model(middle: str, width_after: int, **initializers: np.ndarray) -> onnx.ModelProto:
    """x[1,8,16] -> 3 residual blocks -> `middle` (reads h3, writes m) -> 3 residual blocks -> Relu -> y:
    26 nodes when `middle` is one node. A block is MatMul, Add (bias), Relu, Add (residual)."""
    lines, weights = [], dict(initializers)

    def block(i: int, x: str, width: int) -> str:
        weights[f"w{i}"] = (RNG.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights[f"b{i}"] = (0.1 * RNG.standard_normal(width)).astype(np.float32)
        lines.append(f"mm{i} = MatMul({x}, w{i})\n ab{i} = Add(mm{i}, b{i})\n re{i} = Relu(ab{i})\n"
                     f" h{i + 1} = Add(re{i}, {x})")
        return f"h{i + 1}"

    h = "x"
    for i in range(3):
        h = block(i, h, 16)
    lines.append(middle)
    h = "m"
    for i in range(3, 6):
        h = block(i, h, width_after)
    lines.append(f"y = Relu({h})")
    body = "\n ".join(lines)
    text = f"g (float[1,8,16] x) => (float[1,8,{width_after}] y) {{\n {body}\n}}"
    return model_from_text(text, weights)


def ints(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def strided_slice_model() -> onnx.ModelProto:  # x[..., ::2] between the blocks
    return deep_model("m = Slice(h3, starts, ends, axes, steps)", 8,
                      starts=ints([0]), ends=ints([16]), axes=ints([2]), steps=ints([2]))


@pytest.mark.slow
def test_a_strided_slice_deep_in_the_graph_reduces_to_itself(tmp_path):
    model = strided_slice_model()
    assert len(model.graph.node) == 26
    started = time.monotonic()
    first = probe(model, workdir=tmp_path / "first")
    assert first is not None and first.kind == "convert" and first.layers == ("Tensor.slice",)
    messages = []
    result = reduce_model(model, matches=same_failure(first), workdir=tmp_path / "work", first=first,
                          progress=messages.append)
    seconds = time.monotonic() - started

    reduced = result.smallest_failing
    onnx.checker.check_model(reduced, full_check=True)
    assert op_list(reduced) == ["Slice"] and len(reduced.graph.node) <= 3
    assert [i.name for i in reduced.graph.input] == ["h3"]  # the cut tensor, promoted with its shape
    again = probe(reduced, workdir=tmp_path / "again")
    assert again is not None and again.kind == "convert" and again.layers == ("Tensor.slice",)
    assert result.failure.layers == ("Tensor.slice",)
    assert 0 < result.probes == len(messages) <= 15, messages
    assert result.folder is not None and (result.folder / "model.ncnn.param").is_file()
    assert result.inputs["h3"].shape == (1, 8, 16)
    if result.largest_passing is not None:
        assert "Slice" not in op_list(result.largest_passing)
        assert probe(result.largest_passing, workdir=tmp_path / "passing") is None
    # every probe worked in its own folder; only the kept ones remain
    assert {p.name.split("-")[0] for p in (tmp_path / "work").iterdir()} == {"probe"}
    print(f"strided slice: 26 -> {len(reduced.graph.node)} node(s) in {result.probes} probes, {seconds:.1f}s")


@pytest.mark.slow
def test_a_gather_pnnx_gets_wrong_keeps_failing_on_parity(tmp_path):
    model = deep_model("m = Gather<axis=2>(h3, idx)", 4, idx=ints([0, 2, 3, 5]))
    result = reduce_model(model, matches=lambda failure: failure.kind == "parity", workdir=tmp_path)
    reduced = result.smallest_failing
    onnx.checker.check_model(reduced, full_check=True)
    assert op_list(reduced) == ["Gather"]
    assert result.failure.kind == "parity"
    again = probe(reduced, workdir=tmp_path / "again")
    assert again is not None and again.kind == "parity", again
    if result.largest_passing is not None:
        assert probe(result.largest_passing, workdir=tmp_path / "passing") is None


def test_a_model_that_converts_and_matches_is_refused(tmp_path):
    model = deep_model("m = Relu(h3)", 16)
    with pytest.raises(ConfigError, match="already converts with pnnx, loads on ncnn and matches onnxruntime"):
        reduce_model(model, matches=lambda failure: True, workdir=tmp_path)


def test_a_failure_of_another_kind_is_refused_before_the_search(tmp_path):
    first = Failure("convert", "pnnx wrote layers the ncnn runtime does not have: Tensor.slice", ("Tensor.slice",))
    with pytest.raises(ConfigError, match="not the way asked for"):
        reduce_model(strided_slice_model(), matches=lambda failure: failure.kind == "parity", workdir=tmp_path,
                     first=first)


@pytest.mark.slow
def test_the_search_stops_at_max_probes_with_the_best_so_far(tmp_path):
    model = strided_slice_model()
    first = probe(model, workdir=tmp_path)
    result = reduce_model(model, matches=same_failure(first), workdir=tmp_path, first=first, max_probes=2)
    assert result.probes == 2 and result.stopped_early
    assert "Slice" in op_list(result.smallest_failing) and len(result.smallest_failing.graph.node) < 26


def test_same_failure_tells_failures_apart():
    first = Failure("convert", "... Tensor.slice ...; torch.eq ...", ("Tensor.slice", "torch.eq"), "left-over layers")
    matches = same_failure(first)
    assert matches(Failure("convert", "", ("Tensor.slice",)))
    assert not matches(Failure("convert", "", ("torch.eq",)))  # the first left-over type must stay
    assert not matches(Failure("convert", "", ("Tensor.slice", "Tensor.to")))  # no new ones
    assert not matches(Failure("parity", "", ("Tensor.slice",)))
    crashed = same_failure(Failure("load", "", family="the ncnn runtime crashed (SIGSEGV) running model.ncnn.param"))
    assert not crashed(Failure("load", "", family="the ncnn runtime could not run model.ncnn.param"))
    by_regex = same_failure(first, r"torch\.eq")
    assert by_regex(Failure("convert", "wrote torch.eq (1x)", ("torch.eq",)))
    assert not by_regex(Failure("convert", "wrote Tensor.slice (1x)", ("Tensor.slice",)))
    assert same_failure(Failure("parity", "max abs 3"))(Failure("parity", "shape [1, 8] differs"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        same_failure(first, "torch.eq(")


def test_random_inputs_respect_gather_tables_and_positive_operands():
    model = model_from_text("""g (int64[1,50] ids, float[1,50] v) => (float[1,50,4] e, float[1,50] r) {
        flat = Reshape(ids, shape)
        e = Gather(table, flat)
        r = Sqrt(v)
    }""", {"table": RNG.standard_normal((5, 4)).astype(np.float32), "shape": ints([1, 50])})
    feeds = probe_inputs(model)
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].min() >= 0 and feeds["ids"].max() < 5
    assert feeds["v"].min() > 0
    assert all(np.array_equal(feeds[name], again) for name, again in probe_inputs(model).items())


def test_the_search_keeps_two_nodes_the_failure_needs_together(tmp_path):
    """A stand-in probe that fails while both Neg and Abs are present, in separate branches: the
    bisections cannot cut between them, the boundary trimming removes everything else."""
    model = model_from_text("""g (float[1,8] x) => (float[1,8] y) {
        a1 = Relu(x)
        a2 = Neg(a1)
        a3 = Sigmoid(a2)
        b1 = Tanh(x)
        b2 = Abs(b1)
        b3 = Exp(b2)
        s = Add(a3, b3)
        y = Relu(s)
    }""", {})

    def stand_in(folder, candidate, feeds):
        ops = set(op_list(candidate))
        return Failure("parity", "wrong") if {"Neg", "Abs"} <= ops else None

    result = reduce_model(model, matches=lambda failure: failure.kind == "parity", workdir=tmp_path, judge=stand_in)
    assert sorted(op_list(result.smallest_failing)) == ["Abs", "Neg"]
    assert sorted(i.name for i in result.smallest_failing.graph.input) == ["a1", "b1"]
    onnx.checker.check_model(result.smallest_failing, full_check=True)
    assert result.probes < 25


@pytest.mark.slow
def test_shape_arithmetic_and_constant_nodes_become_initializers(tmp_path):
    """As torch exports without constant folding: the Reshape's target comes from Shape/Gather/Concat
    and the Slice bounds from Constant nodes. The cut freezes the shape, a last probe folds the
    constants, and the Slice is left alone with its initializers."""
    model = model_from_text("""g (float[1,8,16] x) => (float[1,16,4] y) {
        h = MatMul(x, w)
        r = Relu(h)
        s = Shape(r)
        zero = Constant<value = int64[1] {0}>()
        batch = Gather(s, zero)
        rest = Constant<value = int64[2] {16, 8}>()
        target = Concat<axis = 0>(batch, rest)
        t = Reshape(r, target)
        starts = Constant<value = int64[1] {0}>()
        ends = Constant<value = int64[1] {8}>()
        axes = Constant<value = int64[1] {2}>()
        steps = Constant<value = int64[1] {2}>()
        sliced = Slice(t, starts, ends, axes, steps)
        y = Relu(sliced)
    }""", {"w": RNG.standard_normal((16, 16)).astype(np.float32)})
    first = probe(model, workdir=tmp_path)
    result = reduce_model(model, matches=same_failure(first), workdir=tmp_path, first=first)
    reduced = result.smallest_failing
    assert op_list(reduced) == ["Slice"]
    assert sorted(i.name for i in reduced.graph.initializer) == ["axes", "ends", "starts", "steps"]
    onnx.checker.check_model(reduced, full_check=True)
    assert probe(reduced, workdir=tmp_path).layers == ("Tensor.slice",)


def test_the_search_alone_reduces_a_deep_model_to_its_failing_node(tmp_path):
    """The same search as with pnnx, judged by a stand-in that fails whenever a Slice is present."""
    asked = []

    def stand_in(folder, candidate, feeds):
        asked.append(len(candidate.graph.node))
        return Failure("convert", "Tensor.slice left", layers=("Tensor.slice",)) if "Slice" in op_list(candidate) else None

    model = strided_slice_model()
    result = reduce_model(model, matches=same_failure(stand_in(tmp_path, model, {})), workdir=tmp_path, judge=stand_in)
    assert op_list(result.smallest_failing) == ["Slice"]
    assert len(op_list(result.largest_passing)) >= 12  # the blocks before the Slice
    assert result.probes == len(asked) - 1 < 30 and not result.stopped_early
