"""`deploykit reduce`: shrink an ONNX model that fails on ncnn to a small subgraph that fails the
same way, to attach to a converter bug report.

A candidate is a set of the model's nodes, cut out with onnx.utils.Extractor: the tensors it reads
from outside become graph inputs, fed the values they have in the whole model; the tensors it
computes and does not read become its outputs. `probe` judges a model as `deploykit run` does:
a converter error, a problem line or a layer the ncnn runtime lacks is a "convert" failure, a
.param ncnn refuses to load or run is "load", outputs beyond atol/rtol of onnxruntime are "parity".

Search: bisect the topological prefixes for the first node whose addition fails; keep the cone
that feeds it; bisect the suffixes of that cone for the latest start that still fails; then
delta-debug the boundary, dropping sink nodes (their inputs become outputs) and source nodes
(their outputs become inputs) in halves, then one at a time, while the failure stays the same;
last, one probe with the constants it reads as initializers rather than Constant nodes. Shapes
computed at run time (Shape -> Gather -> Concat -> Reshape) become initializers wherever a cut
meets them, so every candidate is static, as pnnx needs.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from deploykit.core.config import ConverterSection, ParitySection
from deploykit.core.errors import ConfigError, StageError
from deploykit.core.inputs import DEFAULT_INT_RANGE
from deploykit.core.parity import compare_outputs, run_onnx
from deploykit.ncnn.judge import convert_and_run
from deploykit.ncnn.judge import describe_leftovers
from deploykit.tools.preflight import GraphView

STAGE = "reduce"
KINDS = ("convert", "load", "parity")
# Ops whose input keeps its values on the way to the output, so a bound on the output (a Gather
# index, a positive operand) is a bound on the input too.
_VALUE_PRESERVING = ("Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Transpose", "Expand",
                     "Tile", "Concat")
_POSITIVE_OPERANDS = {"Sqrt": 0, "Log": 0, "Reciprocal": 0, "Pow": 0, "Div": 1}


@dataclass
class Failure:
    """How a model fails on the road to ncnn."""

    kind: str                      # one of KINDS
    detail: str                    # the message, as the pipeline would say it
    layers: tuple[str, ...] = ()   # "convert": the layer types ncnn lacks, in .param order
    family: str = ""               # the message with names and numbers blanked: tells failures of a kind apart

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class ReduceResult:
    smallest_failing: onnx.ModelProto
    largest_passing: Optional[onnx.ModelProto]  # the biggest candidate that converted, loaded and matched
    probes: int
    failure: Failure                            # how smallest_failing fails
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # the values smallest_failing fails on
    folder: Optional[Path] = None               # its probe folder: convert.log, the .param pnnx wrote
    stopped_early: bool = False                 # max_probes was reached; the result is the best so far


def probe(model: onnx.ModelProto, *, converter: str = "pnnx", atol: float = 1e-4, rtol: float = 1e-3,
          timeout: float = 120, workdir: Path, inputs: Optional[Mapping[str, np.ndarray]] = None,
          seed: int = 0) -> Optional[Failure]:
    """Convert, load and run `model` on ncnn and compare with onnxruntime; None when all is well.

    Inputs not given are random (see `probe_inputs`). Works in a new folder under `workdir`.
    Raises StageError when onnxruntime cannot run the model or gives NaN/Inf: then there is no
    reference to judge the converter by.
    """
    Path(workdir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="probe-", dir=workdir))
    feeds = probe_inputs(model, given=inputs, seed=seed)
    return _probe_in(folder, model, feeds, converter=converter,
                     tolerances=ParitySection(atol=atol, rtol=rtol), timeout=timeout)


def same_failure(first: Failure, pattern: Optional[str] = None) -> Callable[[Failure], bool]:
    """What `reduce_model` keeps: failures of `first`'s kind and, with `pattern`, whose detail
    matches that regex; without it, for "convert" the same left-over layer type (no other types
    beside those of `first`) or else the same message family, for "load" the same family."""
    regex = None
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"the match pattern {pattern!r} is not a regular expression ({exc}).", stage=STAGE,
                              hint="quote it for the shell, and escape regex characters such as '.' and '('.") from None

    def matches(failure: Failure) -> bool:
        if failure.kind != first.kind:
            return False
        if regex is not None:
            return regex.search(failure.detail) is not None
        if first.kind == "convert" and first.layers:
            return first.layers[0] in failure.layers and set(failure.layers) <= set(first.layers)
        if first.kind in ("convert", "load"):
            return failure.family == first.family
        return True

    return matches


# Judges a candidate: (its own folder, the model, its inputs) -> how it fails, or None when all is well.
Judge = Callable[[Path, onnx.ModelProto, dict[str, np.ndarray]], Optional[Failure]]


def reduce_model(model: onnx.ModelProto, *, matches: Callable[[Failure], bool], workdir: Path,
                 converter: str = "pnnx", atol: float = 1e-4, rtol: float = 1e-3, timeout: float = 120,
                 max_probes: int = 400, progress: Optional[Callable[[str], None]] = None,
                 inputs: Optional[Mapping[str, np.ndarray]] = None, seed: int = 0,
                 first: Optional[Failure] = None, judge: Optional[Judge] = None) -> ReduceResult:
    """The smallest subgraph of `model` found whose failure `matches` accepts.

    `first` is what `probe` said of the whole model with the same inputs, seed and settings; given,
    the whole model is not probed again. `judge` replaces the real probe (convert with `converter`,
    run on ncnn, compare with onnxruntime at atol/rtol), so the search can be tried on any verdicts.
    Raises ConfigError when the model does not fail, or fails in a way `matches` rejects.
    """
    if judge is None:
        tolerances = ParitySection(atol=atol, rtol=rtol)

        def judge(folder: Path, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Optional[Failure]:
            return _probe_in(folder, candidate, feeds, converter=converter, tolerances=tolerances, timeout=timeout)

    reducer = _Reducer(model, matches=matches, workdir=Path(workdir), judge=judge, converter=converter,
                       tolerances=ParitySection(atol=atol, rtol=rtol), max_probes=max_probes,
                       progress=progress or (lambda _: None), inputs=inputs, seed=seed)
    return reducer.run(first)


def probe_inputs(model: onnx.ModelProto, *, given: Optional[Mapping[str, np.ndarray]] = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A value for every graph input: from `given` where it has the input's shape, else random from
    a generator seeded by (seed, input name), so a tensor gets the same values in every subgraph.
    Integers fall in [0, 10), or within the table size where they index a Gather; floats are
    standard normal, or in [0.5, 2) where they reach a Sqrt, Log, Reciprocal, Pow base or divisor."""
    view = GraphView(model)
    index_bounds, positive = _value_hints(view)
    feeds = {}
    for value in model.graph.input:
        if value.name in view.initializers:
            continue
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        shape = _static_shape(value)
        if shape is None:
            raise ConfigError(f"input {value.name!r} has no fixed shape; ncnn models are converted for one shape.",
                              stage=STAGE, hint="export the model with fixed input shapes (no dynamic_axes).")
        known = given.get(value.name) if given else None
        if known is not None and tuple(known.shape) == shape:
            feeds[value.name] = np.ascontiguousarray(known.astype(dtype, copy=False))
            continue
        rng = np.random.default_rng([seed, zlib.crc32(value.name.encode())])
        if dtype == np.bool_:
            array = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            high = index_bounds.get(value.name, DEFAULT_INT_RANGE[1])
            array = rng.integers(DEFAULT_INT_RANGE[0], max(high, 1), size=shape).astype(dtype)
        elif value.name in positive:
            array = rng.uniform(0.5, 2.0, size=shape).astype(dtype)
        else:
            array = rng.standard_normal(shape).astype(dtype)
        feeds[value.name] = array
    return feeds


