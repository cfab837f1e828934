"""Several input shapes (`inputs[].shapes`): the one converted model verified at every listed shape
against onnxruntime, and a shape it cannot take converted on its own where the config allows it.

The model is converted once, at the config's `shape`. pnnx is also given the last listed shape
(`inputshape2`) when the graph it converts has inputs of unfixed size (`export.dynamic_axes`, or
an ONNX model with named dimensions): it then writes Reshapes and the like in terms of the input's
size. ncnn runs a model at any shape its layers allow; a .param that fixes a size (a Reshape to
16 tokens, a 16-row constant) does not run, or gives other numbers, at another one. Such a shape
is said so and, with `converter.separate_shapes: true`, converted on its own, by a whole run into
`shape_<dims>/` in the artifact folder.

The reference at each shape is the export on onnxruntime: the export itself where it takes that
shape, else the same model exported at it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from collections.abc import Callable

import numpy as np
import onnx
from rich.console import Console
from rich.markup import escape

from deploykit import __version__
from deploykit.core.artifacts import sha256
from deploykit.core.cache import digest
from deploykit.core.config import Config
from deploykit.core.errors import ConfigError, DeployError, StageError
from deploykit.core.inputs import make_inputs
from deploykit.core.parity import compare_outputs, run_onnx
from deploykit.ncnn.runtime import run_ncnn
from deploykit.stages.context import RunContext
from deploykit.stages.quantize import reference_model_file
from deploykit.stages.stage import Stage, StageResult, config_inputs_key

STAGE = "shapes"
ShapeSet = dict[str, list[int]]


@dataclass
class ShapesResult(StageResult):
    needs_own_conversion: Optional[list[dict]] = None  # the shapes the one model does not serve, and why
    shapes: Optional[list[dict]] = None  # every shape verified: inputs, model, converted (once, separately)
    summary: Optional[str] = None

    def headline(self) -> list[str]:
        return [escape(self.summary)] if self.summary else []


class ShapesStage(Stage):
    """inputs[].shapes: the shipped model verified at every listed shape (a shape it cannot take
    converted on its own, by a whole run)."""

    name = STAGE
    result_type = ShapesResult

    def title(self, ctx: RunContext) -> str:
        return "verifying at every listed shape"

    def applies(self, ctx: RunContext) -> bool:
        return len(shape_sets(ctx.config, ctx.inputs)) > 1

    def key(self, ctx: RunContext) -> str:
        return digest("shapes", sha256(ctx.converted.param), sha256(ctx.converted.bin),
                      ctx.config.model_dump(mode="json"), config_inputs_key(ctx), ctx.versions, __version__)

    def run(self, ctx: RunContext) -> None:
        if ctx.run_separately is None:
            raise RuntimeError("the shapes stage needs RunContext.run_separately (set by the pipeline)")
        verify_shapes(ctx, ctx.run_separately)


SHAPES = ShapesStage()


def shape_sets(config: Config, inputs: dict[str, np.ndarray]) -> list[ShapeSet]:
    """Every set of input shapes the model is verified at, the one it is converted at first."""
    listed = {s.name: s.listed_shapes(list(inputs[s.name].shape)) for s in config.inputs if s.shapes is not None}
    count = max((len(shapes) for shapes in listed.values()), default=1)
    return [{s.name: listed[s.name][k] if s.name in listed else list(inputs[s.name].shape) for s in config.inputs}
            for k in range(count)]


def describe(shapes: ShapeSet) -> str:
    return ", ".join(f"{name} {shape}" for name, shape in shapes.items())


def folder_name(shapes: ShapeSet) -> str:
    return "shape_" + "_".join("x".join(map(str, shape)) for shape in shapes.values())


def unfixed_inputs(model: onnx.ModelProto) -> list[str]:
    """The graph inputs with a dimension of no fixed size."""
    initializers = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers
            and any(not dim.HasField("dim_value") for dim in value.type.tensor_type.shape.dim)]


def pnnx_second_shape(ctx: RunContext) -> list[str]:
    """`inputshape2=` for pnnx when the graph can take the other listed shapes, else nothing."""
    sets = shape_sets(ctx.config, ctx.inputs)
    if ctx.config.converter.name != "pnnx" or len(sets) < 2 or not unfixed_inputs(ctx.model):
        return []
    from deploykit.ncnn.converters.pnnx import shape_arg

    values = inputs_at(ctx, sets[-1], len(sets) - 1)
    feeds = ctx.feeds_for(values)
    return ["inputshape2=" + ",".join(shape_arg(array) for array in feeds.values())]


def inputs_at(ctx: RunContext, shapes: ShapeSet, index: int) -> dict[str, np.ndarray]:
    """Inputs of these shapes: the config's own where the shape is theirs, else made like them."""
    values = {}
    for spec in ctx.config.inputs:
        own = ctx.inputs[spec.name]
        if list(own.shape) == shapes[spec.name]:
            values[spec.name] = own
            continue
        made = spec.model_copy(update={"data": None, "file": None, "shape": shapes[spec.name], "shapes": None})
        seed = int(np.random.SeedSequence([ctx.config.seed, index, 0x5A]).generate_state(1)[0])
        values[spec.name] = make_inputs([made], seed)[spec.name]
    return values


