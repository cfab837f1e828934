"""The pre-flight check inside a run: what the converter would refuse, before and after the passes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from deploykit.onnx.graph_pass import PassGraph
from deploykit.stages.context import RunContext
from deploykit.stages.rewrite import PassResult
from deploykit.stages.stage import Stage, StageResult
from deploykit.tools.preflight import check_model

SHOWN = 8  # findings printed on the terminal; report.json has them all


@dataclass
class CheckResult(StageResult):
    target: Optional[str] = None  # the converter checked for
    findings: Optional[int] = None  # nodes it would refuse (each in report.json's preflight.before_passes)
    fixed_by_selected_passes: Optional[int] = None
    ops: Optional[dict[str, int]] = None  # the refused nodes by op type

    def headline(self) -> list[str]:
        if self.findings is None:
            return []
        return [f"{self.findings} node(s) {self.target} would refuse, "
                f"{self.fixed_by_selected_passes} with a selected pass for them"]


class CheckStage(Stage):
    """What the converter would refuse, before the passes (and, in the convert stage, after them).
    It has no key: it runs in every run, reused stages or not."""

    name = "check"
    result_type = CheckResult

    def title(self, ctx: RunContext) -> str:
        return f"checking what {ctx.config.converter.name} would refuse"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.converter.source == "onnx"

    def run(self, ctx: RunContext) -> None:
        ctx.pass_graph = PassGraph()  # imported once, and again only after a pass changed it
        preflight(ctx, "before_passes", ctx.pass_graph)


CHECK = CheckStage()


def preflight(ctx: RunContext, when: str, graph: Optional[PassGraph] = None) -> list[dict]:
    """Check the current graph for the configured converter and record the findings under `when`;
    the dry runs of the passes' `match` walk `graph`, the one the passes share."""
    target = ctx.config.converter.name
    findings = check_model(ctx.model, target, ctx.passes, after_passes=when == "after_passes", pass_graph=graph)
    ctx.preflight[when] = [finding.to_dict() for finding in findings]
    if when == "before_passes":
        selected = {p.name for p in ctx.passes}
        fixable = sum(1 for f in findings if f.fix in selected)
        result = ctx.result(CheckResult)
        result.target, result.findings, result.fixed_by_selected_passes = target, len(findings), fixable
        if findings:
            result.ops = dict(Counter(f.op for f in findings))
    elif findings:
        lines = [f"after the passes, {len(findings)} node(s) remain that {target} is expected to refuse or get "
                 f"wrong (the converter and ncnn have the last word):"]
        lines += [f"  {finding.op} {finding.node!r}: {finding.reason} {_remedy(ctx, finding)}"
                  for finding in findings[:SHOWN]]
        if len(findings) > SHOWN:
            lines.append(f"  ... and {len(findings) - SHOWN} more in report.json (preflight.after_passes)")
        ctx.reporter.warn("\n".join(lines))
    return ctx.preflight[when]


def _remedy(ctx: RunContext, finding: Any) -> str:
    """What to do about a node left after the passes: the pass that would fix it, or, where that
    pass ran and refused the node, its reason (naming the pass again would send the user in a circle)."""
    if getattr(finding, "refused", None):  # the pass's dry run on this graph said why
        return f"The pass {finding.fix} ran and refused it: {finding.refused}"
    record = next((r for r in ctx.reporter.stages if r.name == f"pass:{finding.fix}"), None)
    if record is None:
        return f"Fix: {finding.fix}"
    said = f"{finding.op} {finding.node!r}: "
    refusals = record.result.refusals if isinstance(record.result, PassResult) else None
    refusal = next((r for r in refusals or [] if r.startswith(said)), None)
    if refusal is not None:
        return f"The pass {finding.fix} ran and refused it: {refusal[len(said):]}"
    return f"The pass {finding.fix} ran and did not match it (see its refusals in report.json)."
