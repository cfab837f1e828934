"""Run the converter, then judge what it wrote: a layer ncnn cannot run is a failed conversion."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from deploykit import __version__
from deploykit.core.artifacts import sha256
from deploykit.core.cache import digest
from deploykit.core.config import ConverterSection
from deploykit.core.errors import DeployError, StageError
from deploykit.ncnn.converters import make_converter
from deploykit.ncnn.converters.base import Blob, Conversion
from deploykit.ncnn.judge import convert_graph, describe_leftovers
from deploykit.ncnn.runtime import read_param_layers, unknown_layers
from deploykit.stages.check import preflight
from deploykit.stages.context import RunContext
from deploykit.stages.stage import Stage, StageResult

LOG = "convert.log"  # every converter writes what it printed here
PARAM, BIN = "model.ncnn.param", "model.ncnn.bin"


@dataclass
class ConvertResult(StageResult):
    converter: Optional[dict] = None  # name, version
    converter_seconds: Optional[float] = None  # what a diagnosis budget given as a factor is of
    command: Optional[str] = None  # as the converter was run (convert.log has what it printed)
    messages: Optional[list[str]] = None
    problems: Optional[list[str]] = None  # what the converter said it could not convert
    files: Optional[dict[str, dict]] = None  # the .param and .bin: sha256, bytes
    inputs: Optional[list[Blob]] = None  # the ncnn blobs of the graph's inputs and outputs
    outputs: Optional[list[Blob]] = None
    input_dtypes: Optional[dict[str, str]] = None
    layers: Optional[dict[str, int]] = None  # the .param's layers by type

    def to_report(self) -> dict[str, Any]:
        report = super().to_report()
        for side in ("inputs", "outputs"):
            if side in report:
                report[side] = [blob.to_dict() for blob in report[side]]
        return report

    @classmethod
    def from_report(cls, record: Mapping[str, Any]) -> ConvertResult:
        result = super().from_report(record)
        result.inputs = [Blob(**b) for b in record["inputs"]]
        result.outputs = [Blob(**b) for b in record["outputs"]]
        return result

    def ran(self) -> list[str]:
        lines = [] if self.converter is None else [f"{self.converter['name']} {self.converter['version']}"]
        return lines + ([f"$ {self.command}"] if self.command else [])


class ConvertStage(Stage):
    """The converter (pnnx or onnx2ncnn) -> model.ncnn.param/.bin, judged by what it wrote: a layer
    ncnn cannot run fails the stage. Its key follows the converter's binary, bytes and all."""

    name = "convert"
    result_type = ConvertResult

    def title(self, ctx: RunContext) -> str:
        return f"converting with {ctx.config.converter.name}"

    def prepare(self, ctx: RunContext) -> None:
        if ctx.pass_graph is not None:  # what the passes left that the converter would refuse
            preflight(ctx, "after_passes", ctx.pass_graph)

    def key(self, ctx: RunContext) -> str:
        from deploykit.stages.shapes import shape_sets  # the shapes stage imports this module

        config = ctx.config
        shapes = {name: [list(a.shape), a.dtype.name] for name, a in ctx.ordered_inputs().items()}
        return digest("convert", ctx.model_sha, config.converter, shapes, shape_sets(config, ctx.inputs),
                      converter_identity(config.converter), __version__)

    def run(self, ctx: RunContext) -> None:
        convert(ctx)

    def restore(self, ctx: RunContext, result: ConvertResult) -> None:
        assert result.inputs is not None and result.outputs is not None  # from_report
        ctx.conversion = Conversion(param=ctx.artifacts.file(PARAM), bin=ctx.artifacts.file(BIN),
                                    log=ctx.artifacts.file(LOG), inputs=result.inputs, outputs=result.outputs,
                                    problems=result.problems or [], messages=result.messages or [])


CONVERT = ConvertStage()


def converter_identity(section: ConverterSection) -> dict:
    """What a conversion depends on of the converter itself: its binary (path, size, modification
    time, content) and its version. A binary rebuilt at the same path gives another identity, where
    the version alone (onnx2ncnn has none) would reuse the old conversion."""
    converter = make_converter(section)
    try:
        exe = converter.executable()
        stat = exe.stat()
    except (DeployError, OSError):
        return {"name": converter.name, "binary": "not found"}  # the convert stage then says why
    return {"name": converter.name, "binary": str(exe), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256": sha256(exe), "version": converter.version()}


def convert(ctx: RunContext) -> None:
    section = ctx.config.converter
    converter = make_converter(section)
    record = ctx.result(ConvertResult)
    record.converter = {"name": converter.name, "version": converter.version()}
    from deploykit.stages.shapes import pnnx_second_shape  # the shapes stage imports this module
    inputs = ctx.ordered_inputs()
    with ctx.artifacts.scratch() as scratch:
        work = Path(scratch)
        started = time.perf_counter()
        try:
            # pnnx's inputshape2 where the graph takes the other listed shapes (the user's args come last)
            outcome = convert_graph(ctx.model_file, inputs, section, work, loaded=ctx.model, timeout=section.timeout,
                                    args=[*pnnx_second_shape(ctx), *section.args])
        finally:
            # what a diagnosis budget given as a factor is of, also when the conversion is reused
            record.converter_seconds = round(time.perf_counter() - started, 3)
            # the converter's log is kept whether or not it succeeded
            if (work / LOG).is_file():
                ctx.wrote(ctx.artifacts.move_in(work / LOG, LOG))
        if outcome.error is not None:
            raise outcome.error
        result = outcome.conversion
        assert result is not None
        for produced in (result.param, result.bin, *result.extra_files):
            ctx.wrote(ctx.artifacts.move_in(produced, produced.name))
        result.param, result.bin, result.log = (ctx.artifacts.file(p.name)
                                                for p in (result.param, result.bin, work / LOG))
    said = result.log.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0] if result.log.is_file() else ""
    if said.startswith("$ "):
        record.command = said[2:]  # for --verbose; convert.log has what it printed
    ctx.conversion = result
    ctx.record.artifact = result.param.name
    record.messages, record.problems = result.messages, result.problems
    record.files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in (result.param, result.bin)}
    record.inputs, record.outputs = list(result.inputs), list(result.outputs)
    record.input_dtypes = {name: array.dtype.name for name, array in inputs.items()}
    if result.problems:
        raise StageError(f"{converter.name} reported that it could not convert the graph (it still exits 0): "
                         + "; ".join(result.problems[:6]) + f". Its output is in {result.log.name}.",
                         stage="convert", hint="`deploykit check` lists the nodes each converter refuses and the "
                                               "pass that fixes them; or try `converter.name: pnnx`.")
    leftovers = unknown_layers(result.param)  # the shipped file, so that a .param ncnn cannot parse is named
    record.layers = layer_histogram(result.param)
    if leftovers:
        raise StageError(describe_leftovers(converter.name, leftovers, ctx.model.graph)
                         + f" (see {result.param.name}).", stage="convert",
                         hint="a rewrite pass must turn those ONNX nodes into ops ncnn runs; `deploykit check` "
                              "names the pass, or compute that part of the model on the host.")


def layer_histogram(param: Path) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for kind, _, _, _ in read_param_layers(param):
        counts[kind] += 1
    return dict(sorted(counts.items()))
