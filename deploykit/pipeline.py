"""The engine: runs the stages in order, checks parity after each that changed the graph, and
writes report.json whether the run succeeds or not."""

from __future__ import annotations

import errno
import time
import traceback
from pathlib import Path
from typing import Any, Optional
from collections.abc import Callable

from rich.console import Console

from deploykit import __version__
from deploykit.core.artifacts import REPORT, OutputFolder, sha256
from deploykit.ncnn.calibration import load_calibration
from deploykit.core.cache import StageCache, arrays_digest, digest, source_digest
from deploykit.core.config import Config
from deploykit.ncnn.converters import make_converter
from deploykit.core.errors import (EXIT_OK, DeployError, Interrupted, MachineError, StageError, StoppedError, shorten,
                              user_code)
from deploykit.onnx.graph_pass import PassGraph
from deploykit.core.inputs import make_inputs
from deploykit.manifest import MANIFEST, build_manifest
from deploykit.ncnn.tools import tool_digest
from deploykit.core.parity import run_onnx
from deploykit.core.processes import signals_interrupt
from deploykit.core.report import Reporter, bounded, tool_versions
from deploykit.core.report_html import REPORT_HTML, render_html
from deploykit.stages.context import RunContext
from deploykit.stages.check import preflight
from deploykit.stages.convert import convert, converter_identity, restore_conversion
from deploykit.stages.cut import cut
from deploykit.stages.embed import embed, in_model_lookups, restore_embedded
from deploykit.stages.export import export_torch, import_onnx, trace_torch
from deploykit.stages.rewrite import run_pass, selected_passes
from deploykit.stages.shapes import shape_sets, verify_shapes
from deploykit.stages.simplify import simplify, start_simplifier, stop_simplifier, submit_model
from deploykit.stages.optimize import optimize, restore_optimized
from deploykit.stages.quantize import quantize_int8
from deploykit.stages.verify import verify
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
                             torch_models=models, diagnosis=diagnosis, given_model=model)
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


def _run_stages(ctx: RunContext) -> None:
    reporter, config, versions = ctx.reporter, ctx.config, ctx.versions
    inputs_key = arrays_digest(ctx.inputs)
    if config.model.onnx is not None:
        with reporter.stage("import") as ctx.record:
            source_key = digest("import", sha256(config.model.onnx), inputs_key, config.parity, versions["onnx"],
                                __version__)
            if not ctx.reuse(source_key):
                start_simplifier(ctx)
                import_onnx(ctx)
                submit_model(ctx)
            ctx.reference = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage="import")
    else:
        with reporter.stage("export") as ctx.record:
            model, fingerprint = ctx.torch_model()
            source_key = digest("export", fingerprint, config.model, config.export, config.lint, inputs_key,
                                config.parity, versions["torch"], versions["onnx"], __version__)
            if ctx.reuse(source_key):
                ctx.reference = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage="export")
            else:
                start_simplifier(ctx)  # onnxsim's import passes while torch exports
                torch_outputs = export_torch(ctx, model)
                submit_model(ctx)  # and it simplifies the export while onnxruntime checks it
                onnx_outputs = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage="export")
                ctx.check_parity(onnx_outputs, against="torch", reference=torch_outputs)
                ctx.reference = onnx_outputs
    if config.converter.source == "torchscript":
        _run_torchscript_stages(ctx, source_key, inputs_key)
        return
    with reporter.stage("simplify") as ctx.record:
        # The converter is part of the key: which onnxsim fusions are skipped depends on it.
        if not ctx.reuse(digest("simplify", ctx.model_sha, config.simplify, config.converter.name, config.parity,
                                versions["onnxsim"], __version__)):
            simplify(ctx)
            if ctx.record.status != "skipped":
                ctx.check_parity(run_onnx(ctx.model_file, ctx.ordered_inputs(), stage="simplify"),
                                 against="the export")
        stop_simplifier(ctx)  # reused: what onnxsim was given is not needed
    if config.cut_at:
        with reporter.stage("cut", "cutting off the host tail") as ctx.record:
            cut(ctx, ctx.reuse(digest("cut", ctx.model_sha, config.cut_at, config.parity, __version__)) is not None)
    _write_goldens(ctx)
    graph = PassGraph()  # imported once, and again only after a pass changed it
    with reporter.stage("check", f"checking what {config.converter.name} would refuse") as ctx.record:
        preflight(ctx, "before_passes", graph)
    for graph_pass in ctx.passes:
        with reporter.stage(f"pass:{graph_pass.name}", f"pass {graph_pass.name}") as ctx.record:
            key = digest("pass", ctx.model_sha, graph_pass.name, vars(graph_pass), source_digest(type(graph_pass)),
                         config.parity, __version__)
            if not ctx.reuse(key):
                run_pass(ctx, graph_pass, graph)
            elif ctx.record.artifact:
                ctx.next_index += 1  # keep the numbering of the files after it
    idle = [p.name for p, record in zip(ctx.passes, reporter.stages[-len(ctx.passes):])
            if record.status == "unchanged"] if ctx.passes else []
    if idle:
        reporter.note(f"      {len(idle)} pass(es) matched nothing: {', '.join(idle)}")
    _run_converter_stages(ctx, graph, inputs_key)