RunSeparately = Callable[[Config, Optional[Path], Console], tuple[int, dict]]


def verify_shapes(ctx: RunContext, run_separately: RunSeparately) -> None:
    """Run the shipped model at every listed shape; convert the shapes it cannot take on their own
    with `run_separately(config, folder)` (the pipeline's `run`) when the config allows it."""
    sets = shape_sets(ctx.config, ctx.inputs)
    conversion = ctx.converted
    settings = ctx.config.parity.for_fp16() if ctx.config.converter.fp16 else ctx.config.parity
    checked = next(r for r in ctx.reporter.stages if r.name == "verify").parity
    assert checked is not None  # verify passed
    verified = [{"inputs": sets[0], "model": conversion.param.name, "converted": "once", "max_abs": checked.max_abs}]
    separate: list[tuple[int, ShapeSet, str]] = []
    exporter = _ReferenceExporter(ctx)
    for index, shapes in enumerate(sets[1:], 1):
        values = inputs_at(ctx, shapes, index)
        reference = exporter.reference(values, shapes)
        feeds = ctx.feeds_for(values)
        try:
            outputs = run_ncnn(conversion.param, conversion.bin, [(b, feeds[b.onnx_name]) for b in conversion.inputs],
                               conversion.outputs, timeout=ctx.config.converter.timeout, fp16=ctx.config.converter.fp16)
        except StageError as exc:
            separate.append((index, shapes, f"ncnn cannot run it there: {exc.message}"))
            continue
        parity = compare_outputs(reference, outputs, settings, against=f"the export at {describe(shapes)} (on ncnn)")
        if parity.passed:
            verified.append({"inputs": shapes, "model": conversion.param.name, "converted": "once",
                             "max_abs": parity.max_abs})
        else:
            separate.append((index, shapes, "its outputs differ there: "
                             + "; ".join(out.describe() for out in parity.failures())))
    result = ctx.result(ShapesResult)
    result.needs_own_conversion = [{"inputs": shapes, "reason": reason} for _, shapes, reason in separate]
    if separate and not ctx.config.converter.separate_shapes:
        _, shapes, reason = separate[0]
        more = f" (and {len(separate) - 1} more listed shape(s))" if len(separate) > 1 else ""
        raise StageError(f"the model converted at {describe(sets[0])} does not serve {describe(shapes)}{more}: "
                         f"{reason[:600]}. That shape needs its own conversion.", stage=STAGE,
                         hint="set converter.separate_shapes: true to convert each such shape on its own; or, with "
                              "pnnx, export with export.dynamic_axes on the axes that vary, so that one conversion "
                              "takes every shape.")
    for index, shapes, reason in separate:
        ctx.reporter.note(f"      {describe(shapes)} needs its own conversion ({reason[:120]}...): converting it")
        verified.append(_convert_separately(ctx, shapes, index, reason, run_separately))
    result.shapes = verified
    result.summary = (f"{len(verified)} shape(s) verified, {len(separate)} converted on their own" if separate
                      else f"{len(verified)} shape(s) verified with the one model")


