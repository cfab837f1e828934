"""Cut the graph at named tensors: the part before goes to ncnn, the tail runs on the host.

Post-processing that no ncnn layer runs (ArgMax, TopK, NonZero, ScatterND...) is written as its
own ONNX model, `host_tail.onnx`, whose inputs are the cut tensors (and any graph input it still
reads). From here on the pipeline converts and verifies the head alone, against the values the
cut tensors had in the full graph.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional

import onnx
from onnx.utils import Extractor

from deploykit import __version__
from deploykit.core.cache import digest
from deploykit.core.errors import ConfigError
from deploykit.core.parity import run_onnx
from deploykit.onnx.onnx_io import check_onnx, save_onnx
from deploykit.stages.context import RunContext
from deploykit.stages.stage import Stage, StageResult

TAIL = "host_tail.onnx"


@dataclass
class CutResult(StageResult):
    cut: Optional[dict] = None  # at: the cut tensors; tail, tail_inputs, tail_ops: the host tail's file and graph


class CutStage(Stage):
    """cut_at: the head -> NN_cut.onnx, the tail -> host_tail.onnx; later stages are checked
    against the cut tensors' values."""

    name = "cut"
    result_type = CutResult
    numbered = True

    def title(self, ctx: RunContext) -> str:
        return "cutting off the host tail"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.converter.source == "onnx" and bool(ctx.config.cut_at)

    def key(self, ctx: RunContext) -> str:
        return digest("cut", ctx.model_sha, ctx.config.cut_at, ctx.config.parity, __version__)

    def run(self, ctx: RunContext) -> None:
        cut(ctx)

    def restore(self, ctx: RunContext, result: CutResult) -> None:
        ctx.reference = run_onnx(ctx.model, ctx.ordered_inputs(), stage=self.name)


CUT = CutStage()


def cut(ctx: RunContext) -> None:
    """Cut the current graph."""
    names = ctx.config.cut_at
    model = onnx.shape_inference.infer_shapes(ctx.model)
    graph = model.graph
    produced = {out for node in graph.node for out in node.output if out}
    graph_inputs = [v.name for v in graph.input if v.name not in {i.name for i in graph.initializer}]
    missing = [name for name in names if name not in produced]
    if missing:
        hints = {name: difflib.get_close_matches(name, sorted(produced), n=3) for name in missing}
        described = "; ".join(f"{name!r}" + (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
                              for name, near in hints.items())
        raise ConfigError(f"cut_at: no node of {ctx.model_file.name} produces {described}.", stage="cut",
                          hint=f"open {ctx.model_file.name} in Netron and copy the tensor names there.")
    extractor = Extractor(model)
    head = extractor.extract_model(graph_inputs, list(names))
    outputs = [v.name for v in graph.output]
    tail = extractor.extract_model([*names, *graph_inputs], outputs)
    used = {name for node in tail.graph.node for name in node.input}
    kept = [v for v in tail.graph.input if v.name in used or v.name in outputs or v.name in names]
    del tail.graph.input[:]
    tail.graph.input.extend(kept)
    for part, label in ((head, "the head"), (tail, "the host tail")):
        part.ir_version, part.producer_name = model.ir_version, model.producer_name
        check_onnx(part, f"{label} of the cut", stage="cut")

    head_values = run_onnx(head, ctx.ordered_inputs(), stage="cut")
    tail_feed = {**ctx.inputs, **head_values}
    tail_values = run_onnx(tail, {v.name: tail_feed[v.name] for v in tail.graph.input}, stage="cut")
    ctx.check_parity(tail_values, against="the export (host tail fed by the cut tensors)")

    ctx.result(CutResult).cut = {"at": list(names), "tail": TAIL, "tail_inputs": [v.name for v in tail.graph.input],
                                 "tail_ops": sorted({node.op_type for node in tail.graph.node})}
    ctx.wrote(save_onnx(ctx.artifacts, TAIL, tail))
    path = save_onnx(ctx.artifacts, ctx.numbered_file("cut"), head)
    ctx.set_model(head, path)
    ctx.reference = head_values  # later stages are checked against the cut tensors' values
