"""The stages as objects: each key follows what its stage reads, each result survives report.json,
and the pipeline's list names every stage once, in order."""

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from rich.console import Console

from deploykit.core.artifacts import ArtifactDir
from deploykit.core.cache import StageCache
from deploykit.core.config import Config
from deploykit.core.report import Reporter, StageRecord
from deploykit.ncnn.converters.base import Blob
from deploykit.stages.context import RunContext
from deploykit.stages.convert import CONVERT, ConvertResult, converter_identity
from deploykit.stages.embed import EmbedResult
from deploykit.stages.rewrite import PassResult, PassStage
from deploykit.stages.stage import Stage, StageResult, run_stage
from deploykit.stages.verify import VerifyResult


def make_ctx(tmp_path: Path, **sections) -> RunContext:
    config = Config.model_validate({"model": {"factory": "somewhere:build"}, "inputs": [{"name": "x", "shape": [1, 4]}],
                                    "output": str(tmp_path / "out"), **sections})
    artifacts = ArtifactDir(tmp_path / "staged")
    artifacts.path.mkdir(parents=True)
    ctx = RunContext(config=config, config_path=None, artifacts=artifacts, inputs={"x": np.ones((1, 4), np.float32)},
                     reporter=Reporter(Console(quiet=True)), versions={"onnx": "1", "torch": "2", "ncnn": "3"})
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    ctx.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ctx.model_sha = "a" * 64
    return ctx


