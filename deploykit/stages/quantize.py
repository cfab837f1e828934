"""int8: ncnn2table calibrates the verified model, ncnn2int8 writes the int8 model, and ncnn runs it
with int8 inference on, judged under `parity.int8` on inputs held back from calibration.

The reference is the one every check uses, the export (or the cut head) on onnxruntime; the
accuracy cost is the int8 model against the fp32 model it was made from, on ncnn, on the
calibration samples and on the held-back ones.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np
from rich.markup import escape

from deploykit import __version__
from deploykit.core.artifacts import sha256
from deploykit.core.cache import arrays_digest, digest
from deploykit.core.errors import ConfigError, ParityError, StageError
from deploykit.core.parity import StageParity, compare_outputs, run_onnx
from deploykit.ncnn.calibration import (GENERATED_WARNING, STAGE, CalibrationSet, Sample, load_calibration,
                                        write_ncnn2table_lists)
from deploykit.ncnn.converters.base import Blob, Conversion
from deploykit.ncnn.runtime import read_param_layers, run_ncnn
from deploykit.ncnn.tools import find_tool, run_ncnn_tool, tool_digest
from deploykit.stages.context import RunContext
from deploykit.stages.stage import Stage, StageResult

PARAM, BIN, TABLE, LOG = "model.int8.param", "model.int8.bin", "model.int8.table", "calibrate.log"
MAX_COST_SAMPLES = 16  # calibration samples the accuracy cost is measured on (each is one ncnn run per model)


@dataclasses.dataclass
class Int8Result(StageResult):
    method: Optional[str] = None  # ncnn2table's
    calibration: Optional[dict] = None  # source, samples, held_back, files
    quantized_layers: Optional[list] = None
    table: Optional[str] = None
    files: Optional[dict[str, dict]] = None  # sha256, bytes
    size_ratio: Optional[float] = None  # of the fp32 .bin to the int8 one
    int8_cost: Optional[dict] = None  # against the fp32 model, on the held-back and calibration samples
    summary: Optional[str] = None

    def headline(self) -> list[str]:
        return [escape(self.summary)] if self.summary else []


class Int8Stage(Stage):
    """quantize.int8: ncnn2table and ncnn2int8 -> model.int8.param/.bin, judged under parity.int8."""

    name = STAGE
    result_type = Int8Result

    def title(self, ctx: RunContext) -> str:
        return "quantizing to int8"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.quantize.int8

    def key(self, ctx: RunContext) -> str:
        config = ctx.config
        calibration = calibration_set(ctx)
        tools = [tool_digest(tool, config.converter.tools, stage=self.name) for tool in ("ncnn2table", "ncnn2int8")]
        return digest("int8", sha256(ctx.converted.param), sha256(ctx.converted.bin), config.quantize,
                      config.parity.int8, [arrays_digest(s) for s in calibration.samples + calibration.held_back],
                      tools, ctx.versions["ncnn"], __version__)

    def run(self, ctx: RunContext) -> None:
        quantize_int8(ctx, calibration_set(ctx))


INT8 = Int8Stage()


def calibration_set(ctx: RunContext) -> CalibrationSet:
    """The samples quantize.calibration gives, read once a run: the key hashes them, the run uses them."""
    config = ctx.config
    assert config.quantize.calibration is not None  # the config's validator: int8 needs calibration
    if ctx.calibration is None:
        ctx.calibration = load_calibration(config.quantize.calibration, config.inputs,
                                           {spec.name: ctx.inputs[spec.name] for spec in config.inputs}, config.seed)
    return ctx.calibration


def quantize_int8(ctx: RunContext, calibration: CalibrationSet) -> None:
    section, converter = ctx.config.quantize, ctx.config.converter
    fp32 = ctx.converted
    if not calibration.samples:
        raise ConfigError("quantize.calibration gives no sample to calibrate on.", stage=STAGE,
                          hint="add samples, or lower quantize.calibration.held_back.")
    if calibration.source == "generate":
        ctx.reporter.warn(GENERATED_WARNING)
    table_tool = find_tool("ncnn2table", converter.tools, stage=STAGE)
    int8_tool = find_tool("ncnn2int8", converter.tools, stage=STAGE)
    blobs = _input_blobs(fp32)
    param, weights = str(fp32.param.resolve()), str(fp32.bin.resolve())  # the tools run in a scratch folder
    with ctx.artifacts.scratch() as scratch:
        work = Path(scratch)
        feeds = [ctx.feeds_for(sample) for sample in calibration.samples]
        lists, shapes = write_ncnn2table_lists([{b.onnx_name: f[b.onnx_name] for b in blobs} for f in feeds],
                                               blobs, work)
        threads = max(1, min(4, os.cpu_count() or 1))
        try:
            run_ncnn_tool([str(table_tool), param, weights, ",".join(lists), TABLE,
                           f"shape={','.join(shapes)}", f"method={section.method}", "type=1", f"thread={threads}"],
                          cwd=work, timeout=converter.timeout, log=work / "table.log", stage=STAGE)
            _check_written(work, [TABLE], "ncnn2table", work / "table.log")
            run_ncnn_tool([str(int8_tool), param, weights, PARAM, BIN, TABLE], cwd=work,
                          timeout=converter.timeout, log=work / "int8.log", stage=STAGE)
            _check_written(work, [PARAM, BIN], "ncnn2int8", work / "int8.log")
        finally:
            text = "\n".join(p.read_text(encoding="utf-8") for p in (work / "table.log", work / "int8.log")
                             if p.is_file())
            ctx.wrote(ctx.artifacts.write_text(LOG, text))
        for name in (TABLE, PARAM, BIN):
            ctx.wrote(ctx.artifacts.move_in(work / name, name))
    int8 = dataclasses.replace(fp32, param=ctx.artifacts.file(PARAM), bin=ctx.artifacts.file(BIN))
    quantized = quantized_layers(fp32.param, int8.param)
    record = ctx.record
    record.artifact = PARAM
    result = ctx.result(Int8Result)
    result.method = section.method
    result.calibration = {"source": calibration.source, "samples": len(calibration.samples),
                          "held_back": len(calibration.held_back), "files": calibration.files}
    result.quantized_layers, result.table = quantized, TABLE
    result.files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in (int8.param, int8.bin)}
    result.size_ratio = fp32.bin.stat().st_size / max(1, int8.bin.stat().st_size)
    if not quantized:
        ctx.reporter.warn(f"ncnn2int8 quantized no layer of {fp32.param.name} (it quantizes Convolution, "
                          f"ConvolutionDepthWise, InnerProduct, Gemm, Embed...): the int8 model is the fp32 one.")
    # Judged on inputs ncnn2table did not see: the config's own, and the held-back samples.
    judged = [{spec.name: ctx.inputs[spec.name] for spec in ctx.config.inputs}, *calibration.held_back]
    held = _evaluate(ctx, fp32, int8, judged)
    calibrated = _evaluate(ctx, fp32, int8, calibration.samples[:MAX_COST_SAMPLES])
    result.int8_cost = {"held_back": held.cost, "calibration": calibrated.cost,
                        "note": "int8 against the fp32 model it was made from, both on ncnn"}
    result.summary = (f"{len(quantized)} layer(s) quantized, {result.size_ratio:.1f}x smaller, "
                      f"cosine vs fp32 {_worst(held.cost):.5f} on {len(judged)} held-back input(s)")
    record.parity = held.verdict
    if not held.verdict.passed:
        details = "; ".join(out.describe() for out in held.verdict.failures())
        raise ParityError(f"the int8 model differs from the export beyond parity.int8 on the held-back inputs: "
                          f"{details}.", stage=STAGE,
                          hint="calibrate on more (and real) data, try quantize.method: aciq or eq, loosen "
                               "parity.int8 if the cost is acceptable, or set quantize.int8: false.")


@dataclasses.dataclass
class _Evaluation:
    verdict: StageParity  # int8 against the reference, every sample's outputs joined
    cost: dict  # per output: int8 against fp32


def _evaluate(ctx: RunContext, fp32: Conversion, int8: Conversion, samples: list[Sample]) -> _Evaluation:
    timeout = ctx.config.converter.timeout
    reference_model = reference_model_file(ctx)
    joined: dict[str, dict[str, list[np.ndarray]]] = {"reference": {}, "fp32": {}, "int8": {}}
    for sample in samples:
        feeds = ctx.feeds_for(sample)
        fed = [(b, feeds[b.onnx_name]) for b in fp32.inputs]
        # The reference model takes the config's own values where it has their inputs, else the computed ones.
        got = {"reference": run_onnx(reference_model, {**feeds, **sample}, stage=STAGE),
               "fp32": run_ncnn(fp32.param, fp32.bin, fed, fp32.outputs, timeout=timeout),
               "int8": run_ncnn(int8.param, int8.bin, fed, int8.outputs, timeout=timeout, int8=True)}
        for kind, outputs in got.items():
            for blob in fp32.outputs:
                joined[kind].setdefault(blob.onnx_name, []).append(np.asarray(outputs[blob.onnx_name]).ravel())
    flat = {kind: {name: np.concatenate(parts) for name, parts in outputs.items()} for kind, outputs in joined.items()}
    settings = ctx.config.parity.for_int8()
    verdict = compare_outputs(flat["reference"], flat["int8"], settings, against="the export (on ncnn, int8)")
    cost = compare_outputs(flat["fp32"], flat["int8"], settings, against="the fp32 model (on ncnn)")
    per_sample = {name: [_cosine(a, b) for a, b in zip(joined["fp32"][name], joined["int8"][name])]
                  for name in joined["fp32"]}
    return _Evaluation(verdict, {out.name: {"samples": len(samples), "cosine": out.cosine,
                                            "worst_sample_cosine": min(per_sample[out.name]),
                                            "max_abs": out.max_abs, "mean_abs": out.mean_abs}
                                 for out in cost.outputs})


def _worst(cost: dict) -> float:
    return min(entry["worst_sample_cosine"] for entry in cost.values())


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))


def reference_model_file(ctx: RunContext) -> Path:
    """The export (or import), or with cut_at the head the ncnn model stands for."""
    for name in ("cut", "export", "import"):
        artifact = next((r.artifact for r in ctx.reporter.stages if r.name == name and r.artifact), None)
        if artifact is not None:
            return ctx.artifacts.file(artifact)
    raise StageError("no ONNX model to take the reference from.", stage=STAGE)


def _input_blobs(conversion: Conversion) -> list[Blob]:
    """The model's inputs in the order of its Input layers, the order ncnn2table takes their lists in."""
    by_blob = {b.blob: b for b in conversion.inputs}
    order = [tops[0] for kind, _, _, tops in read_param_layers(conversion.param) if kind == "Input" and tops]
    unknown = [blob for blob in order if blob not in by_blob]
    if unknown:
        raise StageError(f"{conversion.param.name} has Input layer(s) {', '.join(unknown)} that no model input is "
                         "fed to; ncnn2table would need values for them.", stage=STAGE)
    return [by_blob[blob] for blob in order]


