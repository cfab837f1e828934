"""Run the converter, then judge what it wrote: a layer ncnn cannot run is a failed conversion."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from deploykit.core.artifacts import sha256
from deploykit.ncnn.converters import make_converter
from deploykit.ncnn.converters.base import Blob, Conversion
from deploykit.core.config import ConverterSection
from deploykit.core.errors import DeployError, StageError
from deploykit.ncnn.judge import convert_graph, describe_leftovers
from deploykit.ncnn.runtime import read_param_layers, unknown_layers
from deploykit.stages.context import RunContext

LOG = "convert.log"  # every converter writes what it printed here

def converter_identity(section: ConverterSection) -> dict:
    """What a conversion depends on of the converter itself: its binary (path, size, modification
    time) and its version. A binary rebuilt at the same path gives another identity, where the
    version alone (onnx2ncnn has none) would reuse the old conversion."""
    converter = make_converter(section)
    try:
        exe = converter.executable()
        stat = exe.stat()
    except (DeployError, OSError):
        return {"name": converter.name, "binary": "not found"}  # the convert stage then says why
    return {"name": converter.name, "binary": str(exe), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "version": converter.version()}


def convert(ctx: RunContext) -> None:
    section = ctx.config.converter
    converter = make_converter(section)
    ctx.record.details["converter"] = {"name": converter.name, "version": converter.version()}
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
            ctx.record.details["converter_seconds"] = round(time.perf_counter() - started, 3)
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
        ctx.record.details["command"] = said[2:]  # for --verbose; convert.log has what it printed
    ctx.conversion = result
    ctx.record.artifact = result.param.name
    ctx.record.details.update(
        messages=result.messages, problems=result.problems,
        files={p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in (result.param, result.bin)},
        inputs=[b.to_dict() for b in result.inputs], outputs=[b.to_dict() for b in result.outputs],
        input_dtypes={name: array.dtype.name for name, array in inputs.items()})
    if result.problems:
        raise StageError(f"{converter.name} reported that it could not convert the graph (it still exits 0): "
                         + "; ".join(result.problems[:6]) + f". Its output is in {result.log.name}.",
                         stage="convert", hint="`deploykit check` lists the nodes each converter refuses and the "
                                               "pass that fixes them; or try `converter.name: pnnx`.")
    leftovers = unknown_layers(result.param)  # the shipped file, so that a .param ncnn cannot parse is named
    ctx.record.details["layers"] = layer_histogram(result.param)
    if leftovers:
        raise StageError(describe_leftovers(converter.name, leftovers, ctx.model.graph)
                         + f" (see {result.param.name}).", stage="convert",
                         hint="a rewrite pass must turn those ONNX nodes into ops ncnn runs; `deploykit check` "
                              "names the pass, or compute that part of the model on the host.")


def restore_conversion(ctx: RunContext) -> None:
    """Take up the conversion of the last run, which the cache found unchanged."""
    details = ctx.record.details
    ctx.conversion = Conversion(param=ctx.artifacts.file("model.ncnn.param"), bin=ctx.artifacts.file("model.ncnn.bin"),
                                log=ctx.artifacts.file(LOG), inputs=[Blob(**b) for b in details["inputs"]],
                                outputs=[Blob(**b) for b in details["outputs"]], problems=details.get("problems", []),
                                messages=details.get("messages", []))


def layer_histogram(param: Path) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for kind, _, _, _ in read_param_layers(param):
        counts[kind] += 1
    return dict(sorted(counts.items()))
