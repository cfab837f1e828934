"""Running a model on onnxruntime and comparing outputs with a reference: one function each."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union
from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from deploykit.core.config import ParitySection
from deploykit.core.errors import ConfigError, StageError


# "... running Gather node. Name:'/embedding/Gather' Status Message: indices element out of data
# bounds, idx=12 must be within the inclusive range [-10,9]"
_INDEX_OUTSIDE = re.compile(r"Gather node\. Name:'(?P<node>[^']*)'.*idx=(?P<index>-?\d+) must be within the "
                            r"inclusive range \[-?\d+,(?P<high>-?\d+)\]")


def run_onnx(model: Union[onnx.ModelProto, Path], inputs: Mapping[str, np.ndarray], *,
             stage: str) -> dict[str, np.ndarray]:
    """Run on onnxruntime's CPU provider with its graph optimisations off, so that its own
    fusions cannot hide (or cause) a difference between two of our graphs. A model already saved
    is best given as its path: onnxruntime reads the file, and the weights are not serialized again."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # its errors come back as the exception below, not as log lines
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        source = str(model) if isinstance(model, Path) else model.SerializeToString()
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        names = [out.name for out in session.get_outputs()]
        feed = {i.name: inputs[i.name] for i in session.get_inputs()}
        values = session.run(names, feed, quiet)
    except KeyError as exc:
        raise StageError(f"the graph needs an input {exc} that the config does not describe.", stage=stage,
                         hint="list every graph input under `inputs:`.") from None
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs/inputs
        outside = _INDEX_OUTSIDE.search(str(exc))
        if outside:  # the inputs hold an id the table has no row for: theirs to fix
            node, index, rows = outside["node"], outside["index"], int(outside["high"]) + 1
            raise ConfigError(f"token id {index} is outside the table of Gather node {node!r}, which has {rows} "
                              f"rows (ids 0 to {rows - 1}).", stage=stage,
                              hint=f"keep the ids under `inputs:` in [0, {rows}) (`range: [0, {rows}]` for "
                                   "generated ones).") from None
        first = str(exc).strip().splitlines()[0][:600]
        raise StageError(f"onnxruntime could not run the graph: {first}", stage=stage,
                         hint="check the input shapes and dtypes under `inputs:` against the model.") from None
    return dict(zip(names, values))


@dataclass
class OutputParity:
    """How one output compares with its reference."""

    name: str
    passed: bool
    metric: str
    shape: list[int]
    reference_shape: list[int]
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    median_abs: float = float("nan")
    max_rel: float = float("nan")
    cosine: float = float("nan")
    worst_index: list[int] = field(default_factory=list)
    worst_value: float = float("nan")
    worst_reference: float = float("nan")
    nan_count: int = 0
    inf_count: int = 0
    unmatched_nonfinite: int = 0  # NaN/Inf elements the reference does not have at the same place
    reference_nonfinite: int = 0  # NaN/Inf elements of the reference itself
    atol: float = 0.0
    rtol: float = 0.0
    min_cosine: float = 0.0
    needed_atol: float = float("nan")  # the smallest atol that would pass, with this rtol
    histogram: dict[str, int] = field(default_factory=dict)  # abs errors by decade
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.note and np.isnan(self.max_abs):
            return f"output {self.name!r}: {self.note}"
        where = ",".join(map(str, self.worst_index))
        # No atol passes NaN or Inf where the reference has a number (or another non-finite value).
        passes = (f" (atol {self.needed_atol:.3g} would pass)" if np.isfinite(self.needed_atol)
                  and not self.unmatched_nonfinite else "")
        return (f"output {self.name!r}: max abs error {self.max_abs:.3g} at [{where}] "
                f"(got {self.worst_value:.6g}, expected {self.worst_reference:.6g}), max rel {self.max_rel:.3g}, "
                f"cosine {self.cosine:.6f}; allowed atol {self.atol:g} + rtol {self.rtol:g}{passes}"
                + (f"; {self.note}" if self.note else "")
                + (f"; {self.unmatched_nonfinite} element(s) NaN or Inf where the reference has another value "
                   f"({self.nan_count} NaN, {self.inf_count} Inf in all)" if self.unmatched_nonfinite else "")
                + (f"; the reference itself has {self.reference_nonfinite} NaN or Inf element(s), which only the "
                   "same value matches: the inputs are likely outside what the model is meant for"
                   if self.reference_nonfinite else ""))


