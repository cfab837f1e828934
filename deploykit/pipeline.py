"""The engine: runs the stages in order, checks parity after each that changed the graph, and
writes report.json whether the run succeeds or not."""

from __future__ import annotations

import errno
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Union
from collections.abc import Callable

from rich.console import Console

from deploykit.core.artifacts import REPORT, OutputFolder
from deploykit.core.cache import StageCache
from deploykit.core.config import Config
from deploykit.core.errors import (EXIT_OK, DeployError, Interrupted, MachineError, StageError, StoppedError, shorten,
                                   user_code)
from deploykit.core.inputs import make_inputs
from deploykit.core.processes import signals_interrupt
from deploykit.core.report import Reporter, bounded, tool_versions
from deploykit.core.report_html import REPORT_HTML, render_html
from deploykit.manifest import MANIFEST, build_manifest
from deploykit.ncnn.converters import make_converter
from deploykit.stages.check import CHECK
from deploykit.stages.context import RunContext
from deploykit.stages.convert import CONVERT
from deploykit.stages.cut import CUT
from deploykit.stages.embed import EMBED
from deploykit.stages.export import EXPORT, IMPORT, TRACE
from deploykit.stages.optimize import OPTIMIZE
from deploykit.stages.quantize import INT8
from deploykit.stages.rewrite import pass_stages, selected_passes
from deploykit.stages.shapes import SHAPES
from deploykit.stages.simplify import SIMPLIFY, stop_simplifier
from deploykit.stages.stage import Stage, run_stage
from deploykit.stages.verify import VERIFY
from deploykit.variations import run_attempts

INPUTS = "inputs.npz"  # the exact inputs every check ran on
REFERENCE = "reference.npz"  # the reference outputs (the export on onnxruntime) for them


def run(config: Config, config_path: Optional[Path], console: Optional[Console] = None,
        force: bool = False, *, model: Any = None, verbose: bool = False) -> tuple[int, dict[str, Any]]:
    """Run the whole pipeline. Returns (exit code, report); DeployErrors are recorded, then raised.
    Stages whose inputs did not change since the last run into the same folder are reused,
    unless `force`. The run writes into a staging folder that replaces the artifact folder only at
    the end (deploykit/core/artifacts.py): an error, a signal or a crash leaves the folder as it was.
    When the run as configured fails at convert or verify, the config's variations are tried in
    turn, and the first that verifies ships (deploykit/variations.py).
    `model`: a torch module to export instead of calling `model.factory` (deploykit.convert);
    `config_path` is None for a config made without a YAML file."""
    reporter = Reporter(console, verbose=verbose)
    folder = OutputFolder(config.output_folder, reads=files_read(config, config_path))
    with signals_interrupt(), folder.staging() as artifacts:
        cache = StageCache(folder.previous(), enabled=not force)
        versions = tool_versions()
        failures: dict = {}  # shared by the attempts, as are the torch models built
        models: dict = {}

        def attempt(attempt_config: Config, attempt_reporter: Reporter,
                    diagnosis: str) -> tuple[RunContext, Optional[DeployError]]:
            ctx = RunContext(config=attempt_config, config_path=config_path, artifacts=artifacts, inputs={},
                             reporter=attempt_reporter, cache=cache, versions=versions, known_failures=failures,
                             torch_models=models, diagnosis=diagnosis, given_model=model,
                             run_separately=lambda sub, path, console: run(sub, path, console, model=model))
            return ctx, _run_guarded(ctx)

        outcome = run_attempts(config, attempt, lambda ctx: _run_guarded(ctx, ctx.deferred_diagnosis), artifacts,
                               cache, reporter, quiet=lambda: Reporter(Console(quiet=True)))
        ctx, error = outcome.top.ctx, outcome.top.error
        # A file an error names is the user's to open where the run ends up.
        final = folder.destination(verified=error is None)
        try:
            for other in outcome.attempts:  # each attempt that did not ship has its report beside its files
                if other is not outcome.top and other.ctx is not None:
                    _relocate(other.error, artifacts.path, final / other.folder)
                    artifacts.write_json(f"{other.folder}/{REPORT}", build_report(other.ctx, other.error))
            _relocate(error, artifacts.path, final)
            report = build_report(ctx, error)
            report["attempts"] = [other.summary() for other in outcome.attempts]
            report["variation"] = None if outcome.shipped_variation is None else outcome.top.summary()
            if report["status"] == "verified":
                artifacts.write_json(MANIFEST, build_manifest(ctx, report))
                ctx.written += [MANIFEST, REPORT_HTML]
                report["artifacts"] = ctx.written
            artifacts.write_json(REPORT, report)
            artifacts.write_text(REPORT_HTML, render_html(report))
            where = folder.commit(artifacts, verified=report["status"] == "verified")
        except OSError as exc:  # a full disk: the staging folder goes, the artifact folder stays as it was
            raise StageError(f"cannot write {Path(exc.filename or REPORT).name} of the run: {exc.strerror or exc}; "
                             f"the artifact folder {config.output} is as it was before the run.", stage="report",
                             hint="free some space on that disk (or choose another `output:`) and run again.") from None
    for note in folder.notes:
        reporter.warn(note)
    if error is not None:
        error.report_file = where / REPORT
        raise error
    return EXIT_OK, report


