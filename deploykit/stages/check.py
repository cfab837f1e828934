"""The pre-flight check inside a run: what the converter would refuse, before and after the passes."""

from __future__ import annotations

from collections import Counter

from typing import Optional

from deploykit.graph_pass import PassGraph
from deploykit.preflight import check_model
from deploykit.stages.context import RunContext

SHOWN = 8  # findings printed on the terminal; report.json has them all


def preflight(ctx: RunContext, when: str, graph: Optional[PassGraph] = None) -> list[dict]:
    """Check the current graph for the configured converter and record the findings under `when`;
    the dry runs of the passes' `match` walk `graph`, the one the passes share."""
    target = ctx.config.converter.name
    findings = check_model(ctx.model, target, ctx.passes, after_passes=when == "after_passes", pass_graph=graph)
    ctx.preflight[when] = [finding.to_dict() for finding in findings]
    if when == "before_passes":
        selected = {p.name for p in ctx.passes}
        fixable = sum(1 for f in findings if f.fix in selected)
        ctx.record.details.update(target=target, findings=len(findings), fixed_by_selected_passes=fixable)
        if findings:
            ctx.record.details["ops"] = dict(Counter(f.op for f in findings))
    elif findings:
        ctx.reporter.warn(f"after the passes, {len(findings)} node(s) remain that {target} is expected to "
                          f"refuse or get wrong (the converter and ncnn have the last word):")
        for finding in findings[:SHOWN]:
            ctx.reporter.warn(f"  {finding.op} {finding.node!r}: {finding.reason} {finding.advice()}")
        if len(findings) > SHOWN:
            ctx.reporter.warn(f"  ... and {len(findings) - SHOWN} more in report.json (preflight.after_passes)")
    return ctx.preflight[when]
