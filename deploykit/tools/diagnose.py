"""Which tensor first diverges: run two versions of a model tensor by tensor and name the first
place where their values part, between two ONNX graphs or between the ONNX graph and its ncnn model.

    first_divergence_onnx(before, after, inputs, settings)                      # after a pass
    first_divergence_ncnn(model, param, bin, inputs, blobs_in, settings)        # after the converter

Both return None when every shared tensor agrees within the parity tolerances.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union
from collections.abc import Callable, Mapping

import numpy as np
import onnx

from deploykit.core.config import ParitySection
from deploykit.core.errors import StageError
from deploykit.core.parity import OutputParity, agrees, compare_output, run_onnx
from deploykit.ncnn.converters.base import Blob
from deploykit.ncnn.runtime import extract_blobs, read_param_layers

STAGE = "diagnose"
# How many ONNX tensors a blob is matched to at most (or, with a metric other than allclose, how many
# of the closest by a cheap error measure get the full comparison).
CLOSEST = 3
MAX_FULL = 32  # of the tensors the sampled elements do not rule out, how many at most get the full comparison
SAMPLE = 256  # elements of each tensor that rank the ONNX tensors of a blob's size


@dataclass
class Divergence:
    """The first tensor (ONNX) or ncnn layer whose values differ from the reference beyond tolerance.

    `tensor`, `node` and `op` always name the ONNX side: the diverging tensor of the `after` graph,
    or, for ncnn, the ONNX tensor the diverging blob most likely stands for (empty if none has
    its size). `statistics` is OutputParity.to_dict() of that comparison, the reference being
    `before` or the ONNX graph. `compared` counts the tensors (blobs) compared up to and
    including this one; `matched` how many of them agreed.
    """

    where: str  # "onnx" | "ncnn"
    tensor: str
    node: str
    op: str
    statistics: dict
    compared: int
    matched: int = 0
    layer: str = ""  # ncnn only: the layer's name, type and output blob
    layer_type: str = ""
    blob: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        stats = self.statistics
        error = (f"max abs error {stats['max_abs']:.3g}, cosine {stats['cosine']:.6f}"
                 if not np.isnan(stats["max_abs"]) else stats.get("note") or "not comparable")
        onnx_side = f"{self.tensor!r} of {self.op} node {self.node!r}" if self.node else repr(self.tensor)
        if self.where == "onnx":
            return (f"the first tensor that differs is {onnx_side}: {error}; "
                    f"the {self.compared - 1} shared tensor(s) computed before it match.")
        stands_for = (f"it most likely stands for ONNX tensor {onnx_side}, from which it differs by {error}"
                      if self.tensor
                      else "no ONNX tensor has its size")
        return (f"the first ncnn layer whose output matches no ONNX tensor is {self.layer_type} {self.layer!r} "
                f"(blob {self.blob}); {stands_for}; {self.matched} of {self.compared} ncnn blob(s) up to it "
                f"match an ONNX tensor.")


class Budget:
    """How long a diagnosis may still take: `seconds` from when it was made (inf: no bound), shared
    by the searches of one failed check; `how` says where the number came from, for messages."""

    def __init__(self, seconds: float, how: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.how, self.clock = seconds, how, clock
        self.started = clock()

    def spent(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.seconds - self.spent()

    def exhausted(self) -> bool:
        return self.left() <= 0

    def timeout(self, limit: float) -> float:
        """A child's timeout: `limit`, or what is left of the budget when that is less."""
        return max(min(limit, self.left()), 0.01)

    def describe(self) -> str:
        return f"{self.seconds:.3g} s ({self.how})" if self.how else f"{self.seconds:.3g} s"


UNLIMITED = float("inf")


@dataclass
class OutOfBudget:
    """A search the diagnosis budget stopped before it found anything: what it had done by then."""

    search: str   # "first divergence" | "pass bisection"
    done: str     # what it got through, one clause
    budget: str   # Budget.describe()

    def to_dict(self) -> dict:
        return {"stopped": True, **asdict(self)}

    def describe(self) -> str:
        return f"not found within the diagnosis budget ({self.done})."


