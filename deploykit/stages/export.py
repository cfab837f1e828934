"""The first stage: export the PyTorch model to ONNX, or import the user's ONNX file; and, with
converter.source: torchscript, the trace pnnx converts instead of the ONNX graph."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from collections.abc import Callable, Iterator

import numpy as np
import onnx

from deploykit import __version__
from deploykit.core.artifacts import sha256
from deploykit.core.cache import digest
from deploykit.core.config import MAX_OPSET, Config, ModelSection
from deploykit.core.errors import ConfigError, DeployError, StageError, shorten, user_code
from deploykit.core.parity import run_onnx
from deploykit.onnx.onnx_io import load_onnx, save_onnx
from deploykit.stages.context import RunContext
from deploykit.stages.simplify import start_simplifier, submit_model
from deploykit.stages.stage import Stage, StageResult, config_inputs_key

if TYPE_CHECKING:
    from deploykit.tools.lint import ModelLint

# torch: "... opset version 13 is not supported. Support for this operator was added in version 14, ..."
_NEEDS_OPSET = re.compile(r"added in (?:opset )?version (\d+)")
_UNSUPPORTED_OP = re.compile(r"Exporting the operator '([\w:.]+)' to ONNX opset version \d+ is not supported")


class ImportStage(Stage):
    """model.onnx: the user's graph, checked and copied; its outputs on onnxruntime are the reference."""

    name = "import"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.model.onnx is not None

    def key(self, ctx: RunContext) -> str:
        config = ctx.config
        assert config.model.onnx is not None  # applies()
        return digest("import", sha256(config.model.onnx), config_inputs_key(ctx), config.parity,
                      ctx.versions["onnx"], __version__)

    def run(self, ctx: RunContext) -> None:
        start_simplifier(ctx)  # onnxsim's import passes while the model is checked
        import_onnx(ctx)
        submit_model(ctx)
        ctx.reference = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage=self.name)

    def restore(self, ctx: RunContext, result: Any) -> None:
        ctx.reference = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage=self.name)


@dataclass
class ExportResult(StageResult):
    warnings: Optional[list[str]] = None  # what the exporter warned of
    exporter_output: Optional[list[str]] = None  # what it printed
    lint: Optional[list[dict]] = None  # lint's findings (deploykit/tools/lint.py)
    export_retried: Optional[list[str]] = None  # each retry at another opset or with the other exporter
    opset: Optional[int] = None  # what the export that succeeded was made with
    exporter: Optional[str] = None

    def ran(self) -> list[str]:
        lines = [] if self.exporter is None else [
            f"torch.onnx.export with the {self.exporter} exporter at opset {self.opset}"]
        return lines + [f"exporter warning: {text}" for text in self.warnings or []]


class ExportStage(Stage):
    """torch -> 00_export.onnx, checked on onnxruntime against torch; those outputs are the reference."""

    name = "export"
    result_type = ExportResult

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.model.onnx is None

    def key(self, ctx: RunContext) -> str:
        config, versions = ctx.config, ctx.versions
        _, fingerprint = ctx.torch_model()  # the model's code and weights
        return digest("export", fingerprint, config.model, config.export, config.lint, config_inputs_key(ctx),
                      config.parity, versions["torch"], versions["onnx"], __version__)

    def run(self, ctx: RunContext) -> None:
        start_simplifier(ctx)  # onnxsim's import passes while torch exports
        torch_outputs = export_torch(ctx, ctx.torch_model()[0])
        submit_model(ctx)  # and it simplifies the export while onnxruntime checks it
        onnx_outputs = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage=self.name)
        ctx.check_parity(onnx_outputs, against="torch", reference=torch_outputs)
        ctx.reference = onnx_outputs

    def restore(self, ctx: RunContext, result: ExportResult) -> None:
        ctx.reference = run_onnx(ctx.model_file, ctx.ordered_inputs(), stage=self.name)


class TraceStage(Stage):
    """converter.source: torchscript: pnnx converts a TorchScript trace of the model (01_trace.pt)."""

    name = "trace"

    def title(self, ctx: RunContext) -> str:
        return "tracing the model to TorchScript"

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.converter.source == "torchscript"

    def key(self, ctx: RunContext) -> str:
        source = IMPORT if IMPORT.applies(ctx) else EXPORT
        return digest("trace", source.key(ctx), ctx.versions["torch"], __version__)

    def run(self, ctx: RunContext) -> None:
        trace_torch(ctx, ctx.torch_model()[0])