def _relocate(error: Optional[DeployError], staged: Path, final: Path) -> None:
    """Name the files an error names where they end up, not in the staging folder."""
    if error is not None:
        error.message = error.message.replace(str(staged), str(final))
        error.hint = error.hint.replace(str(staged), str(final))


def files_read(config: Config, config_path: Optional[Path]) -> list[Optional[Path]]:
    """The user's files a run reads, which its artifact folder may not hold."""
    plugins = [Path(p) for p in config.plugins if p.endswith(".py")]
    return [config_path, config.model.onnx, config.model.checkpoint, config.converter.path,
            *(spec.file for spec in config.inputs), *plugins]


def _run_guarded(ctx: RunContext, work: Optional[Callable[[], None]] = None) -> Optional[DeployError]:
    """Run the stages (or `work`, a later part of them); what ended them, as the error for the
    report (None when all went well)."""
    def stage() -> str:
        return ctx.current_record.name if ctx.current_record is not None else "setup"

    try:
        if work is not None:
            work()
        else:
            _prepare(ctx)
            _run_stages(ctx)
    except DeployError as exc:
        return exc
    except Interrupted as exc:
        return StoppedError(exc, stage=stage())
    except (SystemExit, KeyboardInterrupt) as exc:  # from code a stage ran that is not deploykit's
        what = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
        return StageError(f"code run by `{stage()}` raised {what}, which would have ended deploykit.", stage=stage(),
                          hint="a plugin pass or the model's code must raise an ordinary exception instead.")
    except Exception as exc:  # a bug here or in a tool: still a report, and a message that says so
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return MachineError(f"cannot write {exc.filename or 'a file of the run'}: {exc.strerror}.", stage=stage(),
                              hint="free some space on that disk, or choose another `output:`; the artifact folder "
                                   "is as it was before the run.")
        error = StageError(f"unexpected {type(exc).__name__}: {shorten(str(exc))}", stage=stage(),
                           hint="this is a bug in deploykit or in a tool it runs; the traceback is in "
                                "report.json (error.traceback), please attach the report to a bug report.")
        error.traceback = traceback.format_exc()
        return error
    finally:
        stop_simplifier(ctx)
    return None


def _prepare(ctx: RunContext) -> None:
    # Resolved before any stage runs, so that a misspelt pass fails in a second, not after export.
    with user_code(f"the plugin(s) {', '.join(ctx.config.plugins)}", stage="passes"):
        ctx.passes = selected_passes(ctx) if ctx.config.converter.source == "onnx" else []
    make_converter(ctx.config.converter).executable()  # a converter that is not there fails now, not after export
    ctx.inputs = make_inputs(ctx.config.inputs, ctx.config.seed)


Step = Union[Stage, Callable[[RunContext], None]]  # a function: a step that records nothing