def test_the_convert_key_follows_the_bytes_of_the_converter_binary(tmp_path):
    binary = tmp_path / "bin" / "onnx2ncnn"
    binary.parent.mkdir()
    binary.write_bytes(b"one build")
    binary.chmod(0o755)
    ctx = make_ctx(tmp_path, converter={"name": "onnx2ncnn", "path": str(binary)})
    before = CONVERT.key(ctx)
    assert CONVERT.key(ctx) == before
    assert converter_identity(ctx.config.converter)["binary"] == str(binary)
    stat = binary.stat()
    rebuilt = binary.with_name("onnx2ncnn.new")
    rebuilt.write_bytes(b"two build")  # a rebuild: same path, size and modification time, other bytes
    rebuilt.chmod(0o755)
    os.utime(rebuilt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(rebuilt, binary)
    assert CONVERT.key(ctx) != before
    ctx.model_sha = "b" * 64  # and the graph it converts
    assert CONVERT.key(ctx) != before


def test_a_pass_stage_key_follows_its_arguments_and_the_helpers_its_module_imports(tmp_path, monkeypatch):
    package = tmp_path / "house_stage_passes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SCALE = 2\n")
    (package / "scaled.py").write_text(
        "from deploykit.onnx.graph_pass import GraphPass\nfrom house_stage_passes.helpers import SCALE\n\n\n"
        "class Scaled(GraphPass):\n    name = 'scaled'\n    factor = SCALE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("house_stage_passes")]:
        monkeypatch.delitem(sys.modules, name)
    scaled = importlib.import_module("house_stage_passes.scaled").Scaled
    ctx = make_ctx(tmp_path)
    stage = PassStage(scaled())
    assert stage.name == "pass:scaled" and stage.numbered
    before = stage.key(ctx)
    assert PassStage(scaled()).key(ctx) == before
    (package / "helpers.py").write_text("SCALE = 3\n")
    assert stage.key(ctx) != before


def test_results_round_trip_through_the_report():
    results = [
        ConvertResult(converter={"name": "pnnx", "version": "1"}, converter_seconds=0.5, command="pnnx m.onnx",
                      messages=[], problems=[], files={"model.ncnn.param": {"sha256": "0", "bytes": 3}},
                      inputs=[Blob("x", "in0")], outputs=[Blob("y", "out0", -1)], input_dtypes={"x": "float32"},
                      layers={"ReLU": 1}),
        EmbedResult(embedded=[{"blob": "rows", "ids": "ids", "table_shape": [5, 2]}], inputs=[Blob("ids", "ids")]),
        PassResult(changed=2, refusals=["Where '/w': it selects int64 values"], host_lookups=[{"table": "t.npy"}]),
        VerifyResult(ncnn_options={"num_threads": 1}, divergence={"node": "/relu"}, diagnosis_seconds=1.5),
    ]
    for result in results:
        report = json.loads(json.dumps(result.to_report()))
        assert type(result).from_report({"name": "any", "status": "ok", **report}) == result
    assert json.loads(json.dumps(results[0].to_report()))["inputs"] == [{"onnx_name": "x", "blob": "in0",
                                                                         "batch_index": 0}]


def test_a_result_leaves_out_what_its_stage_did_not_get_to():
    assert ConvertResult().to_report() == {}
    assert ConvertResult(converter={"name": "pnnx", "version": "1"}).to_report() == {
        "converter": {"name": "pnnx", "version": "1"}}
    assert StageRecord("convert", result=PassResult(changed=0)).to_dict()["changed"] == 0


def test_a_cached_record_the_stage_cannot_read_is_run_again_not_a_crash(tmp_path):
    previous = tmp_path / "previous"
    previous.mkdir()
    old = {"name": "convert", "status": "ok", "key": "k", "outputs_sha256": {}, "inputs": [{"name": "x"}]}
    (previous / "report.json").write_text(json.dumps({"stages": [old]}))
    ctx = make_ctx(tmp_path)
    ctx.cache = StageCache([previous], enabled=True)
    ctx.record = StageRecord("convert")
    assert ctx.reuse("k", ConvertResult) is None  # a Blob without its fields
    assert not ctx.record.cached
    del old["inputs"]
    (previous / "report.json").write_text(json.dumps({"stages": [old]}))
    ctx.cache = StageCache([previous], enabled=True)
    assert ctx.reuse("k", ConvertResult) is None  # no blobs at all
    assert ctx.reuse("k") is not None  # what a stage without a result reads is there


class Numbered(Stage):
    name = "numbered"
    numbered = True

    def __init__(self, writes: bool) -> None:
        self.writes = writes

    def run(self, ctx: RunContext) -> None:
        if self.writes:
            path = ctx.artifacts.write_text(ctx.numbered_file("step"), "graph")
            ctx.record.artifact = path.name


def test_a_numbered_stage_takes_its_number_only_when_it_wrote_its_file(tmp_path):
    ctx = make_ctx(tmp_path)
    run_stage(ctx, Numbered(writes=False))
    assert ctx.numbered_file("next") == "02_next.onnx"
    run_stage(ctx, Numbered(writes=True))
    assert ctx.reporter.stages[-1].artifact == "02_step.onnx"
    assert ctx.numbered_file("next") == "03_next.onnx"
    assert type(ctx.reporter.stages[-1].result) is StageResult


def test_the_pipeline_lists_every_stage_once_in_order(tmp_path):
    from deploykit.pipeline import stages
    from deploykit.stages.rewrite import selected_passes

    ctx = make_ctx(tmp_path, passes=["id_mask_lookup", "drop_identity"])
    ctx.passes = selected_passes(ctx)
    names = [step.name for step in stages(ctx) if isinstance(step, Stage)]
    assert names == ["import", "export", "simplify", "cut", "trace", "check", "pass:id_mask_lookup",
                     "pass:drop_identity", "convert", "embed", "optimize", "verify", "shapes", "int8"]
    ran = [step.name for step in stages(ctx) if isinstance(step, Stage) and step.applies(ctx)]
    assert ran == ["export", "simplify", "check", "pass:id_mask_lookup", "pass:drop_identity", "convert", "verify"]
    onnx.checker.check_model(ctx.model)


def test_the_int8_calibration_is_read_once_for_its_key_and_its_run(tmp_path, monkeypatch):
    from deploykit.stages import quantize

    ctx = make_ctx(tmp_path, quantize={"int8": True, "calibration": {"generate": 4}})
    reads = []
    real = quantize.load_calibration
    monkeypatch.setattr(quantize, "load_calibration", lambda *args: reads.append(args) or real(*args))
    first, second = quantize.calibration_set(ctx), quantize.calibration_set(ctx)
    assert first is second and len(reads) == 1 and len(first.samples) == 4