def _check_written(folder: Path, names: list[str], tool: str, log: Path) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        said = " | ".join(log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]) \
            if log.is_file() else ""
        raise StageError(f"{tool} exited without writing {', '.join(missing)}: {said}", stage=STAGE,
                         hint=f"the full output is in {LOG}.")


def quantized_layers(fp32_param: Path, int8_param: Path) -> list[dict[str, str]]:
    """The layers ncnn2int8 changed (their parameters now name int8 weights and scales)."""
    before = {name: line for name, line in _layer_lines(fp32_param)}
    return [{"name": name, "type": line.split()[0]} for name, line in _layer_lines(int8_param)
            if before.get(name) != line]


def _layer_lines(param: Path) -> list[tuple[str, str]]:
    lines = param.read_text(encoding="utf-8").split("\n")[2:]
    return [(line.split()[1], " ".join(line.split())) for line in lines if len(line.split()) >= 4]


def int8_summary(stages: list) -> Optional[dict]:
    """What the manifest says of the int8 model, from the int8 stage's record, when it verified."""
    record = next((s for s in stages if s.name == STAGE and s.status == "ok"), None)
    if record is None or not isinstance(record.result, Int8Result):
        return None
    result = record.result
    return {"param": PARAM, "bin": BIN, "table": result.table, "method": result.method,
            "quantized_layers": result.quantized_layers, "cost_vs_fp32": result.int8_cost,
            "verified": {"metric": record.parity.outputs[0].metric if record.parity else None,
                         "min_cosine": min(o.cosine for o in record.parity.outputs) if record.parity else None},
            "note": "load with net.opt.use_int8_inference = true (ncnn's default)"}