def compare_output(name: str, reference: np.ndarray, actual: np.ndarray, settings: ParitySection) -> OutputParity:
    atol, rtol, min_cosine = settings.tolerance(name)
    result = OutputParity(name=name, passed=False, metric=settings.metric, shape=list(actual.shape),
                          reference_shape=list(reference.shape), atol=atol, rtol=rtol, min_cosine=min_cosine)
    if actual.shape != reference.shape:
        if actual.size != reference.size:
            result.note = f"shape {list(actual.shape)} differs from the reference {list(reference.shape)}"
            return result
        result.note = f"compared as {list(reference.shape)}; the runtime gave shape {list(actual.shape)}"
        actual = actual.reshape(reference.shape)
    ref = reference.astype(np.float64)
    got = actual.astype(np.float64)
    result.nan_count = int(np.isnan(got).sum())
    result.inf_count = int(np.isinf(got).sum())
    if ref.size == 0:
        result.passed = True
        result.max_abs = result.mean_abs = result.max_rel = 0.0
        result.cosine = 1.0
        return result
    # A NaN where the reference has NaN, or the same Inf, is that value reproduced; any other
    # non-finite element is an error no tolerance covers.
    same = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (got == ref))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(got - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    result.unmatched_nonfinite = int((~np.isfinite(got) & ~same).sum())
    result.reference_nonfinite = int((~np.isfinite(ref)).sum())
    scale = np.where(np.isfinite(ref), np.abs(ref), 0.0)  # what rtol is relative to
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    result.worst_index = [int(i) for i in worst]
    result.worst_value = float(got[worst])
    result.worst_reference = float(ref[worst])
    result.max_abs = float(diff.max())
    result.mean_abs = float(diff.mean())
    result.median_abs = float(np.median(diff))
    result.needed_atol = float(max(0.0, (diff - rtol * scale).max()))
    result.histogram = error_histogram(diff)
    result.max_rel = float((diff / np.maximum(scale, 1e-12)).max())
    both = np.isfinite(ref) & np.isfinite(got)
    ref_f, got_f = np.where(both, ref, 0.0), np.where(both, got, 0.0)
    # Sums of products rather than np.dot / np.linalg.norm: those go to BLAS, whose threads, on a
    # machine whose cores are busy, made each call take ~10 ms instead of ~20 us for 32K elements.
    norms = np.sqrt((ref_f * ref_f).sum()) * np.sqrt((got_f * got_f).sum())
    result.cosine = float((ref_f * got_f).sum() / norms) if norms > 0 else float(np.array_equal(ref_f, got_f))
    finite = result.unmatched_nonfinite == 0
    checks = {
        "allclose": bool(np.all(diff <= atol + rtol * scale)),
        "max_abs": result.max_abs <= atol,
        "max_rel": result.max_rel <= rtol,
        "cosine": result.cosine >= min_cosine,
    }
    result.passed = finite and checks[settings.metric]
    return result


def agrees(name: str, reference: np.ndarray, actual: np.ndarray, settings: ParitySection) -> bool:
    """compare_output(...).passed without the statistics: for searches that judge thousands of pairs."""
    if settings.metric != "allclose" or actual.size != reference.size or not np.isfinite(reference).all():
        return compare_output(name, reference, actual, settings).passed  # NaN/Inf reproduced: compare_output's rule
    atol, rtol, _ = settings.tolerance(name)
    ref = reference.reshape(-1).astype(np.float64)
    got = actual.reshape(-1).astype(np.float64)
    with np.errstate(invalid="ignore"):  # NaN and Inf never pass, as in compare_output
        return bool(np.all(np.abs(got - ref) <= atol + rtol * np.abs(ref)) and np.isfinite(got).all())


HISTOGRAM_EDGES = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def error_histogram(diff: np.ndarray) -> dict[str, int]:
    """How many elements fall in each decade of absolute error: where the error mass is."""
    labels = ["0"] + [f"<{edge:g}" for edge in HISTOGRAM_EDGES[1:]] + [f">={HISTOGRAM_EDGES[-1]:g}"]
    exact = int((diff == 0).sum())
    counts = np.histogram(diff[diff > 0], bins=[*HISTOGRAM_EDGES, np.inf])[0]
    return {label: int(count) for label, count in zip(labels, [exact, *counts]) if count}


def format_histogram(histogram: dict[str, int], width: int = 30) -> list[str]:
    """A small text bar chart of an error histogram."""
    top = max(histogram.values(), default=1)
    return [f"{label:>7} | {'#' * max(1, round(width * count / top)):<{width}} {count}"
            for label, count in histogram.items()]


@dataclass
class StageParity:
    """Every output of one stage against the reference."""

    against: str
    outputs: list[OutputParity]

    @property
    def passed(self) -> bool:
        return all(out.passed for out in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def failures(self) -> list[OutputParity]:
        return [out for out in self.outputs if not out.passed]

    def to_dict(self) -> dict:
        return {"against": self.against, "passed": self.passed, "max_abs": self.max_abs,
                "outputs": [out.to_dict() for out in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict) -> StageParity:
        return cls(against=data["against"], outputs=[OutputParity(**out) for out in data["outputs"]])


def compare_outputs(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray],
                    settings: ParitySection, *, against: str) -> StageParity:
    outputs = []
    for name, ref in reference.items():
        if name not in actual:
            outputs.append(OutputParity(name=name, passed=False, metric=settings.metric, shape=[],
                                        reference_shape=list(ref.shape), note="output is missing"))
            continue
        outputs.append(compare_output(name, ref, actual[name], settings))
    return StageParity(against=against, outputs=outputs)
