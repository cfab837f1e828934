"""Pre-flight check: every ONNX node a converter will refuse or get wrong, why, and what fixes it.

`check_model(model, "pnnx" | "onnx2ncnn")` walks the graph once; for each node the first rule of
the target (deploykit/tools/preflight_rules.py) whose op types and condition match gives a Finding.
The conditions read the graph only (deploykit/onnx/graph_view.py), and what a pass takes is decided by
a dry run of its own `match`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional
from collections.abc import Iterable

import onnx

from deploykit.core.errors import ConfigError
from deploykit.onnx.graph_pass import GraphPass, PassGraph, with_inferred_shapes
from deploykit.onnx.graph_view import STANDARD_DOMAINS, GraphView  # noqa: F401  (GraphView: reduce reads graphs with it)
from deploykit.tools.preflight_rules import HOST_CUT, TARGETS, Target, non_standard_domain


@dataclass(frozen=True)
class Finding:
    node: str    # ONNX node name, or "#<index>" for an unnamed node
    op: str      # op type, "<domain>::<op type>" outside the standard domain
    reason: str  # why the target refuses or mis-converts it, one sentence
    fix: str     # a pass name, or "no pass — do this on the host ..."
    refused: str = ""  # after the passes ran: why the pass named in `fix`, which ran, refuses this node

    def to_dict(self) -> dict:
        found = asdict(self)
        if not self.refused:
            del found["refused"]
        return found

    def advice(self) -> str:
        """What to do, in one phrase: the fix, or why the pass that would fix it refused."""
        return f"{self.fix} refused it: {self.refused}" if self.refused else f"Fix: {self.fix}"


def check_model(model: onnx.ModelProto, target: str, passes: Iterable[GraphPass] = (),
                after_passes: bool = False, pass_graph: Optional[PassGraph] = None) -> list[Finding]:
    """Every node of `model` that `target` ("pnnx" or "onnx2ncnn") cannot take, in graph order.
    `passes` are the configured ones, whose arguments the dry runs of their `match` use, on
    `pass_graph` when the run's passes share one; with `after_passes` (they ran), a node whose
    fixing pass is among them and refuses it says why."""
    rules = TARGETS.get(target)
    if rules is None:
        raise ConfigError(f"no pre-flight rules for target {target!r}.", stage="check",
                          hint=f"use one of: {', '.join(sorted(TARGETS))}.")
    graph = GraphView(with_inferred_shapes(model)[0], model.graph.initializer, passes, model, pass_graph)
    findings = []
    for index, node in enumerate(graph.nodes):
        finding = _first_finding(graph, node, index, rules)
        if finding is not None and after_passes and finding.fix in graph.passes:
            refusal = graph.pass_refusal(finding.fix, node)
            if refusal is not None:
                finding = Finding(finding.node, finding.op, finding.reason, finding.fix, refusal.reason)
        if finding is not None:
            findings.append(finding)
    return findings


def _first_finding(graph: GraphView, node: onnx.NodeProto, index: int, rules: Target) -> Optional[Finding]:
    custom = node.domain not in STANDARD_DOMAINS
    static = not custom and graph.is_static_node(node)
    if static and rules.static_nodes == "skip":
        return None
    for rule in rules.rules:
        if custom != (rule.when is non_standard_domain) or (rule.ops and node.op_type not in rule.ops):
            continue
        details = rule.when(graph, node) if rule.when is not None else {}
        if details is None:
            continue
        op = f"{node.domain}::{node.op_type}" if custom else node.op_type
        reason, fix = rule.reason.format(op=op, **details), rule.fix
        if static and rule.name not in rules.static_exempt:
            reason, fix = reason[:-1] + "; every input is known at conversion time, so it folds away.", "fold_shapes"
        if fix == HOST_CUT and (cut := graph.computed_inputs(node)):
            reason += f" The config line that cuts before it: `cut_at: [{', '.join(cut)}]`."
        return Finding(node.name or f"#{index}", op, reason, fix)
    return None
