"""What a run tells: a progress display and summary for people, report.json for machines."""

from __future__ import annotations

import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional, TypeVar
from collections.abc import Iterator, Mapping

from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from deploykit import __version__
from deploykit.core.errors import shorten
from deploykit.core.parity import StageParity, format_histogram

TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "onnx-graphsurgeon", "pnnx", "ncnn", "numpy")


def tool_versions() -> dict[str, str]:
    found = {"deploykit": __version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


LOG_WIDTH = 1000  # columns of output written to a file or a pipe (a CI log), which rich would cut at 80


def make_console(*, stderr: bool, quiet: bool = False) -> Console:
    """The console of a command: progress and errors on stderr, results on stdout. Written to a
    log rather than a terminal, lines are not wrapped and tables are not cut to 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(stderr=stderr, soft_wrap=not terminal, width=None if terminal else LOG_WIDTH, quiet=quiet)


def print_table(console: Console, table: Table) -> None:
    """A table at the width it needs (up to the terminal's)."""
    console.print(table, soft_wrap=False)


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


R = TypeVar("R", bound="StageResult")


@dataclass
class StageResult:
    """What a stage found. Each field is one key of the stage's record in report.json; a field left
    None is one the stage has not got to (or does not say), and is left out of the report."""

    def to_report(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_report(cls: type[R], record: Mapping[str, Any]) -> R:
        """The result as report.json recorded it (the stage cache's copy of an earlier run); raises
        KeyError, TypeError or ValueError on a record that is not one of this stage."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})

    def headline(self) -> list[str]:
        """What the stage's line on the terminal says of the result, in a few words (rich markup)."""
        return []

    def ran(self) -> list[str]:
        """What the stage ran and with which settings, for `--verbose` (plain text)."""
        return []


@dataclass
class StageRecord:
    name: str
    status: str = "running"  # running, ok, skipped, unchanged, failed
    seconds: float = 0.0
    artifact: Optional[str] = None
    graph: Optional[dict] = None
    parity: Optional[StageParity] = None
    result: StageResult = field(default_factory=StageResult)  # what the stage found, typed by its stage
    error: Optional[str] = None
    key: Optional[str] = None  # what the result depends on (deploykit/core/cache.py)
    outputs_sha256: dict[str, str] = field(default_factory=dict)  # the files the stage wrote
    cached: bool = False

    def to_dict(self) -> dict:
        data = {"name": self.name, "status": self.status, "seconds": round(self.seconds, 3),
                "artifact": self.artifact, "graph": self.graph,
                "parity": self.parity.to_dict() if self.parity else None,
                "key": self.key, "outputs_sha256": self.outputs_sha256, "cached": self.cached}
        data.update(self.result.to_report())
        if self.error:
            data["error"] = self.error
        return data


class _Elapsed:
    """A spinner's text that says how long the stage has been running, redrawn with the spinner."""

    def __init__(self, label: str) -> None:
        self.label, self.start = label, time.perf_counter()

    def __rich__(self) -> Text:
        return Text.assemble((self.label, "bold"), f" ... {time.perf_counter() - self.start:.0f}s")


class Reporter:
    """Collects stage records and shows progress while stages run; counts the warnings it shows."""

    def __init__(self, console: Optional[Console] = None, *, verbose: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.stages: list[StageRecord] = []
        self.started = time.perf_counter()
        self.warnings: list[str] = []
        self.verbose = verbose

    def result(self, name: str, kind: type[R]) -> Optional[R]:
        """The result of this run's stage `name`, when the run has got to it."""
        return next((r.result for r in self.stages if r.name == name and isinstance(r.result, kind)), None)

    @contextmanager
    def stage(self, name: str, label: Optional[str] = None) -> Iterator[StageRecord]:
        record = StageRecord(name)
        self.stages.append(record)
        start = time.perf_counter()
        try:
            with self.console.status(_Elapsed(label or name), spinner="dots"):
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
        """One warning (its lines after the first belong to it); counted for the result line."""
        self.warnings.append(text)
        self.console.print(f"[yellow]warning[/] {escape(text)}", highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)

    def _print_line(self, record: StageRecord) -> None:
        if record.status == "unchanged":  # passes that matched nothing are summed up in one line
            return
        mark = {"ok": "[green]ok[/]", "failed": "[red]FAILED[/]", "unchanged": "[dim]no match[/]",
                "skipped": "[dim]skipped[/]"}.get(record.status, record.status)
        # names and texts (a plugin pass's name, a table file, a stage's summary) are text, not markup
        parts = [f"{mark:>8}", f"[bold]{escape(record.name)}[/]"] + (["[dim](cached)[/]"] if record.cached else [])
        parts += record.result.headline()
        if record.graph:
            parts.append(f"{record.graph['nodes']} nodes")
        if record.parity is not None:
            verdict = "[green]match[/]" if record.parity.passed else "[red]differ[/]"
            parts.append(f"parity vs {escape(record.parity.against)}: max abs {record.parity.max_abs:.2e} {verdict}")
        parts.append(f"[dim]{record.seconds:.1f}s[/]")
        self.console.print("  ".join(parts), highlight=False)
        if self.verbose:
            for line in ran(record):
                self.console.print(f"      {escape(line)}", highlight=False, soft_wrap=True, style="dim")
        if record.parity is not None:
            for output in record.parity.failures():
                if output.histogram:
                    self.console.print(f"    abs error of {output.name!r} (elements per range):", highlight=False,
                                       markup=False)
                    for line in format_histogram(output.histogram):
                        self.console.print(f"    {line}", highlight=False, markup=False)


def ran(record: StageRecord) -> list[str]:
    """What a stage ran and with which settings, for `--verbose`; every detail is in report.json."""
    lines = record.result.ran()
    if record.key:
        lines.append(f"cache key {record.key[:12]}" + (" (reused from the last run)" if record.cached else ""))
    return lines


def before_after(report: dict) -> tuple[list[str], list[list[tuple[str, list[str]]]]]:
    """What each step made of the model, for the export, onnxsim, the passes and ncnn: the column
    names, and three groups of rows (label, one cell per column): the ONNX ops by type, the ncnn
    layers by type (a Reshape layer is not the Reshape node it came from), and the node count,
    parameters and size."""
    stages = [s for s in report["stages"] if s.get("status") in ("ok", "skipped", "unchanged")]
    onnx_steps = [s for s in stages if s.get("graph") and s["name"] != "cut"]
    columns: list[tuple[str, dict]] = []
    if onnx_steps and onnx_steps[0]["name"] in ("export", "import"):
        columns.append((onnx_steps[0]["name"], onnx_steps[0]["graph"]))
    simplified = next((s for s in onnx_steps if s["name"] == "simplify"), None)
    if simplified:
        columns.append(("onnxsim", simplified["graph"]))
    names = [s["name"] for s in stages]
    before_convert = [s for s in onnx_steps if "convert" not in names or stages.index(s) < names.index("convert")]
    if before_convert and before_convert[-1]["name"] not in ("export", "import", "simplify"):
        columns.append(("passes", before_convert[-1]["graph"]))
    onnx_columns = len(columns)
    shipped = next((s for s in reversed(stages) if s["name"] in ("optimize", "convert") and s.get("layers")), None)
    if shipped:
        files = shipped.get("files") or {}
        weights = next((f["bytes"] for name, f in files.items() if name.endswith(".bin")), 0)
        fp16 = bool(((report.get("config") or {}).get("converter") or {}).get("fp16"))
        columns.append(("ncnn", {"ops": shipped["layers"], "nodes": sum(shipped["layers"].values()),
                                 "parameters": f"~{weights // (2 if fp16 else 4):,}",
                                 "bytes": sum(f["bytes"] for f in files.values())}))

    def by_type(kept: list[tuple[str, dict]]) -> list[tuple[str, list[str]]]:
        types = sorted({op for _, graph in kept for op in graph.get("ops", {})})
        return [(op, [str(graph.get("ops", {}).get(op, "")) for _, graph in kept]) for op in types]

    onnx_ops = by_type([(n, g if i < onnx_columns else {}) for i, (n, g) in enumerate(columns)])
    ncnn_layers = by_type([(n, g if i >= onnx_columns else {}) for i, (n, g) in enumerate(columns)])
    totals = [("nodes / layers", [str(graph["nodes"]) for _, graph in columns]),
              ("parameters", [graph["parameters"] if isinstance(graph["parameters"], str)
                              else f"{graph['parameters']:,}" for _, graph in columns]),
              ("size", [_size(graph["bytes"]) if "bytes" in graph else "" for _, graph in columns])]
    return [name for name, _ in columns], [onnx_ops, ncnn_layers, totals]


def _size(count: int) -> str:
    return f"{count / 1e6:.2f} MB" if count >= 1e5 else f"{count / 1e3:.1f} KB"


def before_after_table(report: dict) -> Table:
    """before_after as a table, the way onnxsim shows what it changed."""
    columns, groups = before_after(report)
    table = Table(title="before and after", title_justify="left")
    table.add_column("op / layer")
    for column in columns:
        table.add_column(column, justify="right")
    for group in (g for g in groups if g):
        for index, (label, cells) in enumerate(group):
            table.add_row(escape(label), *cells, end_section=index == len(group) - 1)
    return table


def summary_table(report: dict) -> Table:
    """One row per stage of a report: what it wrote, how big the graph is, how close the outputs."""
    table = Table(title="deploykit run", title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("stage", "left"), ("status", "left"), ("artifact", "left"), ("nodes / layers", "right"), ("changed", "right"),
        ("parity max abs", "right"), ("time", "right"))
    for column, justify in columns:
        table.add_column(column, justify=justify)
    stages = [s for s in report["stages"] if s["status"] != "unchanged"]
    idle = [s for s in report["stages"] if s["status"] == "unchanged"]
    if idle:  # one row for the passes that matched nothing, after the last pass that did something
        last = max((i for i, s in enumerate(stages) if s["name"].startswith("pass:") or s["name"] == "check"))
        stages.insert(last + 1, {"name": f"{len(idle)} more pass(es)", "status": "no match", "changed": 0,
                                 "seconds": sum(s["seconds"] for s in idle)})
    for stage in stages:
        parity = stage.get("parity")
        table.add_row(escape(stage["name"]), stage["status"] + (" (cached)" if stage.get("cached") else ""),
                      escape(stage.get("artifact") or ""),
                      str(stage["graph"]["nodes"]) if stage.get("graph")
                      else str(sum(stage["layers"].values())) if stage.get("layers") else "",
                      str(stage["changed"]) if "changed" in stage else "",
                      f"{parity['max_abs']:.2e}" if parity else "", f"{stage['seconds']:.1f}s")
    return table