def _write_goldens(ctx: RunContext) -> None:
    ctx.artifacts.write_arrays(INPUTS, ctx.inputs)
    ctx.artifacts.write_arrays(REFERENCE, ctx.expected)
    ctx.written += [INPUTS, REFERENCE]


def _run_torchscript_stages(ctx: RunContext, export_key: str, inputs_key: str) -> None:
    """converter.source: torchscript: pnnx converts a trace of the model; no onnxsim, no passes."""
    ctx.reporter.note("      simplify and passes skipped: pnnx reads a TorchScript trace (converter.source)")
    stop_simplifier(ctx)
    _write_goldens(ctx)
    with ctx.reporter.stage("trace", "tracing the model to TorchScript") as ctx.record:
        if not ctx.reuse(digest("trace", export_key, ctx.versions["torch"], __version__)):
            trace_torch(ctx, ctx.torch_model()[0])
    _run_converter_stages(ctx, None, inputs_key)


def _run_converter_stages(ctx: RunContext, graph: Optional[PassGraph], inputs_key: str) -> None:
    """Convert (after the pre-flight check of the passes' `graph`, when there is one), then
    optimize, verify on ncnn, and the release stages the config asks for."""
    reporter, config, versions = ctx.reporter, ctx.config, ctx.versions
    with reporter.stage("convert", f"converting with {config.converter.name}") as ctx.record:
        if graph is not None:
            preflight(ctx, "after_passes", graph)
        shapes = {name: [list(a.shape), a.dtype.name] for name, a in ctx.ordered_inputs().items()}
        key = digest("convert", ctx.model_sha, config.converter, shapes, shape_sets(config, ctx.inputs),
                     converter_identity(config.converter), __version__)
        if not ctx.reuse(key):
            convert(ctx)
        else:
            restore_conversion(ctx)
    if in_model_lookups(ctx):  # before ncnnoptimize and verify: the Embed layers are part of the model
        with reporter.stage("embed", "writing the table lookups as ncnn Embed layers") as ctx.record:
            key = digest("embed", sha256(ctx.converted.param), sha256(ctx.converted.bin),
                         [(entry["input"], entry["ids"], sha256(ctx.artifacts.file(entry["table"])))
                          for entry in in_model_lookups(ctx)],
                         __version__)
            if not ctx.reuse(key):
                embed(ctx)
            else:
                restore_embedded(ctx)
    if config.converter.optimize:
        with reporter.stage("optimize", "optimizing with ncnnoptimize") as ctx.record:
            key = digest("optimize", sha256(ctx.converted.param), sha256(ctx.converted.bin), config.converter.fp16,
                         tool_digest("ncnnoptimize", config.converter.tools, stage="optimize"), __version__)
            if not ctx.reuse(key):
                optimize(ctx)
            else:
                restore_optimized(ctx)
    with reporter.stage("verify", "running on the ncnn runtime") as ctx.record:
        files = [sha256(ctx.converted.param), sha256(ctx.converted.bin)]
        # What ncnn is fed: inputs a pass moved to the host change with their tables, not the .param/.bin.
        key = digest("verify", files, arrays_digest(ctx.ordered_inputs()), config.parity, versions["ncnn"],
                     __version__)
        if not ctx.reuse(key):
            verify(ctx)
    if len(shape_sets(config, ctx.inputs)) > 1:
        with reporter.stage("shapes", "verifying at every listed shape") as ctx.record:
            key = digest("shapes", sha256(ctx.converted.param), sha256(ctx.converted.bin),
                         config.model_dump(mode="json"), inputs_key, versions, __version__)
            if not ctx.reuse(key):
                verify_shapes(ctx, lambda sub_config, path, console: run(sub_config, path, console,
                                                                         model=ctx.given_model))
    if config.quantize.int8:
        with reporter.stage("int8", "quantizing to int8") as ctx.record:
            assert config.quantize.calibration is not None  # the config's validator: int8 needs calibration
            calibration = load_calibration(config.quantize.calibration, config.inputs,
                                           {spec.name: ctx.inputs[spec.name] for spec in config.inputs}, config.seed)
            key = digest("int8", sha256(ctx.converted.param), sha256(ctx.converted.bin), config.quantize,
                         config.parity.int8, [arrays_digest(s) for s in calibration.samples + calibration.held_back],
                         [tool_digest(tool, config.converter.tools, stage="int8")
                          for tool in ("ncnn2table", "ncnn2int8")],
                         versions["ncnn"], __version__)
            if not ctx.reuse(key):
                quantize_int8(ctx, calibration)


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
