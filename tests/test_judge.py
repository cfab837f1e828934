"""convert_and_run, the one convert-then-run-on-ncnn path of the fp32 baseline, the bisection and
reduce: each way of ending without outputs is told apart and worded, with a fake converter and a
fake ncnn run (milliseconds; the real ones are exercised by the bisection and reduce tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import deploykit.ncnn.judge as judge
from deploykit.core.config import ConverterSection
from deploykit.core.errors import StageError
from deploykit.ncnn.converters.base import Blob, Conversion


def graph() -> onnx.ModelProto:
    """x -> Where(x > 0, x, 0) -> y, named the way an exporter names them."""
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [helper.make_node("Greater", ["x", "zero"], ["m"], name="/Greater"),
             helper.make_node("Where", ["m", "x", "zero"], ["y"], name="/Where")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [zero])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


PARAM_OK = "7767517\n2 2\nInput in0 0 1 in0\nReLU relu 1 1 in0 out0\n"
PARAM_LEFTOVER = "7767517\n2 2\nInput in0 0 1 in0\ntorch.where where_0 1 1 in0 out0\n"


class FakeConverter:
    def __init__(self, name: str, param: str = PARAM_OK, problems=(), fails: str = "") -> None:
        self.name, self.param, self.problems, self.fails = name, param, list(problems), fails
        self.calls: list[dict] = []

    def convert(self, source, inputs, outputs, workdir, *, fp16, args, timeout) -> Conversion:
        self.calls.append({"source": Path(source), "outputs": outputs, "fp16": fp16, "args": args,
                           "timeout": timeout})
        if self.fails:
            raise StageError(self.fails, stage="convert")
        param, weights = Path(workdir) / "model.ncnn.param", Path(workdir) / "model.ncnn.bin"
        param.write_text(self.param)
        weights.write_bytes(b"")
        return Conversion(param=param, bin=weights, log=Path(workdir) / "convert.log",
                          inputs=[Blob("x", "in0")], outputs=[Blob("y", "out0")], problems=self.problems)


@pytest.fixture
def fake(monkeypatch):
    """Install a fake converter (by name) and ncnn run; returns the converter and the runs seen."""
    runs: list[dict] = []

    def install(converter: FakeConverter, run_fails: str = ""):
        monkeypatch.setattr(judge, "make_converter", lambda section: converter)

        def run_ncnn(param, weights, feeds, outputs, *, timeout, fp16):
            runs.append({"feeds": {b.onnx_name: a for b, a in feeds}, "timeout": timeout, "fp16": fp16})
            if run_fails:
                raise StageError(run_fails, stage="verify")
            return {"y": np.maximum(feeds[0][1], 0)}

        monkeypatch.setattr(judge, "run_ncnn", run_ncnn)
        return converter

    install.runs = runs
    return install


FEEDS = {"x": np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)}


def test_a_graph_that_converts_and_runs_gives_its_outputs_by_onnx_name(fake, tmp_path):
    tool = fake(FakeConverter("pnnx"))
    asked = iter([30.0, 7.0])
    outcome = judge.convert_and_run(graph(), FEEDS, ConverterSection(name="pnnx", args=["optlevel=1"]), tmp_path,
                                    timeout=lambda: next(asked))
    assert outcome.ran and outcome.converted and outcome.why_not() == ""
    assert outcome.outputs["y"].tolist() == [[0.0, 2.0, 0.0, 4.0]]
    call = tool.calls[0]
    assert call["source"] == tmp_path / "input.onnx" and call["outputs"] == ["y"] and call["args"] == ["optlevel=1"]
    assert (call["timeout"], fake.runs[0]["timeout"]) == (30.0, 7.0)  # a budget is asked before each child
    assert fake.runs[0]["fp16"] is False


def test_onnx2ncnn_gets_the_graph_chain_ordered_and_a_file_is_read_only_for_its_names(fake, tmp_path):
    path = tmp_path / "stage.onnx"
    onnx.save(graph(), str(path))
    tool = fake(FakeConverter("onnx2ncnn"))
    work = tmp_path / "work"
    work.mkdir()
    assert judge.convert_and_run(path, FEEDS, ConverterSection(name="onnx2ncnn"), work).ran
    assert tool.calls[0]["source"] == work / "chain_ordered.onnx"
    assert [n.name for n in onnx.load(str(work / "chain_ordered.onnx")).graph.node] == ["/Greater", "/Where"]
    pnnx = fake(FakeConverter("pnnx"))
    assert judge.convert_and_run(path, FEEDS, ConverterSection(name="pnnx", fp16=True), work).ran
    assert pnnx.calls[0]["source"] == path and pnnx.calls[0]["fp16"] is True and fake.runs[-1]["fp16"] is True


@pytest.mark.parametrize("converter, run_fails, why, ran_ncnn", [
    (FakeConverter("pnnx", fails="pnnx did not finish within 3s and was stopped"), "",
     "pnnx did not finish within 3s and was stopped", False),
    (FakeConverter("onnx2ncnn", problems=["Where not supported yet!"]), "",
     "onnx2ncnn reported: Where not supported yet!", False),
    (FakeConverter("pnnx", param=PARAM_LEFTOVER), "",
     "pnnx wrote layers the ncnn runtime does not have: torch.where (1x, e.g. where_0) from ONNX Where '/Where'",
     False),
    (FakeConverter("pnnx", param="7767517\n1 1\nInput in0 -1 1 in0\n"), "",
     "is not an ncnn layer line", False),
    (FakeConverter("pnnx"), "the ncnn runtime crashed (SIGFPE)", "the ncnn runtime crashed (SIGFPE)", True),
])
def test_each_way_of_ending_without_outputs_is_told_apart(fake, tmp_path, converter, run_fails, why, ran_ncnn):
    fake(converter, run_fails)
    outcome = judge.convert_and_run(graph(), FEEDS, ConverterSection(name=converter.name), tmp_path)
    assert outcome.outputs is None and not outcome.ran
    assert why in outcome.why_not()
    assert bool(fake.runs) == ran_ncnn  # ncnn runs only a model it has every layer of
    assert outcome.converted == ran_ncnn


def test_convert_graph_keeps_the_converters_error_to_raise_as_it_was(fake, tmp_path):
    fake(FakeConverter("pnnx", fails="pnnx exited with code 1: bad graph"))
    outcome = judge.convert_graph(graph(), FEEDS, ConverterSection(name="pnnx"), tmp_path)
    assert isinstance(outcome.error, StageError) and outcome.error.stage == "convert"
    assert outcome.conversion is None and outcome.convert_error == "pnnx exited with code 1: bad graph"
