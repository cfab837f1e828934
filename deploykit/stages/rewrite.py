"""The rewrite passes: each that changes the graph writes NN_<pass>.onnx and is parity-checked."""

from __future__ import annotations

from deploykit.tools.diagnose import first_divergence_onnx
from deploykit.core.errors import DeployError, ParityError, StageError
from deploykit.onnx.graph_pass import GraphPass, PassGraph, load_plugins, resolve_passes
from deploykit.onnx.host_lookup import take_up_host_lookups
from deploykit.onnx.onnx_io import save_onnx
from deploykit.core.parity import run_onnx
from deploykit.stages.context import RunContext


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
    ctx.record.details.update(changed=result.changed, refusals=result.refusals)
    if not result.changed:
        ctx.record.status = "unchanged"
        return
    name = f"{ctx.next_index:02d}_{graph_pass.name}.onnx"
    path = save_onnx(ctx.artifacts, name, rewritten, check=f"the graph after pass {graph_pass.name!r}", stage=stage)
    ctx.next_index += 1
    before = ctx.model
    ctx.set_model(rewritten, path)
    take_up_host_lookups(ctx, graph_pass)  # the lookups it moved to the host now feed every check
    try:
        ctx.check_parity(run_onnx(path, ctx.ordered_inputs(), stage=stage), against="the export")
    except ParityError as error:
        # the error itself again, with what the diagnosis found added
        raise ctx.diagnose(error, lambda: first_divergence_onnx(  # noqa: B904
            before, rewritten, ctx.inputs, ctx.config.parity))
