"""Several configs in one build: one process per model, one summary, non-zero if any failed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.core.artifacts import last_report
from deploykit.core.config import load_config
from deploykit.core.errors import EXIT_OK, ConfigError
from deploykit.core.report import make_console, print_table


@dataclass
class Outcome:
    config: Path
    output: Path
    code: int
    seconds: float
    report: Optional[dict]
    message: str


def run_many(paths: list[Path], overrides: list[str], *, jobs: int, console: Console, force: bool = False,
             quiet: bool = False) -> int:
    """Run each config as `deploykit run CONFIG -q` in its own process, `jobs` at a time. `quiet`:
    only the last line, on stdout."""
    shown = make_console(stderr=True, quiet=True) if quiet else console
    outputs: dict[Path, Path] = {}
    for path in paths:  # every config is validated, and folders checked, before anything runs
        config, _ = load_config(path, overrides)
        folder = Path(config.output_folder).resolve()
        if folder in outputs:
            raise ConfigError(f"{path} and {outputs[folder]} both write to {config.output}.", stage="config",
                              hint="give each config its own `output:`.")
        outputs[folder] = path
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        outcomes = list(pool.map(lambda item: _run_one(item[1], item[0], overrides, shown, force), outputs.items()))
    print_table(shown, _summary(outcomes))
    failed = [o for o in outcomes if o.code != EXIT_OK]
    warned = sum(len((o.report or {}).get("warnings") or []) for o in outcomes)
    make_console(stderr=False).print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} model(s) verified on ncnn"
        + (f"; failed: {', '.join(escape(str(o.config)) for o in failed)}" if failed else "")
        + (f"; {warned} warning(s) in their report.json files" if warned else ""), highlight=False)
    return max((o.code for o in failed), default=EXIT_OK)


def _run_one(path: Path, output: Path, overrides: list[str], console: Console, force: bool) -> Outcome:
    command = [sys.executable, "-m", "deploykit", "run", str(path), "-q", *(["--force"] if force else [])]
    for item in overrides:
        command += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    report_path = last_report(output)  # a failed run after a verified one reports beside its folder
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = None
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    message = " ".join(lines[-3:]) if done.returncode else ""
    console.print(f"{'ok' if done.returncode == 0 else 'FAILED':>6}  {escape(str(path))}  {seconds:.1f}s",
                  highlight=False)
    return Outcome(path, output, done.returncode, seconds, report, message)


def _summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="deploykit run: all configs", title_justify="left")
    for column in ("config", "status", "exit", "ncnn max abs", "time", "artifacts / error"):
        table.add_column(column, overflow="fold")
    for o in outcomes:
        parity = ((o.report or {}).get("ncnn") or {}).get("parity") or {}
        status = (o.report or {}).get("status", "failed")
        error = (o.report or {}).get("error")
        detail = (str(o.output) if o.code == EXIT_OK
                  else f"[{error['stage']}] {error['message']}" if error else o.message)
        table.add_row(escape(str(o.config)), status, str(o.code),
                      f"{parity['max_abs']:.2e}" if parity.get("max_abs") is not None else "",
                      f"{o.seconds:.1f}s", escape(detail))
    return table
