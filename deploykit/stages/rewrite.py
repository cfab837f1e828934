"""The rewrite passes: each that changes the graph writes NN_<pass>.onnx and is parity-checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rich.markup import escape

from deploykit import __version__
from deploykit.core.cache import digest, source_digest
from deploykit.core.errors import DeployError, ParityError, StageError
from deploykit.core.parity import run_onnx
from deploykit.onnx.graph_pass import GraphPass, PassGraph, load_plugins, resolve_passes
from deploykit.onnx.host_lookup import host_inputs, take_up_host_lookups
from deploykit.onnx.onnx_io import save_onnx
from deploykit.stages.context import RunContext
from deploykit.stages.stage import Stage, StageResult
from deploykit.tools.diagnose import first_divergence_onnx


@dataclass
class PassResult(StageResult):
    changed: Optional[int] = None  # places the pass rewrote
    refusals: Optional[list[str]] = None  # why it left each near-miss alone
    host_lookups: Optional[list[dict]] = None  # the lookups it moved to the host (deploykit/onnx/host_lookup.py)
    divergence: Optional[dict] = None  # where the outputs first differ, when the pass broke them

    def headline(self) -> list[str]:
        parts = [f"changed {self.changed} place(s)"] if self.changed else []
        moved = [entry for entry in self.host_lookups or [] if not entry.get("in_model")]
        if moved:
            tables = ", ".join(entry["table"] for entry in moved)
            parts.append(escape(f"lookups moved to the host: {tables} (see host_lookups in deploykit.json)"))
        return parts

    def ran(self) -> list[str]:
        return [f"refused: {text}" for text in self.refusals or []]


class PassStage(Stage):
    """One selected pass on the current graph; its key follows the pass's code and the helpers it imports."""

    result_type = PassResult
    numbered = True

    def __init__(self, graph_pass: GraphPass) -> None:
        self.graph_pass = graph_pass
        self.name = f"pass:{graph_pass.name}"

    def title(self, ctx: RunContext) -> str:
        return f"pass {self.graph_pass.name}"

    def key(self, ctx: RunContext) -> str:
        graph_pass = self.graph_pass
        return digest("pass", ctx.model_sha, graph_pass.name, vars(graph_pass), source_digest(type(graph_pass)),
                      ctx.config.parity, __version__)

    def run(self, ctx: RunContext) -> None:
        assert ctx.pass_graph is not None  # the check stage before the passes made it
        run_pass(ctx, self.graph_pass, ctx.pass_graph)

    def restore(self, ctx: RunContext, result: PassResult) -> None:
        # A pass that moved lookups to the host added inputs; their values come from its table files.
        ctx.inputs.update(host_inputs(result.host_lookups or [], ctx.artifacts.path, ctx.inputs))


def pass_stages(ctx: RunContext) -> list[Stage]:
    """A stage for each pass the config selected (RunContext.passes), in their order."""
    return [PassStage(graph_pass) for graph_pass in ctx.passes]


def selected_passes(ctx: RunContext) -> list[GraphPass]:
    load_plugins(ctx.config.plugins)
    return resolve_passes(ctx.config.passes, ctx.config.converter.name)


def run_pass(ctx: RunContext, graph_pass: GraphPass, graph: PassGraph) -> None:
    """Apply one pass to the current model; `graph`, shared by the passes of a run, lets a pass
    walk the graph an earlier pass left unchanged instead of importing it again."""
    stage = f"pass:{graph_pass.name}"
    try:
        rewritten, result = graph.apply(ctx.model, graph_pass)
    except DeployError:
        raise
    except Exception as exc:
        raise StageError(f"pass {graph_pass.name!r} raised {type(exc).__name__}: {exc}", stage=stage,
                         hint=f"disable it with `{{name: {graph_pass.name}, enabled: false}}` under passes:, "
                              "and report the graph that caused it.") from None
    found = ctx.result(PassResult)
    found.changed, found.refusals = result.changed, result.refusals
    if not result.changed:
        ctx.record.status = "unchanged"
        return
    path = save_onnx(ctx.artifacts, ctx.numbered_file(graph_pass.name), rewritten,
                     check=f"the graph after pass {graph_pass.name!r}", stage=stage)
    before = ctx.model
    ctx.set_model(rewritten, path)
    found.host_lookups = take_up_host_lookups(ctx, graph_pass)  # they now feed every check
    try:
        ctx.check_parity(run_onnx(path, ctx.ordered_inputs(), stage=stage), against="the export")
    except ParityError as error:
        # the error itself again, with what the diagnosis found added
        explained, found.divergence = ctx.diagnose(error, lambda: first_divergence_onnx(
            before, rewritten, ctx.inputs, ctx.config.parity))
        raise explained  # noqa: B904