def _convert_separately(ctx: RunContext, shapes: ShapeSet, index: int, reason: str,
                        run_separately: RunSeparately) -> dict:
    values = inputs_at(ctx, shapes, index)
    raw = ctx.config.model_dump(mode="json", by_alias=True)
    for spec in raw["inputs"]:
        spec.update(shape=shapes[spec["name"]], shapes=None, file=None, data=values[spec["name"]].tolist())
    raw["converter"]["separate_shapes"] = False
    folder = ctx.artifacts.path / folder_name(shapes)
    raw["output"] = str(folder)
    config = Config.model_validate(raw)
    try:
        _, report = run_separately(config, ctx.config_path, Console(stderr=True, quiet=True))
    except DeployError as exc:
        raise type(exc)(f"converting {describe(shapes)} on its own failed (its report: "
                        f"{folder.name}/report.json): {exc.message}", stage=STAGE, hint=exc.hint) from None
    manifest = report["artifacts"]
    prefix = folder.name + "/"
    for name in manifest:
        ctx.written.append(prefix + name)
        ctx.record.outputs_sha256[prefix + name] = sha256(folder / name)
    shipped = json.loads((folder / "deploykit.json").read_text(encoding="utf-8"))["param"]["file"]
    return {"inputs": shapes, "model": prefix + shipped, "converted": "separately", "reason": reason,
            "max_abs": report["ncnn"]["parity"]["max_abs"], "manifest": prefix + "deploykit.json"}


class _ReferenceExporter:
    """The export on onnxruntime at another shape: the export file where it takes the shape, else
    the torch model exported again at it."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.file = reference_model_file(ctx)
        from deploykit.stages.export import ExportResult

        self.exported = ctx.reporter.result("export", ExportResult)
        self.model: Optional[Any] = None

    def reference(self, values: dict[str, np.ndarray], shapes: ShapeSet) -> dict[str, np.ndarray]:
        model = onnx.load(str(self.file), load_external_data=False)
        if _takes(model, values):
            return run_onnx(self.file, {**self.ctx.feeds_for(values), **values}, stage=STAGE)
        if self.exported is None:  # an ONNX model of fixed sizes: nothing to export again
            declared = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                        for v in model.graph.input if v.name in values}
            raise ConfigError(f"the model {self.file.name} takes {declared} only, so it cannot take "
                              f"{describe(shapes)} (inputs[].shapes).", stage=STAGE,
                              hint="list shapes the model takes, or give it named (dynamic) dimensions.")
        return self._export_at(values, shapes)

    def _export_at(self, values: dict[str, np.ndarray], shapes: ShapeSet) -> dict[str, np.ndarray]:
        import torch

        from deploykit.stages.export import write_export

        config = self.ctx.config
        if self.model is None:
            self.model = self.ctx.torch_model()[0]
        args = tuple(torch.from_numpy(values[spec.name]) for spec in config.inputs)
        try:
            with torch.no_grad():
                self.model(*args)
        except Exception as exc:
            raise ConfigError(f"the model cannot take {describe(shapes)} (inputs[].shapes): "
                              f"{type(exc).__name__}: {str(exc)[:300]}", stage=STAGE,
                              hint="list only shapes the model's forward() takes.") from None
        names = [out.name for out in onnx.load(str(self.file), load_external_data=False).graph.output]
        assert self.exported is not None  # reference() exports again only what was exported
        exported = self.exported
        with self.ctx.artifacts.scratch() as scratch:
            path = Path(scratch) / "export.onnx"
            try:
                with warnings.catch_warnings():  # the export stage already reported what the exporter warns of
                    warnings.simplefilter("ignore")
                    write_export(self.model, args, path, config, names,
                                 exporter=exported.exporter or config.export.exporter,
                                 opset=exported.opset if exported.opset is not None else config.export.opset)
            except Exception as exc:
                raise StageError(f"exporting the model at {describe(shapes)} failed: {type(exc).__name__}: "
                                 f"{str(exc)[:300]}", stage=STAGE,
                                 hint="list only shapes the model exports at.") from None
            return run_onnx(path, values, stage=STAGE)


def _takes(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> bool:
    for value in model.graph.input:
        if value.name not in values:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = values[value.name].shape
        if len(dims) != len(shape) or any(d.HasField("dim_value") and d.dim_value != n for d, n in zip(dims, shape)):
            return False
    return True