class BudgetExhausted(Exception):
    """Raised inside a search when its budget runs out; the search's caller turns it into OutOfBudget."""

    def __init__(self, done: str) -> None:
        super().__init__(done)
        self.done = done


# ---------------------------------------------------------------------------------------------
# ONNX against ONNX


def first_divergence_onnx(before: onnx.ModelProto, after: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                          settings: ParitySection, *, renames: Optional[Mapping[str, str]] = None
                          ) -> Optional[Divergence]:
    """The first tensor of `after`, in its node order, whose values differ from the tensor of the
    same name in `before` (or the `before` name that `renames` maps to it: {before: after}).

    Passes keep the names of the tensors they do not touch, so this is the rewritten region, or
    the tensor just after it. Tensors of only one graph, or of unknown dtype, are not compared.
    """
    before_names = {**{name: name for name in _node_outputs(before)},
                    **{after_name: before_name for before_name, after_name in (renames or {}).items()}}
    after_dtypes = _known_dtypes(after)
    before_dtypes = _known_dtypes(before)
    shared = {name: before_names[name] for name in _node_outputs(after)
              if name in before_names and name in after_dtypes and before_names[name] in before_dtypes}
    if not shared:
        return None
    reference = run_onnx(_exposing(before, set(shared.values()), before_dtypes), _feed(before, inputs), stage=STAGE)
    actual = run_onnx(_exposing(after, set(shared), after_dtypes), _feed(after, inputs), stage=STAGE)
    compared = 0
    for node in after.graph.node:
        for name in node.output:
            if name not in shared:
                continue
            compared += 1
            result = compare_output(name, reference[shared[name]], actual[name], settings)
            if not result.passed:
                return Divergence("onnx", name, node.name, node.op_type, result.to_dict(), compared,
                                  matched=compared - 1)
    return None


