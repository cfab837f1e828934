"""The verdict: run the .param/.bin on the ncnn runtime and compare with the ONNX reference."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Optional

import numpy as np

from deploykit import __version__
from deploykit.core.artifacts import read_arrays, sha256
from deploykit.core.cache import arrays_digest, digest
from deploykit.core.config import DIAGNOSE_RUN_SHARE, ParitySection
from deploykit.core.errors import ConfigError, DeployError, ParityError, StageError, shorten
from deploykit.core.parity import StageParity, compare_outputs
from deploykit.core.report import StageRecord
from deploykit.ncnn.converters.base import Blob
from deploykit.ncnn.judge import convert_and_run
from deploykit.ncnn.runtime import run_ncnn
from deploykit.onnx.host_lookup import run_host_inputs
from deploykit.stages.context import RunContext
from deploykit.stages.convert import ConvertResult
from deploykit.stages.optimize import blame_optimize
from deploykit.stages.stage import Stage, StageResult
from deploykit.tools.bisect import find_culprit_pass, stage_that_wrote
from deploykit.tools.diagnose import Budget, OutOfBudget, first_divergence_ncnn


@dataclass
class VerifyResult(StageResult):
    ncnn_options: Optional[dict] = None  # the options the verdict is reached with, repeated in deploykit.json
    fp16_cost: Optional[dict] = None  # with converter.fp16: each output against the same graph in fp32
    divergence: Optional[dict] = None  # where ncnn first differs (deploykit/tools/diagnose.py)
    culprit: Optional[dict] = None  # the pass (deploykit/tools/bisect.py) or ncnnoptimize that made it differ
    diagnosis_seconds: Optional[float] = None  # of a diagnosis made after the run's other attempts

    def ran(self) -> list[str]:
        if not self.ncnn_options:
            return []
        return ["ncnn " + ", ".join(f"{key}={value}" for key, value in self.ncnn_options.items())]


class VerifyStage(Stage):
    """The verdict: the model on the ncnn runtime against the reference; a mismatch is diagnosed."""

    name = "verify"
    result_type = VerifyResult

    def title(self, ctx: RunContext) -> str:
        return "running on the ncnn runtime"

    def key(self, ctx: RunContext) -> str:
        files = [sha256(ctx.converted.param), sha256(ctx.converted.bin)]
        # What ncnn is fed: inputs a pass moved to the host change with their tables, not the .param/.bin.
        return digest("verify", files, arrays_digest(ctx.ordered_inputs()), ctx.config.parity, ctx.versions["ncnn"],
                      __version__)

    def run(self, ctx: RunContext) -> None:
        verify(ctx)


VERIFY = VerifyStage()


def verify(ctx: RunContext) -> None:
    conversion = ctx.converted
    inputs = ctx.ordered_inputs()
    feeds = [(blob, inputs[blob.onnx_name]) for blob in conversion.inputs]
    fp16 = ctx.config.converter.fp16
    outputs = run_ncnn(conversion.param, conversion.bin, feeds, conversion.outputs,
                       timeout=ctx.config.converter.timeout, fp16=fp16)
    ctx.record.artifact = conversion.param.name
    # the options the verdict is reached with, as run_ncnn sets them; deploykit.json repeats them for the app
    result = ctx.result(VerifyResult)
    result.ncnn_options = {"use_fp16_storage": fp16, "use_fp16_arithmetic": fp16, "use_fp16_packed": fp16,
                           "use_bf16_storage": False, "num_threads": 1, "light_mode": True}
    if fp16:
        result.fp16_cost = fp16_cost(ctx, outputs)
    settings = ctx.config.parity.for_fp16() if fp16 else ctx.config.parity
    try:
        ctx.check_parity(outputs, against=f"the export (on ncnn{', fp16' if fp16 else ''})", settings=settings)
    except ParityError as error:
        if ctx.diagnosis == "now":
            explain_mismatch(ctx, error, settings, fp16)
        if ctx.diagnosis == "later":  # for when no variation of the run verifies (deploykit/variations.py)
            ctx.deferred_diagnosis = functools.partial(_explain_later, ctx, ctx.record, error, settings, fp16)
        raise


def explain_mismatch(ctx: RunContext, error: ParityError, settings: ParitySection, fp16: bool) -> NoReturn:
    """Where ncnn went wrong, then after which pass: together within parity.diagnose_budget; raises
    `error` with what was found."""
    conversion, inputs, result = ctx.converted, ctx.ordered_inputs(), ctx.result(VerifyResult)
    budget = diagnosis_budget(ctx)
    error, result.divergence = ctx.diagnose(error, lambda: first_divergence_ncnn(
        ctx.model, conversion.param, conversion.bin, inputs, conversion.inputs, ctx.config.parity,
        timeout=ctx.config.converter.timeout, budget=budget))
    blamed, culprit = blame_optimize(ctx, error, settings, fp16=fp16)
    if culprit is not None:
        result.culprit = culprit
    if blamed is not None:
        raise blamed
    error = blame_pass(ctx, error, budget)
    if budget.exhausted() or _stopped(result):
        error.message += " " + how_to_go_further(ctx, budget)
    raise error


def _explain_later(ctx: RunContext, record: StageRecord, error: ParityError, settings: ParitySection,
                   fp16: bool) -> NoReturn:
    """explain_mismatch after the run's other attempts, its time counted in the verify stage's."""
    ctx.record, started = record, time.perf_counter()
    try:
        explain_mismatch(ctx, error, settings, fp16)
    except DeployError as explained:
        record.error = shorten(str(explained))
        raise
    finally:
        seconds = round(time.perf_counter() - started, 3)
        ctx.result(VerifyResult).diagnosis_seconds = seconds
        record.seconds += seconds


def diagnosis_budget(ctx: RunContext) -> Budget:
    """parity.diagnose_budget for this run: a factor is of the conversion's own time (of the run
    that converted, when the conversion was reused), and gives at least half the run's time so far."""
    convert = next((r for r in ctx.reporter.stages if r.name == "convert"), None)
    seconds = 0.0
    if convert is not None:
        own = convert.result.converter_seconds if isinstance(convert.result, ConvertResult) else None
        seconds = own or convert.seconds
    run = sum(record.seconds for record in ctx.reporter.stages if record is not ctx.record)
    setting = ctx.config.parity.diagnose_budget
    how = (f"parity.diagnose_budget: {setting} the conversion's {seconds:.3g} s, or {DIAGNOSE_RUN_SHARE:g}x the "
           f"{run:.3g} s the run took until verify if more" if isinstance(setting, str)
           else f"parity.diagnose_budget: {setting:g}")
    return Budget(ctx.config.parity.diagnose_seconds(seconds, run), how)