# ---------------------------------------------------------------------------------------------
# One probe


def _probe_in(folder: Path, model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, converter: str,
              tolerances: ParitySection, timeout: float) -> Optional[Failure]:
    reference = run_onnx(model, feeds, stage=STAGE)
    broken = [name for name, array in reference.items()
              if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all()]
    if broken:
        raise StageError(f"onnxruntime gives NaN or Inf in {', '.join(map(repr, broken))} on these inputs, so "
                         f"there is nothing to compare ncnn with.", stage=STAGE,
                         hint="give inputs in the range the model expects.")
    outcome = convert_and_run(model, feeds, ConverterSection(name=converter), folder, timeout=timeout, fp16=False,
                              args=[])
    if outcome.convert_error:
        return Failure("convert", outcome.convert_error, family=_family(outcome.convert_error))
    if outcome.problems or outcome.leftovers:
        return _conversion_failure(outcome.tool, outcome.problems, outcome.leftovers, model.graph)
    if outcome.outputs is None:
        return Failure("load", outcome.why_not(), family=_family(outcome.why_not()))
    parity = compare_outputs(reference, outcome.outputs, tolerances, against="onnxruntime")
    if parity.passed:
        return None
    detail = "ncnn differs from onnxruntime: " + "; ".join(out.describe() for out in parity.failures())
    return Failure("parity", detail, family="parity")