def stages(ctx: RunContext) -> list[Step]:
    """Every stage of a run, in order, one line each; a stage this run does not have (`applies`)
    is left out when it comes to it."""
    return [
        IMPORT,  # model.onnx -> 00_import.onnx; onnxsim's process starts meanwhile
        EXPORT,  # torch -> 00_export.onnx, checked against torch; onnxsim's process starts meanwhile
        SIMPLIFY,  # onnxsim -> 01_simplify.onnx; which fusions it skips depends on the converter
        CUT,  # cut_at: the host tail off first, so that nothing after it looks at what the host runs
        write_goldens,  # the inputs and reference outputs every later check runs on (the cut's, after a cut)
        say_trace_skips,  # converter.source: torchscript: no onnxsim, no check, no passes
        TRACE,  # converter.source: torchscript: what pnnx converts instead of the ONNX graph
        CHECK,  # what the converter would refuse, before the passes
        *pass_stages(ctx),  # NN_<pass>.onnx, each checked against the export
        say_idle_passes,  # the passes that matched nothing, in one line
        CONVERT,  # after the check of what the passes left
        EMBED,  # onnx2ncnn: the in-model lookups as Embed layers, before ncnnoptimize and verify read the model
        OPTIMIZE,  # converter.optimize: ncnnoptimize; its model is the one verified
        VERIFY,  # the verdict, on the ncnn runtime
        SHAPES,  # inputs[].shapes: the verified model at every other listed shape
        INT8,  # quantize.int8: made from, and judged against, the verified model
    ]


def _run_stages(ctx: RunContext) -> None:
    for step in stages(ctx):
        if not isinstance(step, Stage):
            step(ctx)
        elif step.applies(ctx):
            run_stage(ctx, step)


def write_goldens(ctx: RunContext) -> None:
    ctx.artifacts.write_arrays(INPUTS, ctx.inputs)
    ctx.artifacts.write_arrays(REFERENCE, ctx.expected)
    ctx.written += [INPUTS, REFERENCE]


def say_trace_skips(ctx: RunContext) -> None:
    if TRACE.applies(ctx):
        ctx.reporter.note("      simplify and passes skipped: pnnx reads a TorchScript trace (converter.source)")


def say_idle_passes(ctx: RunContext) -> None:
    """The passes that matched nothing, in one line (their own lines are left out)."""
    records = ctx.reporter.stages[-len(ctx.passes):] if ctx.passes else []  # the passes' own, just written
    idle = [p.name for p, record in zip(ctx.passes, records) if record.status == "unchanged"]
    if idle:
        ctx.reporter.note(f"      {len(idle)} pass(es) matched nothing: {', '.join(idle)}")


def build_report(ctx: RunContext, error: Optional[DeployError]) -> dict[str, Any]:
    config = ctx.config
    conversion = ctx.conversion
    # the ncnn verdict; the stages after it (int8, shapes) check further models, and fail the run themselves
    final = next((record for record in ctx.reporter.stages if record.name == "verify"), None)
    verified = error is None and final is not None and final.parity is not None
    report: dict[str, Any] = {
        "status": "verified" if verified else "failed",
        "exit_code": EXIT_OK if error is None else error.exit_code,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_file": None if ctx.config_path is None else str(ctx.config_path),
        "config": bounded(config.model_dump(mode="json")),
        "versions": ctx.versions,
        "inputs": [{"name": s.name, "shape": list(ctx.inputs[s.name].shape) if s.name in ctx.inputs else s.shape,
                    "dtype": s.dtype, "source": "file" if s.file else "data" if s.data is not None else "random",
                    "range": list(s.range) if s.range else None, "file": str(s.file) if s.file else None}
                   for s in config.inputs],
        "seed": config.seed,
        "passes": [p.name for p in ctx.passes],
        "stages": [record.to_dict() for record in ctx.reporter.stages],
        "warnings": list(ctx.reporter.warnings),
        "artifacts": ctx.written,
        "goldens": {"inputs": INPUTS, "reference": REFERENCE} if ctx.reference is not None else None,
        "preflight": {"target": config.converter.name, **ctx.preflight} if ctx.preflight else None,
        "ncnn": None,
        "error": None,
    }
    if conversion is not None:
        report["ncnn"] = {
            "param": conversion.param.name, "bin": conversion.bin.name,
            "inputs": [b.to_dict() for b in conversion.inputs], "outputs": [b.to_dict() for b in conversion.outputs],
            "input_dtypes": {name: array.dtype.name for name, array in ctx.ordered_inputs().items()},
            "parity": final.parity.to_dict() if final is not None and final.parity else None,
        }
    if error is not None:
        report["error"] = {"type": type(error).__name__, "stage": error.stage, "message": shorten(error.message),
                           "hint": shorten(error.hint), "traceback": getattr(error, "traceback", None)}
    return report