IMPORT, EXPORT, TRACE = ImportStage(), ExportStage(), TraceStage()


def build_torch_model(section: ModelSection) -> Any:
    """Call the configured factory and load the checkpoint, with errors that say which failed.
    The user's code runs where it cannot end deploykit (errors.user_code)."""
    import torch

    assert section.factory is not None, "build_torch_model without model.factory"
    module_name, _, attr = section.factory.partition(":")
    with user_code(f"importing {module_name!r} (model.factory)", stage="export"):
        module = import_factory_module(module_name, section.factory_folder)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.factory: {module_name!r} has no callable {attr!r}.", stage="export",
                          hint=f"check the name after the colon in {section.factory!r}.")
    with user_code(f"model.factory {section.factory}", stage="export"):
        try:
            model = factory(**section.kwargs)
        except Exception as exc:
            raise ConfigError(f"model.factory: {section.factory}(**model.kwargs) raised {type(exc).__name__}: "
                              f"{shorten(str(exc))}.", stage="export",
                              hint="check model.kwargs against the factory's parameters.") from None
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model.factory: {section.factory} returned a {type(model).__name__}, not a "
                              "torch.nn.Module.", stage="export")
        if section.checkpoint is not None:
            _load_checkpoint(model, section.checkpoint)
        return model.eval()


def import_factory_module(name: str, folder: Optional[Path]) -> Any:
    """The module of `model.factory`: from `folder` (the config's) where it holds `name`'s file or
    package, else from sys.path, as a `.py` plugin is found relative to the config."""
    top = name.split(".")[0]
    local = folder is not None and ((folder / f"{top}.py").is_file() or (folder / top).is_dir())
    where = (f"looked for {top}.py or {top}/ in {folder} (model.factory_folder: the folder of the config that names "
             f"the factory, or the working directory for --factory), then on sys.path" if folder is not None
             else "looked on sys.path")
    if local and folder is not None:
        for cached in [key for key in sys.modules if key == top or key.startswith(top + ".")]:
            found = getattr(sys.modules[cached], "__file__", None) or ""
            if not Path(found).resolve().is_relative_to(folder.resolve()):
                del sys.modules[cached]  # a module of the same name from elsewhere: this config means its own
        sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise ConfigError(f"model.factory: cannot import {name!r} ({type(exc).__name__}: {shorten(str(exc))}); "
                          f"{where}.", stage="export",
                          hint=f"put {top}.py in that folder, or install its package (or add its folder to "
                               "PYTHONPATH); `model.factory_folder` names another folder.") from None
    finally:
        if local:
            sys.path.remove(str(folder))