def _conversion_failure(tool: str, problems: list[str], leftovers: list[tuple[str, str]],
                        graph: onnx.GraphProto) -> Failure:
    """Worded as the convert stage words it, with the left-over layer types kept apart."""
    said = []
    if problems:
        said.append(f"{tool} reported that it could not convert the graph: " + "; ".join(problems[:6]))
    kinds = list(dict.fromkeys(kind for kind, _ in leftovers))
    if kinds:
        said.append(describe_leftovers(tool, leftovers, graph))
    return Failure("convert", ". ".join(said), layers=tuple(kinds),
                   family=_family(problems[0]) if problems else "left-over layers")


def _family(message: str) -> str:
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'*'", message)
    text = re.sub(r"\S*[/\\]\S*", "<path>", text)
    text = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)
    return text[:240]


def _static_shape(value: onnx.ValueInfoProto) -> Optional[tuple[int, ...]]:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.elem_type or not tensor.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return None if any(d < 0 for d in dims) else tuple(dims)


def _value_hints(view: GraphView) -> tuple[dict[str, int], set[str]]:
    """(exclusive upper bound of tensors used as Gather indices, tensors that must be positive),
    carried back through ops that keep values."""
    bounds: dict[str, int] = {}
    positive: set[str] = set()
    for node in reversed(view.nodes):
        if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1:
            shape = view.shape(node.input[0])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            size = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
            if size:
                bounds[node.input[1]] = min(bounds.get(node.input[1], size), size)
        operand = _POSITIVE_OPERANDS.get(node.op_type)
        if operand is not None and len(node.input) > operand:
            positive.add(node.input[operand])
        if node.op_type in _VALUE_PRESERVING:
            data = node.input if node.op_type == "Concat" else node.input[:1]
            for out in node.output:
                for name in data:
                    if out in bounds:
                        bounds[name] = min(bounds.get(name, bounds[out]), bounds[out])
                    if out in positive:
                        positive.add(name)
    return bounds, positive


