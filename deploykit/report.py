"""What a run tells: a progress display and summary for people, report.json for machines."""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Iterator, Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit import __version__
from deploykit.errors import shorten
from deploykit.parity import StageParity, format_histogram

TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "onnx-graphsurgeon", "pnnx", "ncnn", "numpy")


def tool_versions() -> dict[str, str]:
    found = {"deploykit": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


ECHOED_VALUES = 10_000  # of a config's values, repeated in report.json


def bounded(value: Any, budget: Optional[list[int]] = None) -> Any:
    """`value` (plain JSON data) as the report repeats it: at most ECHOED_VALUES values in all,
    and strings cut to MAX_ECHO characters; what is left out is said in its place."""
    budget = budget if budget is not None else [ECHOED_VALUES]
    budget[0] -= 1
    if isinstance(value, str):
        return shorten(value)
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if budget[0] <= 0:
                kept["..."] = f"{len(value) - index} more left out of the report"
                break
            kept[str(key)] = bounded(item, budget)
        return kept
    if isinstance(value, list):
        items: list[Any] = []
        for index, item in enumerate(value):
            if budget[0] <= 0:
                items.append(f"... {len(value) - index} more left out of the report")
                break
            items.append(bounded(item, budget))
        return items
    return value


@dataclass
class StageRecord:
    name: str
    status: str = "running"  # running, ok, skipped, unchanged, failed
    seconds: float = 0.0
    artifact: Optional[str] = None
    graph: Optional[dict] = None
    parity: Optional[StageParity] = None
    details: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    key: Optional[str] = None  # what the result depends on (deploykit/cache.py)
    outputs_sha256: dict[str, str] = field(default_factory=dict)  # the files the stage wrote
    cached: bool = False

    def to_dict(self) -> dict:
        data = {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3),
                "artifact": self.artifact, "graph": self.graph,
                "parity": self.parity.to_dict() if self.parity else None,
                "key": self.key, "outputs_sha256": self.outputs_sha256, "cached": self.cached}
        data.update(self.details)
        if self.error:
            data["error"] = self.error
        return data


class Reporter:
    """Collects stage records and shows progress while stages run."""

    def __init__(self, console: Optional[Console] = None) -> None:
        self.console = console or Console(stderr=True)
        self.stages: list[StageRecord] = []
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str, label: Optional[str] = None) -> Iterator[StageRecord]:
        record = StageRecord(name)
        self.stages.append(record)
        start = time.perf_counter()
        try:
            with self.console.status(f"[bold]{label or name}[/] ...", spinner="dots"):
                yield record
            if record.status == "running":
                record.status = "ok"
        except BaseException as exc:
            record.status = "failed"
            record.error = shorten(str(exc))
            raise
        finally:
            record.seconds = time.perf_counter() - start
            self._print_line(record)

    def warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning[/] {escape(text)}", highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)

    def _print_line(self, record: StageRecord) -> None:
        if record.status == "unchanged":  # passes that matched nothing are summed up in one line
            return
        mark = {"ok": "[green]ok[/]", "failed": "[red]FAILED[/]", "unchanged": "[dim]no match[/]",
                "skipped": "[dim]skipped[/]"}.get(record.status, record.status)
        parts = [f"{mark:>8}", f"[bold]{record.name}[/]"] + (["[dim](cached)[/]"] if record.cached else [])
        if "changed" in record.details and record.details["changed"]:
            parts.append(f"changed {record.details['changed']} place(s)")
        moved = [entry for entry in record.details.get("host_lookups", []) if not entry.get("in_model")]
        if moved:
            tables = ", ".join(entry["table"] for entry in moved)
            parts.append(f"lookups moved to the host: {tables} (see host_lookups in deploykit.json)")
        if "findings" in record.details:
            parts.append(f"{record.details['findings']} node(s) {record.details['target']} would refuse, "
                         f"{record.details['fixed_by_selected_passes']} with a selected pass for them")
        if record.details.get("summary"):  # what a stage says of its own result, in a few words
            parts.append(record.details["summary"])
        if record.graph:
            parts.append(f"{record.graph['nodes']} nodes")
        if record.parity is not None:
            verdict = "[green]match[/]" if record.parity.passed else "[red]differ[/]"
            parts.append(f"parity vs {record.parity.against}: max abs {record.parity.max_abs:.2e} {verdict}")
        parts.append(f"[dim]{record.seconds:.1f}s[/]")
        self.console.print("  ".join(parts), highlight=False)
        if record.parity is not None:
            for output in record.parity.failures():
                if output.histogram:
                    self.console.print(f"    abs error of {output.name!r} (elements per range):", highlight=False)
                    for line in format_histogram(output.histogram):
                        self.console.print(f"    {line}", highlight=False, markup=False)


def summary_table(report: dict) -> Table:
    """One row per stage of a report: what it wrote, how big the graph is, how close the outputs."""
    table = Table(title="deploykit run", title_justify="left")
    for column, justify in (("stage", "left"), ("status", "left"), ("artifact", "left"), ("nodes / layers", "right"),
                            ("changed", "right"), ("parity max abs", "right"), ("time", "right")):
        table.add_column(column, justify=justify)
    stages = [s for s in report["stages"] if s["status"] != "unchanged"]
    idle = [s for s in report["stages"] if s["status"] == "unchanged"]
    if idle:  # one row for the passes that matched nothing, after the last pass that did something
        last = max((i for i, s in enumerate(stages) if s["name"].startswith("pass:") or s["name"] == "check"))
        stages.insert(last + 1, {"name": f"{len(idle)} more pass(es)", "status": "no match", "changed": 0,
                                 "seconds": sum(s["seconds"] for s in idle)})
    for stage in stages:
        parity = stage.get("parity")
        table.add_row(stage["name"], stage["status"] + (" (cached)" if stage.get("cached") else ""),
                      stage.get("artifact") or "",
                      str(stage["graph"]["nodes"]) if stage.get("graph")
                      else str(sum(stage["layers"].values())) if stage.get("layers") else "",
                      str(stage["changed"]) if "changed" in stage else "",
                      f"{parity['max_abs']:.2e}" if parity else "", f"{stage['seconds']:.1f}s")
    return table
