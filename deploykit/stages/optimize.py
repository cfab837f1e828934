"""ncnnoptimize after the converter: fused layers, weights stored as fp32 or fp16; the optimized model
is the one verified and shipped.

ncnnoptimize knows the model's inputs only as Input layers and its outputs not at all: a Split
one of whose outputs is a model output that no layer reads is "eliminated", and that output with
it. Such a Split is put back; a blob lost in another way fails the stage.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

from rich.markup import escape

from deploykit import __version__
from deploykit.core.artifacts import sha256
from deploykit.core.cache import digest
from deploykit.core.errors import ParityError, StageError
from deploykit.core.parity import compare_outputs
from deploykit.ncnn.runtime import read_param_layers, run_ncnn
from deploykit.ncnn.tools import find_tool, run_ncnn_tool, tool_digest
from deploykit.stages.context import RunContext
from deploykit.stages.convert import layer_histogram
from deploykit.stages.stage import Stage, StageResult

PARAM, BIN, LOG = "model.opt.param", "model.opt.bin", "optimize.log"
FP16_STORAGE = 65536  # ncnnoptimize's last argument: 0 stores fp32 weights, 65536 fp16
_ACTION = re.compile(r"^(?P<action>(?:fuse|eliminate|replace)_\w+)\s+(?P<layers>.+)$")


@dataclasses.dataclass
class OptimizeResult(StageResult):
    storage: Optional[str] = None  # of the weights: fp32 or fp16
    layers_before: Optional[dict[str, int]] = None  # by type, in the converter's model and in the optimized one
    layers: Optional[dict[str, int]] = None
    actions: Optional[list[str]] = None  # what ncnnoptimize said it fused or eliminated
    splits_restored: Optional[list[str]] = None  # see restore_lost_blobs
    files: Optional[dict[str, dict]] = None  # sha256, bytes
    summary: Optional[str] = None

    def headline(self) -> list[str]:
        return [escape(self.summary)] if self.summary else []


class OptimizeStage(Stage):
    """converter.optimize: ncnnoptimize -> model.opt.param/.bin, the model verified and shipped."""

    name = "optimize"
    result_type = OptimizeResult

    def title(self, ctx: RunContext) -> str:
        return "optimizing with ncnnoptimize"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.converter.optimize

    def key(self, ctx: RunContext) -> str:
        section = ctx.config.converter
        return digest("optimize", sha256(ctx.converted.param), sha256(ctx.converted.bin), section.fp16,
                      tool_digest("ncnnoptimize", section.tools, stage=self.name), __version__)

    def run(self, ctx: RunContext) -> None:
        optimize(ctx)

    def restore(self, ctx: RunContext, result: OptimizeResult) -> None:
        ctx.unoptimized = ctx.converted
        ctx.conversion = dataclasses.replace(ctx.converted, param=ctx.artifacts.file(PARAM),
                                             bin=ctx.artifacts.file(BIN))


OPTIMIZE = OptimizeStage()


def optimize(ctx: RunContext) -> None:
    section = ctx.config.converter
    before = ctx.converted
    tool = find_tool("ncnnoptimize", section.tools, stage="optimize")
    flag = FP16_STORAGE if section.fp16 else 0
    with ctx.artifacts.scratch() as scratch:
        work = Path(scratch)
        try:
            # the files it reads by absolute path: it runs in the scratch folder
            command = [str(tool), str(before.param.resolve()), str(before.bin.resolve()), PARAM, BIN, str(flag)]
            text = run_ncnn_tool(command, cwd=work, timeout=section.timeout, log=work / LOG, stage="optimize")
        finally:
            if (work / LOG).is_file():
                ctx.wrote(ctx.artifacts.move_in(work / LOG, LOG))
        for name in (PARAM, BIN):
            if not (work / name).is_file():
                raise StageError(f"ncnnoptimize exited without writing {name}; what it printed is in {LOG}.",
                                 stage="optimize", hint="set converter.optimize: false to ship the converter's model.")
        restored = restore_lost_blobs(before.param, work / PARAM, [b.blob for b in (*before.inputs, *before.outputs)])
        for name in (PARAM, BIN):
            ctx.wrote(ctx.artifacts.move_in(work / name, name))
    param, weights = ctx.artifacts.file(PARAM), ctx.artifacts.file(BIN)
    ctx.unoptimized = before
    ctx.conversion = dataclasses.replace(before, param=param, bin=weights)
    layers_before, layers_after = layer_histogram(before.param), layer_histogram(param)
    ctx.record.artifact = PARAM
    ctx.record.result = OptimizeResult(
        storage="fp16" if flag else "fp32", layers_before=layers_before, layers=layers_after,
        actions=[line for line in _lines(text) if _ACTION.match(line)], splits_restored=restored,
        files={p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in (param, weights)},
        summary=f"{sum(layers_before.values())} -> {sum(layers_after.values())} layers, "
                f"{'fp16' if flag else 'fp32'} weights")


def restore_lost_blobs(before: Path, after: Path, needed: list[str]) -> list[str]:
    """Put back the Splits ncnnoptimize removed where one of their outputs is a blob the app feeds
    or reads; returns the Splits put back. Without its Split, such a blob is also the input of a
    later layer, and an extractor in light mode frees it once that layer ran: extracting it fails."""
    layers = read_param_layers(after)
    present = {blob for _, _, bottoms, tops in layers for blob in (*bottoms, *tops)}
    lost = [blob for blob in needed if blob not in present]
    splits = [(name, bottoms, tops) for kind, name, bottoms, tops in read_param_layers(before)
              if kind == "Split" and any(blob in tops for blob in lost)]
    for blob in lost:
        if not any(blob in tops for _, _, tops in splits):
            raise StageError(f"ncnnoptimize removed blob {blob!r}, which the app feeds or reads, from {after.name}.",
                             stage="optimize", hint="set converter.optimize: false to ship the converter's model.")
    lines = after.read_text(encoding="utf-8").split("\n")
    for name, bottoms, tops in splits:
        # A Split copies its input to every output: whichever of them is still written has the values.
        survivor = next((b for b in (*tops, *bottoms) if b in present), None)
        producer = next((i for i, line in enumerate(lines[2:], 2) if survivor in _blobs(line)[1]), None)
        if producer is None or survivor is None:
            raise StageError(f"ncnnoptimize removed blob {lost[0]!r}, which the app feeds or reads, from "
                             f"{after.name}, and no layer writes what it held.", stage="optimize",
                             hint="set converter.optimize: false to ship the converter's model.")
        source = bottoms[0] if bottoms[0] not in present else f"{survivor}_unsplit"
        lines[producer] = _with_blobs(lines[producer], {survivor: source}, tops_only=True)
        outputs = [survivor, *(b for b in tops if b in lost)]
        lines.insert(producer + 1, " ".join(["Split", name, "1", str(len(outputs)), source, *outputs]))
    if splits:
        body = lines[2:]
        blobs = {b for line in body for side in _blobs(line) for b in side}
        lines[1] = f"{sum(1 for line in body if len(line.split()) >= 4)} {len(blobs)}"
        after.write_text("\n".join(lines), encoding="utf-8")
    return [name for name, _, _ in splits]


def _blobs(line: str) -> tuple[list[str], list[str]]:
    """(bottoms, tops) of one layer line of a .param; empty for a line that is no layer."""
    fields = line.split()
    if len(fields) < 4:
        return [], []
    n_in, n_out = int(fields[2]), int(fields[3])
    return fields[4:4 + n_in], fields[4 + n_in:4 + n_in + n_out]


def _with_blobs(line: str, renames: dict[str, str], *, tops_only: bool) -> str:
    fields = line.split()
    n_in, n_out = int(fields[2]), int(fields[3])
    blobs = fields[4:4 + n_in + n_out]
    blobs = [b if tops_only and i < n_in else renames.get(b, b) for i, b in enumerate(blobs)]
    return " ".join([*fields[:4], *blobs, *fields[4 + n_in + n_out:]])


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def blame_optimize(ctx: RunContext, error: ParityError, settings, *,
                   fp16: bool) -> tuple[Optional[ParityError], Optional[dict]]:
    """The optimized model differs: run the converter's own model on the same inputs. When that one
    matches, ncnnoptimize made the model wrong, and the error says so (None when it differs too);
    and what the converter's model did, for the report (None: there is no optimized model)."""
    before = ctx.unoptimized
    if before is None:
        return None, None
    inputs = ctx.ordered_inputs()
    outputs = run_ncnn(before.param, before.bin, [(b, inputs[b.onnx_name]) for b in before.inputs], before.outputs,
                       timeout=ctx.config.converter.timeout, fp16=fp16)
    unoptimized = compare_outputs(ctx.expected, outputs, settings, against="the export (on ncnn, not optimized)")
    culprit = {"stage": "optimize", "unoptimized_param": before.param.name,
               "unoptimized_max_abs": unoptimized.max_abs, "unoptimized_passed": unoptimized.passed}
    if not unoptimized.passed:
        return None, culprit
    error.message += (f" The converter's own model ({before.param.name}) matches (max abs {unoptimized.max_abs:.3g}): "
                      f"ncnnoptimize made the model wrong (stage `optimize`, {PARAM}).")
    error.hint = "set converter.optimize: false to ship the converter's model, and report the model to ncnn."
    return error, culprit
