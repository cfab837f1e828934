"""Which pass broke it: when every ONNX stage matched on onnxruntime but the final model differs on
ncnn, convert the stages' ONNX files and bisect for the first one ncnn gets wrong.

    find_culprit_pass([("simplify", 01_simplify.onnx), ("pass:x", 02_x.onnx), ...], inputs, reference,
                      settings, workdir=scratch)

Each probed stage is converted in its own folder and judged as `deploykit run` judges its final
graph: a converter error, a problem line, a layer the ncnn runtime lacks, or a model ncnn cannot
load or run makes the stage "not comparable", and it is stepped over; otherwise its ncnn outputs
are compared with the reference. A pass can be exact on onnxruntime and still write a form the
converter gets wrong (pnnx turns a Gather of a constant index list into the Crop of one index);
this names it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from deploykit.config import ConverterSection, ParitySection
from deploykit.converters import make_converter
from deploykit.errors import StageError
from deploykit.ncnn_runtime import run_ncnn, unknown_layers
from deploykit.onnx_io import chain_order
from deploykit.parity import compare_outputs
from deploykit.stages.convert import describe_leftovers

MATCHES, DIFFERS, NOT_COMPARABLE = "matches", "differs", "not comparable"
PASS_PREFIX = "pass:"


@dataclass
class Culprit:
    """The stage after which ncnn first goes wrong. Files are named as in report.json (`artifact`)."""

    pass_name: Optional[str]        # None: already wrong before any pass (the converter/runtime on that graph)
    stage_file: str                 # the first stage file that differs on ncnn
    last_good_file: Optional[str]   # the last one before it that matches on ncnn; None if none was found
    probes: int                     # how many stages were converted and run
    detail: str                     # one sentence
    nodes_changed: list[str] = field(default_factory=list)  # nodes of stage_file not in last_good_file
    verdicts: dict[str, str] = field(default_factory=dict)  # file -> what its probe found, for the probed stages

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return self.detail


@dataclass
class _Verdict:
    outcome: str  # MATCHES | DIFFERS | NOT_COMPARABLE
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.outcome}: {self.reason}" if self.reason else self.outcome


def find_culprit_pass(stages: list[tuple[str, Path]], inputs: Mapping[str, np.ndarray],
                      reference: Mapping[str, np.ndarray], settings: ParitySection, *,
                      converter: Union[str, ConverterSection] = "pnnx", timeout: float = 120,
                      workdir: Path, last_differs: Optional[str] = None) -> Optional[Culprit]:
    """The first stage, among `stages` in run order, whose ONNX file converts to an ncnn model that
    differs from `reference`; None when the last stage matches on ncnn after all.

    The last stage is probed first, then the stages between the last one that matched and the first
    one that differed are bisected; a probe's result is never recomputed. A stage that is not
    comparable is stepped over (the stage nearest the middle is tried instead). When the failure
    comes and goes, the answer is the first failing stage after the last matching one found.
    `converter` is a converter name or the config's converter section (its path, args and fp16).
    `last_differs` is what ncnn was already seen to get wrong on the last stage (the run's own
    verify stage found it), so that stage is not converted again.
    """
    if not stages:
        return None
    prober = _Prober(stages, inputs, reference, settings, converter, timeout, Path(workdir))
    last = len(stages) - 1
    if last_differs is not None:
        prober.verdicts[last] = _Verdict(DIFFERS, last_differs)
    if prober.judge(last).outcome == MATCHES:
        return None
    good, bad = -1, last  # -1: no stage known to match yet
    while (index := prober.next_between(good, bad)) is not None:
        outcome = prober.judge(index).outcome
        if outcome == MATCHES:
            good = index
        elif outcome == DIFFERS:
            bad = index
    return _culprit(prober, good, bad)


class _Prober:
    """Converts and runs one stage at a time, each in its own folder, and remembers the verdicts."""

    def __init__(self, stages: list[tuple[str, Path]], inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], settings: ParitySection,
                 converter: Union[str, ConverterSection], timeout: float, workdir: Path) -> None:
        self.stages = [(name, Path(path)) for name, path in stages]
        self.inputs, self.reference, self.settings = inputs, reference, settings
        self.section = converter if isinstance(converter, ConverterSection) else ConverterSection(name=converter)
        self.timeout, self.workdir = timeout, workdir
        self.verdicts: dict[int, _Verdict] = {}
        self.converted = 0

    def judge(self, index: int) -> _Verdict:
        if index not in self.verdicts:
            self.verdicts[index] = self._probe(index)
        return self.verdicts[index]

    def next_between(self, good: int, bad: int) -> Optional[int]:
        """The unprobed stage strictly between the two nearest their middle (the earlier one on a tie)."""
        middle = (good + bad) / 2
        left = [i for i in range(good + 1, bad) if i not in self.verdicts]
        return min(left, key=lambda i: (abs(i - middle), i), default=None)

    def _probe(self, index: int) -> _Verdict:
        self.converted += 1
        _, path = self.stages[index]
        folder = self.workdir / f"{index:02d}-{path.stem}"
        folder.mkdir(parents=True, exist_ok=True)
        tool = make_converter(self.section)
        try:
            model = onnx.load(str(path))
            feed = _feed(model, self.inputs)
            if isinstance(feed, str):
                return _Verdict(NOT_COMPARABLE, feed)
            source = path
            if tool.name == "onnx2ncnn":  # as the convert stage gives it: chains contiguous
                source = folder / "chain_ordered.onnx"
                onnx.save(chain_order(model), str(source))
            outputs = [out.name for out in model.graph.output]
            result = tool.convert(source, feed, outputs, folder, fp16=self.section.fp16, args=self.section.args,
                                  timeout=self.timeout)
            if result.problems:
                return _Verdict(NOT_COMPARABLE, f"{tool.name} reported: {result.problems[0]}")
            leftovers = unknown_layers(result.param)
            if leftovers:
                return _Verdict(NOT_COMPARABLE, describe_leftovers(tool.name, leftovers, model.graph))
            got = run_ncnn(result.param, result.bin, [(blob, feed[blob.onnx_name]) for blob in result.inputs],
                           result.outputs, timeout=self.timeout, fp16=self.section.fp16)
        except StageError as exc:
            return _Verdict(NOT_COMPARABLE, exc.message)
        except (OSError, DecodeError) as exc:
            return _Verdict(NOT_COMPARABLE, f"{path.name} could not be read: {exc}")
        parity = compare_outputs(self.reference, got, self.settings, against="the export (on ncnn)")
        if parity.passed:
            return _Verdict(MATCHES, f"max abs error {parity.max_abs:.3g}")
        return _Verdict(DIFFERS, "; ".join(out.describe() for out in parity.failures()))


def _feed(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> Union[dict[str, np.ndarray], str]:
    """The inputs in the graph's input order, each cast to the dtype the graph declares (a pass may
    turn integer ids into a float input); a string saying what is missing if one is not given."""
    initializers = {init.name for init in model.graph.initializer}
    feed = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        if value.name not in inputs:
            return f"the graph has an input {value.name!r} that was not given"
        array = np.asarray(inputs[value.name])
        elem_type = value.type.tensor_type.elem_type
        declared = onnx.helper.tensor_dtype_to_np_dtype(elem_type) if elem_type else array.dtype
        feed[value.name] = array if array.dtype == declared else array.astype(declared)
    return feed


def _culprit(prober: _Prober, good: int, bad: int) -> Culprit:
    stages = prober.stages
    name, path = stages[bad]
    pass_name = name[len(PASS_PREFIX):] if name.startswith(PASS_PREFIX) else None
    baseline = good if good >= 0 else bad - 1  # without a matching stage, what the stage itself changed
    changed = _nodes_changed(stages[baseline][1], path) if baseline >= 0 else []
    verdict = prober.verdicts[bad]
    skipped = [stages[i][1].name for i, v in sorted(prober.verdicts.items())
               if good < i < bad and v.outcome == NOT_COMPARABLE]
    probes = prober.converted
    if good < 0 and bad == 0:
        detail = (f"ncnn already differs on {path.name}, before any pass, so the converter or the ncnn runtime "
                  f"gets that graph wrong ({verdict.reason}).")
    elif good < 0:
        detail = (f"{path.name} ({name}) is the first stage whose conversion ncnn can run, and it differs "
                  f"({verdict.reason}); no earlier stage could be compared, so the fault may be older.")
    else:
        what = f"pass {pass_name!r}" if pass_name else name
        between = (f"; {', '.join(skipped)} in between could not be compared on ncnn, so the fault may be in "
                   f"their passes" if skipped else "")
        found = verdict.reason if verdict.outcome == DIFFERS else f"the run's verify stage found it differs; here: {verdict}"
        detail = (f"ncnn first differs after {what}: {path.name} gives {found}, while {stages[good][1].name} "
                  f"matches{between} ({probes} of {len(stages)} stage(s) converted).")
    return Culprit(pass_name=pass_name, stage_file=path.name,
                   last_good_file=stages[good][1].name if good >= 0 else None, probes=probes, detail=detail,
                   nodes_changed=changed,
                   verdicts={stages[i][1].name: str(v) for i, v in sorted(prober.verdicts.items())})


def _nodes_changed(before: Path, after: Path) -> list[str]:
    """Names of the nodes of `after` that `before` has not, with the same op, inputs, outputs and
    attributes: the nodes a pass added, or rewired or edited in place."""
    try:
        old = {node.SerializeToString(deterministic=True) for node in onnx.load(str(before)).graph.node}
        new = onnx.load(str(after)).graph.node
    except (OSError, DecodeError):
        return []
    return [node.name or f"{node.op_type} -> {', '.join(node.output)}" for node in new
            if node.SerializeToString(deterministic=True) not in old]