def onnx_tensor_values(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every node output of known dtype, computed on onnxruntime, and every initializer."""
    dtypes = _known_dtypes(model)
    names = {name for name in _node_outputs(model) if name in dtypes}
    values = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    feed = _feed(model, inputs)
    values.update(feed)
    values.update(run_onnx(_exposing(model, names, dtypes), feed, stage=STAGE))
    return values


def _feed(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs each in the dtype the graph declares: a pass may turn integer ids into a float
    input (same values), so `before` and `after` can differ there."""
    feed = dict(inputs)
    for value in model.graph.input:
        elem_type = value.type.tensor_type.elem_type
        if value.name in feed and elem_type:
            feed[value.name] = feed[value.name].astype(onnx.helper.tensor_dtype_to_np_dtype(elem_type), copy=False)
    return feed


def _node_outputs(model: onnx.ModelProto) -> list[str]:
    return [name for node in model.graph.node for name in node.output if name]


def _known_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the graph's tensors; onnxruntime needs one for every output it returns."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        inferred = model.graph
    dtypes = {}
    for value in [*inferred.value_info, *inferred.input, *inferred.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            dtypes[value.name] = value.type.tensor_type.elem_type
    return dtypes


def _exposing(model: onnx.ModelProto, names: set[str], dtypes: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of the model whose outputs also include `names` (shapes left free)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    existing = {out.name for out in exposed.graph.output}
    exposed.graph.output.extend(onnx.helper.make_tensor_value_info(name, dtypes[name], None)
                                for name in _node_outputs(model) if name in names and name not in existing)
    return exposed


# ---------------------------------------------------------------------------------------------
# ONNX against ncnn


def first_divergence_ncnn(model: onnx.ModelProto, param: Path, weights: Path, inputs: Mapping[str, np.ndarray],
                          blobs_in: list[Blob], settings: ParitySection, *, timeout: float = 300.0,
                          budget: Optional[Budget] = None) -> Optional[Union[Divergence, OutOfBudget]]:
    """The first ncnn layer, in .param order, whose output agrees with no ONNX tensor and leads to
    the end of the model through such blobs: where the ncnn model starts to compute something else.

    pnnx numbers its blobs, so each blob is matched by value: against every ONNX tensor of the
    same size, the reference being `model` on onnxruntime. A blob with no match is harmless when
    every layer after it matches again (a fused or re-laid-out intermediate); it is a divergence
    when some path from it runs through unmatched blobs only, to the end of the model. `inputs`
    are the ONNX graph's inputs; `blobs_in` the converter's input blobs (Conversion.inputs).
    One onnxruntime run computes every tensor and one ncnn child extracts every blob. With a
    `budget`, an OutOfBudget says how far the search got when it ran out.
    Raises StageError (stage "diagnose") when onnxruntime or ncnn cannot run the models.
    """
    budget = budget or Budget(UNLIMITED)
    try:
        return _first_divergence_ncnn(model, Path(param), Path(weights), inputs, blobs_in, settings, timeout, budget)
    except BudgetExhausted as stopped:
        return OutOfBudget("first divergence", stopped.done, budget.describe())


def _first_divergence_ncnn(model: onnx.ModelProto, param: Path, weights: Path, inputs: Mapping[str, np.ndarray],
                           blobs_in: list[Blob], settings: ParitySection, timeout: float,
                           budget: Budget) -> Optional[Divergence]:
    if budget.exhausted():
        raise BudgetExhausted("nothing was compared")
    layers = read_param_layers(param)
    onnx_values = onnx_tensor_values(model, inputs)
    if budget.exhausted():
        raise BudgetExhausted("onnxruntime computed every tensor; no ncnn blob was extracted")
    fed = {blob.blob: blob.onnx_name for blob in blobs_in}
    wanted = [blob for _, _, _, outs in layers for blob in outs if blob not in fed]
    feeds = [(blob, onnx_values[blob.onnx_name]) for blob in blobs_in]
    try:
        ncnn_values = extract_blobs(param, weights, feeds, wanted, timeout=budget.timeout(timeout))
    except StageError:
        if budget.exhausted():
            raise BudgetExhausted(f"extracting the {len(wanted)} ncnn blob(s) took longer") from None
        raise
    by_size = _BySize(onnx_values, settings)

    matches: dict[str, list[str]] = {blob: [name] for blob, name in fed.items()}
    compared: list[str] = []  # the blobs that had ONNX tensors of their size, in layer order
    for count, blob in enumerate(wanted):
        if count % 64 == 0 and budget.exhausted():
            raise BudgetExhausted(f"{count} of {len(wanted)} ncnn blob(s) compared with the ONNX tensors")
        if blob not in ncnn_values:
            continue
        if by_size.names(ncnn_values[blob].size):
            compared.append(blob)
        matches[blob] = _closest_agreeing(blob, ncnn_values[blob], by_size, onnx_values, settings)

    bad = _unmatched_to_the_end(layers, matches)
    for kind, name, ins, outs in layers:
        first_bad = next((blob for blob in outs if blob in bad), None)
        if first_bad is None:
            continue
        blob = first_bad
        upstream = [tensor for b in ins for tensor in matches.get(b, [])]
        tensor, stats = _stands_for(model, blob, ncnn_values[blob], upstream, by_size, onnx_values, settings)
        if stats is None:
            stats = OutputParity(name=blob, passed=False, metric=settings.metric, shape=list(ncnn_values[blob].shape),
                                 reference_shape=[], note="no ONNX tensor has its size")
        node = _producer(model, tensor)
        so_far = compared[:compared.index(blob) + 1] if blob in compared else compared
        return Divergence("ncnn", tensor, node.name if node else "", node.op_type if node else "", stats.to_dict(),
                          len(so_far), matched=sum(1 for b in so_far if matches[b]), layer=name, layer_type=kind,
                          blob=blob)
    return None


def _comparable(value: np.ndarray) -> bool:
    return value.size > 0 and (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_)


def _as_reference(blob_value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """An ncnn blob in the ONNX tensor's shape; ncnn keeps integers as int32 in its 32-bit cells."""
    if np.issubdtype(reference.dtype, np.integer) or reference.dtype == np.bool_:
        blob_value = blob_value.view(np.int32)
    return blob_value.reshape(reference.shape)


class _BySize:
    """The ONNX tensors of each size, with the same SAMPLE elements of each: a blob is ranked against
    all tensors of its size on those elements, and compared in full only with the closest few.
    Ranking on every element made the search quadratic in the model (minutes on a Swin-style model,
    whose blocks give hundreds of tensors of one size)."""

    def __init__(self, onnx_values: Mapping[str, np.ndarray], settings: ParitySection) -> None:
        grouped: dict[int, list[str]] = defaultdict(list)
        for name, value in onnx_values.items():
            if _comparable(value):
                grouped[value.size].append(name)
        self._names = dict(grouped)
        self._groups: dict[int, tuple] = {}
        self._values, self._settings = onnx_values, settings

    def names(self, size: int) -> list[str]:
        return self._names.get(size, [])

    def group(self, size: int) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(names, sampled positions, samples [n, k], integer mask [n], rtol [n], atol [n]) for one size."""
        if size not in self._groups:
            names = self.names(size)
            positions = np.unique(np.linspace(0, size - 1, min(SAMPLE, size)).astype(np.int64))
            values = [self._values[name] for name in names]
            integer = np.array([np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_ for v in values])
            samples = np.array([v.reshape(-1)[positions].astype(np.float64) for v in values]).reshape(
                len(names), len(positions))
            tolerances = np.array([self._settings.tolerance(name)[:2] for name in names]).reshape(len(names), 2)
            self._groups[size] = (names, positions, samples, integer, tolerances[:, 1], tolerances[:, 0])
        return self._groups[size]

    def sampled(self, blob_value: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, reference samples, the blob's samples read as each reference's dtype)."""
        names, positions, samples, integer, _, _ = self.group(blob_value.size)
        flat = blob_value.reshape(-1)
        as_float = flat[positions].astype(np.float64)
        as_int = flat.view(np.int32)[positions].astype(np.float64) if flat.dtype.itemsize == 4 else as_float
        return names, samples, np.where(integer[:, None], as_int[None, :], as_float[None, :])


def _closest_agreeing(blob_name: str, blob_value: np.ndarray, by_size: _BySize,
                      onnx_values: Mapping[str, np.ndarray], settings: ParitySection) -> list[str]:
    """The ONNX tensors the blob agrees with, among those closest to it on the sampled elements
    (at most CLOSEST). With `allclose`, a tensor the sampled elements already fail cannot pass, so
    only the others are compared in full, closest first, up to MAX_FULL of them."""
    if not by_size.names(blob_value.size) or not np.isfinite(blob_value).all():
        return []  # a NaN or Inf agrees with nothing, as in compare_output
    names, reference, got = by_size.sampled(blob_value)
    _, _, _, _, rtol, atol = by_size.group(blob_value.size)
    with np.errstate(invalid="ignore"):
        excess = np.nan_to_num(np.abs(got - reference) - rtol[:, None] * np.abs(reference), nan=np.inf).max(axis=1)
    order = np.argsort(excess, kind="stable")
    if settings.metric == "allclose":
        possible = [i for i in order if excess[i] <= atol[i]]
        if len(possible) > MAX_FULL:  # many agree on the sample: rank those on a larger one
            possible = _ranked_on_more(blob_value, possible, names, onnx_values, rtol, atol)
        candidates = [names[i] for i in possible[:MAX_FULL]]
    else:
        candidates = [names[i] for i in order[:CLOSEST]]
    if blob_name in onnx_values and blob_name not in candidates and onnx_values[blob_name].size == blob_value.size:
        candidates.insert(0, blob_name)  # onnx2ncnn names its blobs after the ONNX tensors
    agreeing = []
    for name in candidates:
        if agrees(name, onnx_values[name], _as_reference(blob_value, onnx_values[name]), settings):
            agreeing.append(name)
            if len(agreeing) == CLOSEST:
                break
    return agreeing


def _ranked_on_more(blob_value: np.ndarray, indices: list[int], names: list[str],
                    onnx_values: Mapping[str, np.ndarray], rtol: np.ndarray, atol: np.ndarray) -> list[int]:
    """`indices` (into `names`) that SAMPLE * 16 elements do not rule out either, closest first."""
    flat = blob_value.reshape(-1)
    positions = np.unique(np.linspace(0, flat.size - 1, min(SAMPLE * 16, flat.size)).astype(np.int64))
    scored = []
    for i in indices:
        reference = onnx_values[names[i]].reshape(-1)
        got = _as_reference(blob_value, onnx_values[names[i]]).reshape(-1)[positions].astype(np.float64)
        ref = reference[positions].astype(np.float64)
        with np.errstate(invalid="ignore"):
            excess = np.nan_to_num(np.abs(got - ref) - rtol[i] * np.abs(ref), nan=np.inf).max()
        if excess <= atol[i]:
            scored.append((excess, i))
    return [i for _, i in sorted(scored)]


def _unmatched_to_the_end(layers: list[tuple[str, str, list[str], list[str]]],
                          matches: Mapping[str, list[str]]) -> set[str]:
    """Blobs that match no ONNX tensor and from which some path runs through unmatched blobs only,
    to a blob nothing reads (the end of the model)."""
    consumers: dict[str, list[list[str]]] = defaultdict(list)
    for _, _, ins, outs in layers:
        for blob in ins:
            consumers[blob].append(outs)
    bad: set[str] = set()
    for _, _, _, outs in reversed(layers):
        for blob in outs:
            if matches.get(blob, []) or blob not in matches:  # matched, or not extracted
                continue
            if not consumers[blob] or any(out in bad for outs_after in consumers[blob] for out in outs_after):
                bad.add(blob)
    return bad


def _stands_for(model: onnx.ModelProto, blob: str, blob_value: np.ndarray, upstream: list[str], by_size: _BySize,
                onnx_values: Mapping[str, np.ndarray], settings: ParitySection
                ) -> tuple[str, Optional[OutputParity]]:
    """The ONNX tensor a diverging blob most likely stands for: the tensor of its name and size
    (onnx2ncnn keeps the ONNX names), else one of its size computed from the tensors its layer's
    inputs matched, and then the one closest in direction (cosine; ranked on the sampled elements,
    the best few compared in full)."""
    if blob in onnx_values and onnx_values[blob].size == blob_value.size:
        return blob, compare_output(blob, onnx_values[blob], _as_reference(blob_value, onnx_values[blob]), settings)
    if not by_size.names(blob_value.size):
        return "", None
    after_inputs = _descendants(model, upstream)
    names, reference, got = by_size.sampled(blob_value)
    with np.errstate(invalid="ignore", divide="ignore"):
        norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1)
        cosine = np.nan_to_num((reference * got).sum(axis=1) / norms, nan=-2.0)
    ranked = sorted(range(len(names)), key=lambda i: (names[i] not in after_inputs, -cosine[i]))[:CLOSEST * 3]
    best: Optional[tuple[tuple, str, OutputParity]] = None
    for index in ranked:
        name = names[index]
        result = compare_output(name, onnx_values[name], _as_reference(blob_value, onnx_values[name]), settings)
        full_cosine = result.cosine if not np.isnan(result.cosine) else -2.0
        rank = (name not in after_inputs, -full_cosine, result.max_abs)
        if best is None or rank < best[0]:
            best = (rank, name, result)
    return ("", None) if best is None else (best[1], best[2])


def _descendants(model: onnx.ModelProto, tensors: list[str]) -> set[str]:
    reached = set(tensors)
    for node in model.graph.node:  # in topological order, so one sweep suffices
        if any(name in reached for name in node.input):
            reached.update(node.output)
    return reached - set(tensors)


def _producer(model: onnx.ModelProto, tensor: str) -> Optional[onnx.NodeProto]:
    return next((node for node in model.graph.node if tensor in node.output), None)