def _stopped(result: VerifyResult) -> bool:
    return any((found or {}).get("stopped") is True for found in (result.divergence, result.culprit))


def how_to_go_further(ctx: RunContext, budget: Budget) -> str:
    # with converter.source: torchscript, the converter was given a trace: the export is the graph to reduce
    onnx_file = ctx.model_file
    if onnx_file.suffix != ".onnx":
        export = ctx.reporter.stages[0].artifact
        assert export is not None, "the export stage wrote no file"
        onnx_file = ctx.artifacts.file(export)
    return (f"The diagnosis stopped at its budget of {budget.describe()}. To go further, shrink the model to a "
            f"small failing case with `deploykit reduce "
            f"{onnx_file} -o reduced`, or give the diagnosis more time: "
            f"`--set parity.diagnose_budget=4x` (a factor of the conversion's time) or a number of seconds.")


def blame_pass(ctx: RunContext, error: ParityError, budget: Budget) -> ParityError:
    """Every ONNX stage matched on onnxruntime, yet ncnn differs: convert the earlier stage files
    and bisect for the pass after which ncnn first goes wrong (deploykit/tools/bisect.py)."""
    stages, seen = [], set()
    for record in ctx.reporter.stages:
        artifact = record.artifact or ""
        if record.name in ("import", "export") or not artifact.endswith(".onnx") or artifact in seen:
            continue
        seen.add(artifact)
        stages.append((record.name, ctx.artifacts.file(artifact)))
    if not ctx.config.parity.bisect or len(stages) < 2 or stages[-1][1] != ctx.model_file:
        return error  # nothing to bisect: the graph ncnn got is the first one checked
    result = ctx.result(VerifyResult)
    if budget.exhausted():
        result.culprit = OutOfBudget("pass bisection", "not started", budget.describe()).to_dict()
        error.message += " The pass bisection did not run."
        return error
    suspect = (result.divergence or {}).get("node") or None
    if suspect and stage_that_wrote(stages, suspect) == 0:
        # No pass wrote the node where ncnn first differs: converting earlier stages cannot blame one.
        reason = (f"no pass changed {suspect!r}, the node where ncnn first differs ({stages[0][1].name} already "
                  f"has it as the last stage does), so the converter or the ncnn runtime gets that node wrong")
        result.culprit = {"skipped": reason}
        error.message += f" The pass bisection was skipped: {reason}."
        return error
    section = ctx.config.converter
    settings = ctx.config.parity.for_fp16() if section.fp16 else ctx.config.parity
    failed = ctx.record.parity
    assert failed is not None  # the check that just failed
    last_differs = "; ".join(out.describe() for out in failed.failures())
    with ctx.artifacts.scratch() as scratch:
        error, culprit = ctx.diagnose(error, lambda: find_culprit_pass(
            stages, ctx.inputs, ctx.expected, settings, converter=section, timeout=section.timeout,
            workdir=Path(scratch), last_differs=last_differs, suspect=suspect, budget=budget), lead="")
    if culprit is not None:
        result.culprit = culprit
    return error