def _every_value(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor the nodes compute, on onnxruntime; empty when it cannot run the model (then
    cut tensors get random values, and shapes come from ONNX shape inference alone)."""
    traced = onnx.ModelProto()
    traced.CopyFrom(model)
    present = {value.name for value in traced.graph.output}
    traced.graph.output.extend(onnx.ValueInfoProto(name=name) for node in traced.graph.node
                               for name in node.output if name and name not in present)
    try:
        return run_onnx(traced, feeds, stage=STAGE)
    except StageError:
        return {}


def _with_value_types(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with a type and shape for every tensor: what ONNX shape inference finds, and where it
    finds no fixed shape (a Reshape to a computed shape), the shape of the value onnxruntime computed."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - a graph inference cannot follow is still typed by the values
        inferred = onnx.ModelProto()
        inferred.CopyFrom(model)
    graph = inferred.graph
    declared = {value.name for value in (*graph.input, *graph.output)}
    typed = {value.name: value for value in graph.value_info if _static_shape(value) is not None}
    for name, array in values.items():
        if name not in declared and name not in typed and array.dtype != object:
            elem_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            typed[name] = onnx.helper.make_tensor_value_info(name, elem_type, array.shape)
    del graph.value_info[:]
    graph.value_info.extend(typed.values())
    return inferred


# ---------------------------------------------------------------------------------------------
# The search


@dataclass
class _Kept:
    """A probed candidate worth returning, and the probe folder kept for it."""

    nodes: frozenset[int]
    model: onnx.ModelProto
    failure: Optional[Failure]
    feeds: dict[str, np.ndarray]
    folder: Optional[Path]

    @property
    def size(self) -> tuple[int, int]:
        """Nodes of the search, then all nodes (the Constant nodes and constant arithmetic beside them)."""
        return len(self.nodes), len(self.model.graph.node)

    def drop_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class _Reducer:
    def __init__(self, model: onnx.ModelProto, *, matches: Callable[[Failure], bool], workdir: Path, judge: Judge,
                 converter: str, tolerances: ParitySection, max_probes: int,
                 progress: Callable[[str], None], inputs: Optional[Mapping[str, np.ndarray]], seed: int) -> None:
        self.original = model
        self.matches, self.workdir, self.judge, self.converter = matches, workdir, judge, converter
        self.tolerances, self.max_probes = tolerances, max_probes
        self.progress, self.seed = progress, seed
        self.feeds = probe_inputs(model, given=inputs, seed=seed)
        self.values = {**self.feeds, **_every_value(model, self.feeds)}
        self.model = _with_value_types(model, self.values)
        self.view = GraphView(self.model)
        self.extractor = onnx.utils.Extractor(self.model)
        self.nodes = self.view.nodes
        self.producer = {name: i for i, node in enumerate(self.nodes) for name in node.output if name}
        graph_outputs = {out.name for out in self.model.graph.output}
        self.used = graph_outputs | {name for node in self.nodes for name in node.input if name}
        # Constants (and what is computed from them only) come along with the nodes that read them;
        # shapes and what is computed from them are fixed, so a cut there freezes their values.
        constant = self.view.constant_names
        for node in self.nodes:
            inputs_of = [name for name in node.input if name]
            if inputs_of and all(name in constant for name in inputs_of):
                constant.update(node.output)
        self.constant = constant
        self.initializers = {init.name for init in self.model.graph.initializer}
        self.frozen = self.view.static_tensors - constant
        live = self._ancestors({self.producer[name] for name in graph_outputs if name in self.producer})
        self.reducible = [i for i in sorted(live)
                          if not all(out in self.view.static_tensors for out in self.nodes[i].output if out)]
        self.verdicts: dict[tuple[frozenset[int], bool], Optional[bool]] = {}
        self.probes = 0
        self.stopped = False
        self.best: Optional[_Kept] = None     # the smallest candidate that fails the same way
        self.passing: Optional[_Kept] = None  # the largest that converts, loads and matches

    # -- graph helpers

    def _ancestors(self, seeds: set[int]) -> set[int]:
        """`seeds` and every node they read from, directly or not."""
        found, stack = set(), list(seeds)
        while stack:
            index = stack.pop()
            if index not in found:
                found.add(index)
                stack += [self.producer[name] for name in self.nodes[index].input if name in self.producer]
        return found

    def _boundary(self, nodes: frozenset[int], side: str) -> list[int]:
        produced = {name for i in nodes for name in self.nodes[i].output if name}
        read = {name for i in nodes for name in self.nodes[i].input if name}
        if side == "sources":
            return [i for i in sorted(nodes) if not any(name in produced for name in self.nodes[i].input)]
        return [i for i in sorted(nodes) if not any(name in read for name in self.nodes[i].output)]

    def _describe(self, nodes: frozenset[int]) -> str:
        ops = [self.nodes[i].op_type for i in sorted(nodes)]
        shown = ", ".join(ops[:6]) + (", ..." if len(ops) > 6 else "")
        return f"{len(ops)} node(s) [{shown}]"

    # -- candidates

    def _build(self, nodes: frozenset[int], fold: bool) -> Optional[tuple[onnx.ModelProto, dict[str, np.ndarray]]]:
        """The subgraph of `nodes` as a checked, static-shaped model and its inputs; None if it is not one.
        With `fold`, the constants it reads are initializers, not the Constant nodes that made them."""
        order = sorted(nodes)
        produced = {name for i in order for name in self.nodes[i].output if name}
        read = {name for i in order for name in self.nodes[i].input if name}
        frozen = self.frozen | (self.constant - self.initializers if fold else set())
        inputs = list(dict.fromkeys(name for i in order for name in self.nodes[i].input
                                    if name and name not in produced and (name in frozen or name not in self.constant)))
        outputs = [name for i in order for name in self.nodes[i].output if name in self.used and name not in read]
        if not outputs or not inputs:
            return None
        try:
            model = self.extractor.extract_model(inputs, outputs)
        except ValueError:  # a tensor without a type: shape inference did not reach it
            return None
        for name in [name for name in inputs if name in frozen]:
            if name not in self.values:
                return None
            model.graph.initializer.append(numpy_helper.from_array(self.values[name], name))
            kept = [value for value in model.graph.input if value.name != name]
            del model.graph.input[:]
            model.graph.input.extend(kept)
        declared = {value.name for value in (*model.graph.input, *model.graph.output, *model.graph.initializer)}
        inner = [value for value in model.graph.value_info if value.name not in declared]
        del model.graph.value_info[:]
        model.graph.value_info.extend(inner)
        if not model.graph.input or any(_static_shape(v) is None for v in (*model.graph.input, *model.graph.output)):
            return None
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
            return None
        return model, probe_inputs(model, given=self.values, seed=self.seed)

    def _try(self, nodes: frozenset[int], why: str, fold: bool = False) -> Optional[bool]:
        """True: fails the way `matches` wants; False: passes or fails otherwise; None: no verdict."""
        key = (nodes, fold)
        if key in self.verdicts:
            return self.verdicts[key]
        if self.probes >= self.max_probes:
            self.stopped = True
            return None
        built = self._build(nodes, fold)
        if built is None:
            self.verdicts[key] = None
            return None
        model, feeds = built
        self.probes += 1
        folder = Path(tempfile.mkdtemp(prefix=f"probe-{self.probes:03d}-", dir=self.workdir))
        try:
            failure = self.judge(folder, model, feeds)
        except StageError as exc:  # onnxruntime cannot run this cut: no reference, no verdict
            self.progress(f"probe {self.probes}: {why}, {self._describe(nodes)}: skipped ({exc.message})")
            shutil.rmtree(folder, ignore_errors=True)
            self.verdicts[key] = None
            return None
        verdict = failure is not None and self.matches(failure)
        said = ("fails the same way" if verdict else "passes" if failure is None
                else f"fails otherwise ({failure.kind}: {failure.detail[:160]})")
        self.progress(f"probe {self.probes}: {why}, {self._describe(nodes)}: {said}")
        probed = _Kept(nodes, model, failure, feeds, folder)
        if verdict and (self.best is None or probed.size < self.best.size):
            self.best, probed = probed, self.best
        elif failure is None and (self.passing is None or probed.size > self.passing.size):
            self.passing, probed = probed, self.passing
        if probed is not None:  # what was not kept, or what a better candidate replaced
            probed.drop_folder()
        self.verdicts[key] = verdict
        return verdict

    # -- the phases

    def run(self, first: Optional[Failure]) -> ReduceResult:
        self.workdir.mkdir(parents=True, exist_ok=True)
        folder = None
        if first is None:
            self.probes += 1
            folder = Path(tempfile.mkdtemp(prefix="probe-001-", dir=self.workdir))
            first = self.judge(folder, self.original, self.feeds)
            self.progress(f"probe 1: the whole model, {len(self.original.graph.node)} node(s): "
                          + (f"{first.kind}: {first.detail[:200]}" if first else "passes"))
        if first is None:
            raise ConfigError(f"the model already converts with {self.converter}, loads on ncnn and matches "
                              f"onnxruntime (atol {self.tolerances.atol:g}, rtol {self.tolerances.rtol:g}): "
                              f"there is no failure to reduce.", stage=STAGE,
                              hint="reduce the model a failing run converted (its last NN_*.onnx artifact), "
                                   "with the inputs and tolerances of that run.")
        if not self.matches(first):
            raise ConfigError(f"the model fails, but not the way asked for: {first}", stage=STAGE,
                              hint="loosen the match pattern, or leave it out to reduce this failure.")
        everything = frozenset(self.reducible)
        self.verdicts[(everything, False)] = True
        self.best = _Kept(everything, self.original, first, self.feeds, folder)
        if everything:
            kept = self._bisect_prefix(everything)
            kept = self._bisect_suffix(kept)
            self._trim(kept)
            best = self.best
            if best.model is not self.original and len(best.model.graph.node) > len(best.nodes):
                self._try(best.nodes, "with its constants as initializers", fold=True)
        if self.stopped:
            self.progress(f"stopped after {self.probes} probes (max_probes); the result is the smallest so far")
        best = self.best
        assert best.failure is not None  # a candidate is kept as the best only when it fails
        return ReduceResult(smallest_failing=best.model, largest_passing=self.passing.model if self.passing else None,
                            probes=self.probes, failure=best.failure, inputs=best.feeds, folder=best.folder,
                            stopped_early=self.stopped)

    def _bisect_prefix(self, nodes: frozenset[int]) -> frozenset[int]:
        """The first node in topological order whose addition fails, and what feeds it."""
        order = sorted(nodes)
        chain = [(frozenset(order[:k + 1]), f"prefix to {self._name(order[k])}") for k in range(len(order))]
        last = self._first_failing(chain)
        prefix = chain[last][0]
        cone = frozenset(self._ancestors({order[last]})) & prefix
        if cone != prefix and self._try(cone, f"what feeds {self._name(order[last])}"):
            return cone
        return prefix

    def _bisect_suffix(self, nodes: frozenset[int]) -> frozenset[int]:
        """The latest topological start of `nodes` that still fails; the nodes before it are cut off."""
        order = sorted(nodes)
        chain = [(frozenset(order[j:]), f"suffix from {self._name(order[j])}") for j in reversed(range(len(order)))]
        return chain[self._first_failing(chain)][0]

    def _first_failing(self, chain: list[tuple[frozenset[int], str]]) -> int:
        """Bisection over growing candidates, the last of which fails: the index of the first that
        fails the same way. A candidate with no verdict (not a valid static model, or onnxruntime
        cannot run it) is replaced by the nearest one between the bounds that has one."""
        low, high = -1, len(chain) - 1
        while high - low > 1:
            middle = (low + high) // 2
            for index in sorted(range(low + 1, high), key=lambda i: abs(i - middle)):
                verdict = self._try(*chain[index])
                if verdict is not None:
                    break
            else:
                return high
            low, high = (low, index) if verdict else (index, high)
        return high

    def _trim(self, nodes: frozenset[int]) -> frozenset[int]:
        """Drop boundary nodes, halves of the boundary first, until no single one can go."""
        while True:
            for side in ("sinks", "sources"):
                smaller = self._drop_boundary(nodes, side)
                if smaller is not None:
                    nodes = smaller
                    break
            else:
                return nodes

    def _drop_boundary(self, nodes: frozenset[int], side: str) -> Optional[frozenset[int]]:
        edge = self._boundary(nodes, side)
        size = len(edge)
        while size >= 1:
            for start in range(0, len(edge), size):
                dropped = edge[start:start + size]
                smaller = nodes - set(dropped)
                what = ", ".join(self._name(i) for i in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
                if smaller and self._try(smaller, f"without {side} {what}"):
                    return smaller
            if self.stopped or size == 1:
                return None
            size = math.ceil(size / 2)
        return None

    def _name(self, index: int) -> str:
        node = self.nodes[index]
        return f"{node.op_type} {node.name!r}" if node.name else f"{node.op_type} #{index}"