def _load_checkpoint(model: Any, path: Path) -> None:
    import torch

    if not path.is_file():
        raise ConfigError(f"model.checkpoint: {path} does not exist.", stage="export",
                          hint="paths are relative to the YAML file that names them.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"model.checkpoint: {path} cannot be read as a state_dict ({type(exc).__name__}: "
                          f"{shorten(first, 100)}).", stage="export",
                          hint="save it with torch.save(model.state_dict(), path); a whole pickled model is not "
                               "loaded, since unpickling it could run any code.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.checkpoint: {path} holds a {type(state).__name__}, not a state_dict.",
                          stage="export", hint="save it with torch.save(model.state_dict(), path).")
    mismatch = _state_mismatch(model, state)
    if mismatch:
        raise ConfigError(f"model.checkpoint: {path} does not fit the model: {mismatch}.", stage="export",
                          hint=_checkpoint_hint(model, state))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        raise ConfigError(f"model.checkpoint: {path} does not fit the model: {' '.join(lines[:3])}", stage="export",
                          hint="the checkpoint must come from the same architecture and model.kwargs.") from None


def _names(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _state_mismatch(model: Any, state: dict) -> str:
    """What stops `load_state_dict(state)`, counted: the model's entries the file lacks, the file's
    entries the model lacks, and entries of another shape; "" when they fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [f"{k} {list(getattr(state[k], 'shape', []))} for {list(own[k].shape)}" for k in own
               if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(own)} entries {'is' if len(missing) == 1 else 'are'} missing "
                     f"({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's {len(state)} {'is' if len(unexpected) == 1 else 'are'} not in "
                     f"the model ({_names(unexpected)})")
    if resized:
        parts.append(f"{len(resized)} {'has' if len(resized) == 1 else 'have'} another shape ({_names(resized, 2)})")
    return "; ".join(parts)


def _checkpoint_hint(model: Any, state: dict) -> str:
    own = set(model.state_dict())
    for prefix in ("module.", "model."):
        if any(k.startswith(prefix) for k in state) and {k.removeprefix(prefix) for k in state} & own:
            return (f"the file's names start with {prefix!r} (a wrapped model); save the inner model's state_dict, "
                    f"or strip the prefix: {{k.removeprefix({prefix!r}): v for k, v in state.items()}}.")
    return "the checkpoint must come from the same architecture and model.kwargs."


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _flatten(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _flatten(item)]
    return [value]


def export_torch(ctx: RunContext, model: Any) -> dict[str, np.ndarray]:
    """Export to 00_export.onnx; returns the torch outputs by ONNX output name."""
    with _one_torch_thread():
        return _export_torch(ctx, model)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread while it exports. The export's work is tracing, in Python, where
    a second thread saves little; and where the machine's cores are busy, each op's parallel region
    waits for a thread that is not running: MobileNetV3-small's forward, trace and export took 7.1 s
    with 2 threads and 1.0-1.4 s with 1, on 2 cores at a load of 16."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _export_torch(ctx: RunContext, model: Any) -> dict[str, np.ndarray]:
    import torch

    from deploykit.tools.lint import ModelLint, raised_in_forward

    config: Config = ctx.config
    args = tuple(torch.from_numpy(ctx.inputs[spec.name]) for spec in config.inputs)
    described = ", ".join(f"{s.name}{list(ctx.inputs[s.name].shape)} {ctx.inputs[s.name].dtype}" for s in config.inputs)
    # With lint on, its eager pass is the reference forward, and the TorchScript exporter's trace is
    # its traced pass: the model runs once before the exporter and is traced once.
    linter = ModelLint(model, args) if config.lint.enabled else None
    with user_code("the model's forward()", stage="export"):
        try:
            with _ids_checked(model, args, [s.name for s in config.inputs]):
                if linter is not None:
                    returned = linter.forward(keep_state=True)  # the export traces what a plain forward leaves
                else:
                    with torch.no_grad():
                        returned = model(*args)
            outputs = [t for t in _flatten(returned) if isinstance(t, torch.Tensor)]
        except DeployError:
            raise
        except Exception as exc:
            raise ConfigError(f"the model rejected the configured inputs ({described}): {raised_in_forward(exc)}: "
                              f"{shorten(str(exc))}", stage="export",
                              hint="check `inputs:` (order, shape, dtype) against the model's forward().") from None
        if linter is not None and (config.export.exporter == "dynamo" or not linter.exporter_trace_is_lints
                                   or (config.lint.as_errors and linter.findings())
                                   or (config.lint.lost_parameters == "error"
                                       and any(f.loses_parameters for f in linter.findings()))):
            linter.trace()  # no TorchScript trace to read as lint's, or the run stops here: lint traces it itself
            check_lint(ctx, linter)
    names = config.export.output_names or (["output"] if len(outputs) == 1
                                           else [f"output{i}" for i in range(len(outputs))])
    if len(names) != len(outputs):
        raise ConfigError(f"export.output_names lists {len(names)} name(s) but the model returns {len(outputs)} "
                          f"tensor(s).",
                          stage="export", hint="give one name per returned tensor, in order.")

    result = ctx.result(ExportResult)

    def write(tmp: Path, opset: int, exporter: str) -> None:
        # The torch.export-based exporter reports progress on stdout and logs warnings, and torch's
        # C++ side prints the whole graph when an operator fails: all of it goes to the report.
        printed: list[str] = []
        traced = linter.exporter_trace() if linter is not None and not linter.traced else contextlib.nullcontext()
        try:
            with user_code("the model's forward() under torch.onnx.export", stage="export"), \
                    warnings.catch_warnings(record=True) as caught, _output_captured(printed):
                warnings.simplefilter("always")
                with traced:
                    write_export(model, args, tmp, config, names, opset=opset, exporter=exporter)
        finally:
            result.warnings = sorted({_warning_text(w) for w in caught if _worth_showing(w)})
            result.exporter_output = printed[:MAX_OUTPUT_LINES]
            if linter is not None:  # what a failed export's error names as its likely cause
                result.lint = [finding.to_dict() for finding in linter.findings()]
        if linter is not None:
            check_lint(ctx, linter)  # before the export file is put in place

    path = _export_retrying(ctx, write)
    for finding in linter.findings() if linter is not None else []:
        ctx.reporter.warn(str(finding))
    ctx.set_model(load_onnx(path, stage="export"), path)
    return {name: tensor.detach().cpu().numpy() for name, tensor in zip(names, outputs)}


TRACE_FILE = "01_trace.pt"  # with converter.source: torchscript, what pnnx is given


def trace_torch(ctx: RunContext, model: Any) -> None:
    """Trace the model to TorchScript for pnnx's own front end (converter.source: torchscript), and
    check the trace against the export as every stage is checked; the export stays the graph whose
    inputs and outputs the converted model has."""
    import torch

    args = tuple(torch.from_numpy(ctx.inputs[spec.name]) for spec in ctx.config.inputs)
    with _one_torch_thread(), torch.no_grad(), user_code("the model's forward() under torch.jit.trace", stage="trace"):
        try:
            traced = torch.jit.trace(model, args, check_trace=False)
            returned = traced(*args)
        except Exception as exc:
            first = " ".join(str(exc).strip().splitlines()[:2])[:800]
            raise StageError(f"torch.jit.trace failed: {type(exc).__name__}: {first}", stage="trace",
                             hint="`deploykit lint` finds what tracing cannot follow; or convert from ONNX "
                                  "(converter.source: onnx).") from None
    path = ctx.artifacts.write_with(TRACE_FILE, lambda tmp: torch.jit.save(traced, str(tmp)))
    ctx.set_converter_input(path)
    outputs = [t for t in _flatten(returned) if isinstance(t, torch.Tensor)]
    names = [value.name for value in ctx.model.graph.output]
    ctx.check_parity({name: t.numpy() for name, t in zip(names, outputs)}, against="the export")


def write_export(model: Any, args: tuple, path: Path, config: Config, output_names: list[str], *, opset: int,
                 exporter: str) -> None:
    """torch.onnx.export as the config sets it up (also for the same model at another input shape)."""
    import torch

    # The torch.export-based exporter would put large weights beside the file, named after the
    # temporary file it is given; stage files keep them inline, as the TorchScript exporter does.
    extra: dict[str, Any] = {"external_data": False} if exporter == "dynamo" else {}
    torch.onnx.export(model, args, str(path), input_names=[s.name for s in config.inputs], output_names=output_names,
                      opset_version=opset, do_constant_folding=config.export.constant_folding,
                      dynamic_axes=config.export.dynamic_axes, dynamo=exporter == "dynamo", **extra)


MAX_OUTPUT_LINES = 200  # of what the exporter printed, kept in report.json


@contextlib.contextmanager
def _ids_checked(model: Any, args: tuple, names: list[str]) -> Iterator[None]:
    """While the model runs: an id fed to one of its embeddings that is outside the table is a
    ConfigError naming the id, where it is, and the vocabulary size, instead of torch's
    "index out of range in self"."""
    import torch

    def source_of(ids: Any) -> str:
        # The forward may run on copies of the inputs (lint's eager pass does): an input equal to the ids is theirs.
        return next((f"input {name!r}" for name, arg in zip(names, args)
                     if arg is ids or (isinstance(arg, torch.Tensor) and arg.shape == ids.shape
                                       and arg.dtype == ids.dtype and torch.equal(arg, ids))),
                    "the ids computed from the inputs")

    def check(layer: str, module: Any, inputs: tuple) -> None:
        ids = inputs[0] if inputs else None
        size = module.num_embeddings
        if not isinstance(ids, torch.Tensor) or ids.numel() == 0:
            return
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            source = source_of(ids)
            dtype = str(ids.dtype).removeprefix("torch.")
            named = (f"`dtype: int64` for {source.removeprefix('input ')}" if source.startswith("input ")
                     else "`dtype: int64`")
            raise ConfigError(f"{source} is {dtype}, but it feeds {type(module).__name__} {layer!r}, which takes "
                              f"integer token ids.", stage="export",
                              hint=f"give the ids an integer type under `inputs:` ({named}, with "
                                   f"`range: [0, {size}]` for generated ones).")
        if ids.min() >= 0 and ids.max() < size:
            return
        outside = ((ids < 0) | (ids >= size)).nonzero()[0].tolist()
        source = source_of(ids)
        raise ConfigError(f"token id {int(ids[tuple(outside)])} at {outside} of {source} is outside the vocabulary "
                          f"of {type(module).__name__} {layer!r}, which has {size} entries (ids 0 to {size - 1}).",
                          stage="export", hint=f"keep the ids under `inputs:` in [0, {size}) (`range: [0, {size}]` "
                                               "for generated ones).")

    handles = [module.register_forward_pre_hook(functools.partial(check, name))
               for name, module in model.named_modules()
               if isinstance(module, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# Where the exporters log (the torch.export-based one warns about opset conversion, and onnxscript
# logs a whole traceback when it falls back to another converter, on a run that then succeeds).
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


class _LineCollector(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += self.format(record).splitlines()


@contextlib.contextmanager
def _output_captured(lines: list[str]) -> Iterator[None]:
    """Add to `lines` what the exporter writes to stdout, by Python or by native code (file
    descriptor 1), and what it logs, instead of letting either reach the terminal."""
    collector = _LineCollector(lines)
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    saved_loggers = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [collector], False
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as sink:
        text = io.TextIOWrapper(sink, write_through=True)
        try:
            with contextlib.redirect_stdout(text):
                os.dup2(sink.fileno(), 1)
                try:
                    yield
                finally:
                    os.dup2(saved, 1)
                    os.close(saved)
                    for logger, (handlers, propagate) in zip(loggers, saved_loggers):
                        logger.handlers, logger.propagate = handlers, propagate
                    sink.seek(0)
                    lines += sink.read().decode("utf-8", "replace").splitlines()
        finally:
            text.detach()  # the sink closes with its `with`; a wrapper left to the collector warned "unclosed file"


def _export_retrying(ctx: RunContext, write: Callable[[Path, int, str], None]) -> Path:
    """Write 00_export.onnx with export.exporter at export.opset. Where the config leaves them at
    their defaults: when the exporter says an operator needs a later opset (torch.triu: 14), export
    again at that one; when the TorchScript exporter has no rule for an operator at any opset
    (torch.diff), export again with the torch.export-based exporter. Each retry is a warning."""
    section, result = ctx.config.export, ctx.result(ExportResult)
    opset, exporter = section.opset, section.exporter
    first_cause = ""  # what the first attempt said: a retry's failure hides the real cause behind its own
    while True:
        try:
            # write_with calls the writer at once, with this attempt's opset and exporter
            path = ctx.artifacts.write_with("00_export.onnx", lambda tmp: write(tmp, opset, exporter))  # noqa: B023
            result.opset, result.exporter = opset, exporter
            return path
        except ConfigError:
            raise
        except ModuleNotFoundError as exc:
            raise StageError(f"the {exporter} exporter needs a package that is not installed: {exc.name}.",
                             stage="export",
                             hint=f"pip install {exc.name}, or use export.exporter: torchscript.") from None
        except Exception as exc:
            first = " ".join(_ANSI.sub("", str(exc)).strip().splitlines()[:2])[:800]
            needed = _NEEDS_OPSET.search(str(exc))
            needed_opset = int(needed.group(1)) if needed else 0
            unsupported = _UNSUPPORTED_OP.search(str(exc))
            retry = None
            if needed_opset > opset and "opset" not in section.model_fields_set and needed_opset <= MAX_OPSET:
                retry = (f"export.opset: {first} Exported at opset {needed_opset} instead of {opset}; set "
                         f"export.opset to choose.")
                opset = needed_opset
            elif (unsupported and not needed and exporter == "torchscript"
                  and "exporter" not in section.model_fields_set):
                retry = (f"export.exporter: the TorchScript exporter has no rule for {unsupported.group(1)} at any "
                         f"opset. Exported with the torch.export-based exporter instead; set export.exporter to "
                         f"choose.")
                exporter = "dynamo"
            if retry is not None:
                first_cause = first_cause or f"{type(exc).__name__}: {first}"
                result.export_retried = [*(result.export_retried or []), retry]
                ctx.reporter.warn(retry)
                continue
            if needed_opset > opset:
                hint = f"set export.opset: {needed_opset}; `deploykit lint` finds common causes."
            elif unsupported and exporter == "torchscript":
                hint = (f"the TorchScript exporter has no rule for {unsupported.group(1)} at any opset: set "
                        f"export.exporter: dynamo (the torch.export-based exporter), or write that call another way "
                        f"in the model.")
            else:
                hint = "try another export.opset or export.exporter; `deploykit lint` finds common causes."
            said = f"{type(exc).__name__}: {first}"
            message = (f"torch.onnx.export failed: {first_cause} (and the retry with export.exporter {exporter}, "
                       f"export.opset {opset} failed too: {said})" if first_cause
                       else f"torch.onnx.export failed: {said}")
            raise StageError(message + _lint_cause(ctx), stage="export", hint=hint) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the torch.export-based exporter colours its messages


def _lint_cause(ctx: RunContext) -> str:
    """The lint findings an export failure most likely comes from, named by file and line: a layer
    built inside forward initialises its weights (aten::uniform, aten::normal) on every call."""
    found = [f for f in ctx.result(ExportResult).lint or [] if f.get("loses_parameters")]
    if not found:
        return ""
    from deploykit.tools.lint import Finding

    sites = ", ".join(f"{str(Finding(**f)).split(': ', 1)[0]}" for f in found[:3])
    return (f" The likely cause is what lint found at {sites} (layer-in-forward): a layer built inside forward "
            f"initialises its weights on every call, and the exporter traces that initialisation.")


def check_lint(ctx: RunContext, linter: ModelLint) -> None:
    """Record lint's findings so far; with lint.as_errors any of them stops the run, and one that
    loses trained parameters does unless lint.lost_parameters is `warning`."""
    findings = linter.findings()
    ctx.result(ExportResult).lint = [finding.to_dict() for finding in findings]
    section = ctx.config.lint
    fatal = [f for f in findings if section.as_errors or (f.loses_parameters and section.lost_parameters == "error")]
    if fatal:
        lost = [f for f in fatal if f.loses_parameters]
        raise ConfigError(f"lint found {len(fatal)} model-writing pitfall(s)"
                          + (", where trained weights would be missing from the export, so the model verified "
                             "would be one nobody trained" if lost else "") + ": "
                          + " | ".join(str(f) for f in fatal), stage="lint",
                          hint="fix them" + (" (create the layer once in __init__)" if lost else "")
                               + (", or set lint.as_errors: false to convert anyway." if section.as_errors else
                                  ", or set lint.lost_parameters: warning to convert anyway (the weights are then "
                                  "freshly initialised ones)."))


def _worth_showing(caught: warnings.WarningMessage) -> bool:
    # The legacy-exporter deprecation notice says nothing about the user's model.
    return not issubclass(caught.category, DeprecationWarning)


def _warning_text(caught: warnings.WarningMessage) -> str:
    return f"{Path(caught.filename).name}:{caught.lineno}: {caught.category.__name__}: {caught.message}"


def import_onnx(ctx: RunContext) -> None:
    """Check the user's ONNX file and copy it to 00_import.onnx; the original is never written to."""
    source = ctx.config.model.onnx
    assert source is not None, "import_onnx without model.onnx"
    model = load_onnx(source, stage="import", user_file=True)
    check_inputs_fit(model, ctx.inputs, source)
    path = save_onnx(ctx.artifacts, "00_import.onnx", model)
    ctx.set_model(model, path)


_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                  onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64",
                  onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT8: "int8",
                  onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.BOOL: "bool"}


def check_inputs_fit(model: onnx.ModelProto, inputs: dict[str, np.ndarray], source: Path, *, stage: str = "import",
                     hint: str = "make `inputs:` match the graph (names, dtypes and shapes).",
                     exact: bool = True) -> None:
    """Compare the given inputs with the graph's, naming every mismatch. Not `exact`: arrays the
    graph does not take, and other dtypes (cast when fed), are allowed."""
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [value for value in model.graph.input if value.name not in initializers]
    problems = []
    wanted = {value.name for value in graph_inputs}
    for extra in sorted(set(inputs) - wanted) if exact else []:
        problems.append(f"the graph has no input {extra!r}")
    for value in graph_inputs:
        if value.name not in inputs:
            problems.append(f"graph input {value.name!r} is not under `inputs:`" if exact
                            else f"graph input {value.name!r} is missing")
            continue
        tensor_type = value.type.tensor_type
        array = inputs[value.name]
        dtype = _ONNX_TO_NUMPY.get(tensor_type.elem_type)
        if exact and dtype is not None and array.dtype.name != dtype:
            problems.append(f"input {value.name!r} is {dtype} in the graph but {array.dtype.name} in the config")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if tensor_type.HasField("shape") and (len(dims) != array.ndim or any(
                d is not None and d != s for d, s in zip(dims, array.shape))):
            shown = ["?" if d is None else d for d in dims]
            problems.append(f"input {value.name!r} has shape {list(array.shape)} but the graph takes {shown}")
    if problems:
        raise ConfigError(f"the inputs do not fit {source}: " + "; ".join(problems) + ".", stage=stage, hint=hint)