def fp16_cost(ctx: RunContext, fp16_outputs: dict[str, np.ndarray]) -> dict:
    """What fp16 costs: the same graph converted with fp32 weights and run with fp16 off, next to
    the fp16 model run with fp16 on, each against the reference."""
    section = ctx.config.converter
    with ctx.artifacts.scratch() as scratch:
        fp32 = convert_and_run(ctx.model_file, ctx.ordered_inputs(), section, Path(scratch), timeout=section.timeout,
                               fp16=False, loaded=ctx.model)
    if fp32.outputs is None:
        raise StageError(f"the fp32 conversion that fp16's cost is measured against failed: {fp32.why_not()}",
                         stage="verify", hint="the fp16 model verified; turn converter.fp16 off to see why "
                                              "the same graph fails in fp32.")
    fp32_outputs = fp32.outputs
    baseline = compare_outputs(ctx.expected, fp32_outputs, ctx.config.parity, against="the export (ncnn, fp32)")
    measured = compare_outputs(ctx.expected, fp16_outputs, ctx.config.parity.for_fp16(),
                               against="the export (ncnn, fp16)")
    return {out16.name: {"max_abs_fp16": out16.max_abs, "max_abs_fp32": out32.max_abs,
                         "cosine_fp16": out16.cosine, "cosine_fp32": out32.cosine}
            for out16, out32 in zip(measured.outputs, baseline.outputs)}


@dataclass
class SavedRun:
    """What a run's artifact folder holds for checking or timing its model again without torch."""

    folder: Path
    report: dict
    param: Path
    bin: Path
    inputs: list[Blob]
    outputs: list[Blob]
    feeds: list[tuple[Blob, np.ndarray]]  # the saved inputs, as the run fed them to ncnn
    onnx_feeds: dict[str, np.ndarray]  # the same, by ONNX input name
    reference: Path  # reference.npz
    settings: ParitySection  # as the run judged its model (fp16 tolerances for an fp16 model)
    fp16: bool


