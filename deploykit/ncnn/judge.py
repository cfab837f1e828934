"""Convert an ONNX graph and run what the converter wrote on the ncnn runtime: the one way every
part of deploykit that needs an ncnn model of a graph gets it (the fp32 baseline of an fp16 run,
the pass bisection, `deploykit reduce`).

    outcome = convert_and_run(model_file, feeds, section, workdir)
    outcome.outputs          # by ONNX output name, or None when there is nothing to compare
    convert_graph(...)       # the conversion alone, as the convert stage makes it
    outcome.why_not()        # the one sentence saying why there is nothing, worded as the convert stage words it

Ending with outputs takes three things: the converter finished and reported no problem line (onnx2ncnn
exits 0 after "Gather not supported yet!"), every layer it wrote is one the ncnn runtime has (pnnx
leaves `torch.where`), and ncnn loaded and ran the model. The outcome says which of them failed.
Judging the outputs against a reference is the caller's: each compares with what it trusts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Optional, Union

import numpy as np
import onnx

from deploykit.core.config import ConverterSection
from deploykit.core.errors import StageError
from deploykit.ncnn.converters import make_converter
from deploykit.ncnn.converters.base import Conversion
from deploykit.ncnn.runtime import run_ncnn, unknown_layers
from deploykit.onnx.onnx_io import chain_order

Timeout = Union[float, Callable[[], float]]  # seconds, or asked afresh before each child (a diagnosis budget)


@dataclass
class Outcome:
    """How far a graph got towards ncnn outputs, and what stopped it."""

    tool: str
    graph: onnx.GraphProto  # what was converted, for naming the ONNX nodes behind a left-over layer
    conversion: Optional[Conversion] = None  # None when the converter failed
    error: Optional[StageError] = None  # why the converter failed, timed out or wrote no model
    problems: list[str] = field(default_factory=list)  # what it reported it could not convert
    leftovers: list[tuple[str, str]] = field(default_factory=list)  # (layer type, layer name) ncnn lacks
    unreadable: str = ""  # the .param it wrote is not one ncnn can parse
    load_error: str = ""  # ncnn could not load or run the model
    outputs: Optional[dict[str, np.ndarray]] = None  # by ONNX output name, when it ran

    @property
    def convert_error(self) -> str:
        return self.error.message if self.error is not None else ""

    @property
    def converted(self) -> bool:
        """The converter wrote a model ncnn has every layer of."""
        return self.conversion is not None and not (self.problems or self.leftovers or self.unreadable)

    @property
    def ran(self) -> bool:
        return self.outputs is not None

    def why_not(self) -> str:
        """Why there are no outputs, in one sentence; "" when there are."""
        if self.convert_error:
            return self.convert_error
        if self.problems:
            return f"{self.tool} reported: {self.problems[0]}"
        if self.leftovers:
            return describe_leftovers(self.tool, self.leftovers, self.graph)
        return self.unreadable or self.load_error


def convert_graph(model: Union[Path, onnx.ModelProto], feeds: Mapping[str, np.ndarray], section: ConverterSection,
                  workdir: Path, *, timeout: float = 300.0, fp16: Optional[bool] = None,
                  args: Optional[list[str]] = None, loaded: Optional[onnx.ModelProto] = None) -> Outcome:
    """Convert `model` (a file, or a graph written into `workdir` first) with the converter of
    `section` into `workdir`, and read what it reported and which layers ncnn lacks.

    onnx2ncnn is given the graph with its chains contiguous. `fp16` and `args` default to the
    section's. `loaded` is the file's model when the caller has read it already."""
    tool = make_converter(section)
    workdir = Path(workdir)
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif loaded is not None:
        proto = loaded
    else:  # onnx2ncnn is given a re-ordered copy, so its weights are needed; the rest only reads the graph
        proto = onnx.load(str(model), load_external_data=tool.name == "onnx2ncnn")
    if tool.name == "onnx2ncnn":
        source = workdir / "chain_ordered.onnx"
        onnx.save(chain_order(proto), str(source))
    elif isinstance(model, onnx.ModelProto):
        source = workdir / "input.onnx"
        onnx.save(model, str(source))
    else:
        source = Path(model)
    outcome = Outcome(tool.name, proto.graph)
    outputs = [out.name for out in proto.graph.output]
    try:
        outcome.conversion = tool.convert(source, dict(feeds), outputs, workdir,
                                          fp16=section.fp16 if fp16 is None else fp16,
                                          args=section.args if args is None else args, timeout=timeout)
    except StageError as exc:
        outcome.error = exc
        return outcome
    outcome.problems = list(outcome.conversion.problems)
    try:
        outcome.leftovers = unknown_layers(outcome.conversion.param)
    except StageError as exc:  # a .param ncnn cannot parse
        if not outcome.problems:  # (after a problem line it is no news)
            outcome.unreadable = exc.message
    return outcome


def convert_and_run(model: Union[Path, onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                    section: ConverterSection, workdir: Path, *, timeout: Timeout = 300.0,
                    fp16: Optional[bool] = None, args: Optional[list[str]] = None,
                    loaded: Optional[onnx.ModelProto] = None) -> Outcome:
    """`convert_graph`, then, when ncnn has every layer, one run on ncnn with `feeds` (by ONNX input
    name), with fp16 on only for an fp16 model. `timeout` bounds the converter and the ncnn run
    each; a callable is asked before each."""
    def seconds() -> float:
        return timeout() if callable(timeout) else timeout

    fp16 = section.fp16 if fp16 is None else fp16
    outcome = convert_graph(model, feeds, section, workdir, timeout=seconds(), fp16=fp16, args=args, loaded=loaded)
    conversion = outcome.conversion
    if conversion is None or not outcome.converted:
        return outcome
    try:
        outcome.outputs = run_ncnn(conversion.param, conversion.bin,
                                   [(blob, feeds[blob.onnx_name]) for blob in conversion.inputs],
                                   conversion.outputs, timeout=seconds(), fp16=fp16)
    except StageError as exc:
        outcome.load_error = exc.message
    return outcome


# The layer types pnnx leaves in a .param when it found no ncnn layer for an ONNX op, and the
# ONNX ops they come from.
LEFTOVER_SOURCES = {
    "torch.eq": ("Equal",), "torch.ne": ("Equal", "Not"), "torch.gt": ("Greater",), "torch.lt": ("Less",),
    "torch.ge": ("GreaterOrEqual",), "torch.le": ("LessOrEqual",), "torch.logical_not": ("Not",),
    "torch.logical_and": ("And",), "torch.logical_or": ("Or",), "torch.where": ("Where",),
    "Tensor.masked_fill": ("Where",), "Tensor.slice": ("Slice",), "Tensor.to": ("Cast",),
    "Tensor.expand": ("Expand",), "Tensor.repeat": ("Tile",), "torch.argmax": ("ArgMax",),
    "torch.argmin": ("ArgMin",), "torch.topk": ("TopK",), "torch.cumsum": ("CumSum",),
    "torch.gather": ("GatherElements",), "Tensor.index_select": ("Gather",), "Tensor.index": ("Gather",),
    "torch.nonzero": ("NonZero",), "Tensor.scatter": ("ScatterElements", "ScatterND"),
    "pnnx.Expression": ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Abs", "Floor", "Ceil", "Mod"),
}


def leftover_sources(kind: str, graph: onnx.GraphProto) -> list[str]:
    """The ONNX nodes a leftover layer type most likely came from, as `Op 'name'`."""
    op_types = LEFTOVER_SOURCES.get(kind, (kind,))
    return [f"{node.op_type} {node.name!r}" for node in graph.node if node.op_type in op_types]


def describe_leftovers(tool: str, leftovers: list[tuple[str, str]], graph: onnx.GraphProto) -> str:
    """One sentence naming each left-over layer type, how often, and the ONNX nodes behind it."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for kind, name in leftovers:
        by_type[kind].append(name)
    described = []
    for kind, names in by_type.items():
        sources = leftover_sources(kind, graph)
        origin = f" from ONNX {', '.join(sources[:4])}" if sources else ""
        described.append(f"{kind} ({len(names)}x, e.g. {names[0]}){origin}")
    return f"{tool} wrote layers the ncnn runtime does not have: " + "; ".join(described)