def saved_run(folder: Path, *, stage: str = "verify") -> SavedRun:
    """Read a run's report, inputs and blob names; a folder whose report or inputs are missing or
    damaged is a ConfigError that names the file."""
    report_path = folder / "report.json"
    if not folder.is_dir():
        raise ConfigError(f"{folder} does not exist or is not a folder.", stage=stage,
                          hint="pass the artifact folder a run wrote (its `output:`).")
    if not report_path.is_file():
        raise ConfigError(f"{folder} has no report.json; it is not an artifact folder of `deploykit run`.",
                          stage=stage, hint="pass the folder a run wrote (its `output:`).")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        goldens, ncnn = report.get("goldens"), report.get("ncnn")
        if goldens and ncnn:
            blobs_in = [Blob(**b) for b in ncnn["inputs"]]
            blobs_out = [Blob(**b) for b in ncnn["outputs"]]
            dtypes = dict(ncnn.get("input_dtypes", {}))
            settings = ParitySection.model_validate(report["config"]["parity"])
            fp16 = bool(report["config"]["converter"].get("fp16"))
            files = {"param": folder / ncnn["param"], "bin": folder / ncnn["bin"],
                     "inputs": folder / goldens["inputs"], "reference": folder / goldens["reference"]}
            stages = list(report["stages"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{report_path} is not a report `deploykit run` wrote, or it is damaged "
                          f"({type(exc).__name__}: {shorten(str(exc), 200)}).", stage=stage,
                          hint="run `deploykit run` into that folder again to write it anew.") from None
    if not goldens or not ncnn:
        raise ConfigError(f"{report_path} records no saved inputs or no ncnn model: that run stopped before "
                          f"{'the export' if not goldens else 'the conversion'}.", stage=stage,
                          hint="re-run `deploykit run` until it converts.")
    inputs = read_arrays(files["inputs"], stage=stage)
    # inputs the app computes on the host, from tables the run saved
    inputs.update(run_host_inputs(stages, folder, inputs, stage=stage))
    missing = [b.onnx_name for b in blobs_in if b.onnx_name not in inputs]
    if missing:
        raise ConfigError(f"{files['inputs']} has no array for the model input(s) {', '.join(map(repr, missing))}.",
                          stage=stage, hint="run `deploykit run` into that folder again to write it anew.")
    onnx_feeds = {b.onnx_name: inputs[b.onnx_name].astype(dtypes.get(b.onnx_name, inputs[b.onnx_name].dtype))
                  for b in blobs_in}
    return SavedRun(folder=folder, report=report, param=files["param"], bin=files["bin"], inputs=blobs_in,
                    outputs=blobs_out, feeds=[(b, onnx_feeds[b.onnx_name]) for b in blobs_in], onnx_feeds=onnx_feeds,
                    reference=files["reference"], settings=settings.for_fp16() if fp16 else settings, fp16=fp16)


def reverify(folder: Path, *, param: Optional[Path] = None, weights: Optional[Path] = None,
             fp16: bool = False) -> StageParity:
    """Check a .param/.bin against the inputs and reference outputs a run saved, without torch.

    For a model edited by hand after the run, or to see what ncnn's fp16 mode costs. A run made
    with fp16, and a check with `fp16`, are judged under parity.fp16, as the run judged it. A
    relative `param` or `weights` is looked for in the artifact folder first, then in the working
    directory.
    """
    run = saved_run(folder)
    param = _given_file(folder, param, "--param") or run.param
    weights = _given_file(folder, weights, "--bin") or run.bin
    for path in (param, weights):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist.", stage="verify")
    reference = read_arrays(run.reference, stage="verify")
    fp16 = fp16 or run.fp16
    settings = run.settings if run.fp16 or not fp16 else run.settings.for_fp16()
    outputs = run_ncnn(param, weights, run.feeds, run.outputs, fp16=fp16)
    return compare_outputs(reference, outputs, settings,
                           against=f"the saved reference (on ncnn{', fp16' if fp16 else ''})")


def _given_file(folder: Path, path: Optional[Path], option: str) -> Optional[Path]:
    """A file named by --param/--bin: a relative path in the artifact folder where it is there,
    else from the working directory; neither is a ConfigError naming both places."""
    if path is None or path.is_absolute():
        return path
    for candidate in (folder / path, path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{option} {path}: neither {folder / path} nor {Path.cwd() / path} exists.", stage="verify",
                      hint=f"{option} is looked for in the artifact folder, then in the working directory.")
