"""Which pass broke it: when every ONNX stage matched on onnxruntime but the final model differs on
ncnn, convert the stages' ONNX files and bisect for the first one ncnn gets wrong.

    find_culprit_pass([("simplify", 01_simplify.onnx), ("pass:x", 02_x.onnx), ...], inputs, reference,
                      settings, workdir=scratch)
    search_stages(count, judge)        # the search alone, for any judge of a stage index

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
from typing import Optional, Union
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from deploykit.core.artifacts import sha256
from deploykit.core.config import ConverterSection, ParitySection
from deploykit.core.parity import compare_outputs
from deploykit.ncnn.judge import convert_and_run
from deploykit.tools.diagnose import UNLIMITED, Budget

MATCHES, DIFFERS, NOT_COMPARABLE = "matches", "differs", "not comparable"
OUT_OF_BUDGET = "not judged: the diagnosis budget ran out"
PASS_PREFIX = "pass:"


@dataclass
class Culprit:
    """The stage after which ncnn first goes wrong. Files are named as in report.json (`artifact`)."""

    pass_name: Optional[str]        # None: already wrong before any pass (the converter/runtime on that graph)
    stage_file: str                 # the first stage file that differs on ncnn (so far, when `stopped`)
    last_good_file: Optional[str]   # the last one before it that matches on ncnn; None if none was found
    probes: int                     # how many stages were converted and run
    detail: str                     # one sentence
    nodes_changed: list[str] = field(default_factory=list)  # nodes of stage_file not in last_good_file
    verdicts: dict[str, str] = field(default_factory=dict)  # file -> what its probe found, for the probed stages
    stopped: bool = False           # the diagnosis budget ran out before the search ended

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return self.detail


@dataclass
class Verdict:
    outcome: str  # MATCHES | DIFFERS | NOT_COMPARABLE | OUT_OF_BUDGET
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.outcome}: {self.reason}" if self.reason else self.outcome


@dataclass
class Search:
    """Where a bisection over stages ended: `bad` differs (and `good` matches, -1: none found);
    every stage strictly between them was judged not comparable, unless `stopped`."""

    good: int
    bad: int
    verdicts: dict[int, Verdict]
    stopped: bool = False


def search_stages(count: int, judge: Callable[[int], Verdict], *, known: Optional[Mapping[int, Verdict]] = None,
                  first: Sequence[int] = (), budget: Optional[Budget] = None) -> Optional[Search]:
    """Bisect stages 0..count-1, in run order, for the first one `judge` finds DIFFERS after the last
    one that MATCHES; None when the last stage matches after all.

    The last stage is judged first (or taken from `known`), then the stages between the last one that
    matched and the first one that differed; a stage is never judged twice. A stage that is not
    comparable is stepped over (the unjudged stage nearest the middle is tried instead). `first`
    are stages to try before the middle while they lie between the bounds (the stage before and the
    stage of a suspect). The search stops with `stopped` when `budget` runs out or `judge` says so."""
    budget = budget or Budget(UNLIMITED)
    verdicts: dict[int, Verdict] = dict(known or {})
    preferred = list(first)
    last = count - 1

    def judged(index: int) -> Verdict:
        if index not in verdicts:
            verdicts[index] = Verdict(OUT_OF_BUDGET) if budget.exhausted() else judge(index)
        return verdicts[index]

    if judged(last).outcome == MATCHES:
        return None
    if verdicts[last].outcome == OUT_OF_BUDGET:
        del verdicts[last]
        return Search(-1, last, verdicts, stopped=True)
    good, bad, stopped = -1, last, False
    while not stopped:
        index = next((i for i in preferred if good < i < bad and i not in verdicts), None)
        if index is None:
            middle = (good + bad) / 2
            left = [i for i in range(good + 1, bad) if i not in verdicts]
            index = min(left, key=lambda i: (abs(i - middle), i), default=None)
        if index is None:
            break
        outcome = judged(index).outcome
        if outcome == MATCHES:
            good = index
        elif outcome == DIFFERS:
            bad = index
        elif outcome == OUT_OF_BUDGET:
            del verdicts[index]  # never judged
            stopped = True
    return Search(good, bad, verdicts, stopped)


def find_culprit_pass(stages: list[tuple[str, Path]], inputs: Mapping[str, np.ndarray],
                      reference: Mapping[str, np.ndarray], settings: ParitySection, *,
                      converter: Union[str, ConverterSection] = "pnnx", timeout: float = 120,
                      workdir: Path, last_differs: Optional[str] = None, suspect: Optional[str] = None,
                      budget: Optional[Budget] = None) -> Optional[Culprit]:
    """The first stage, among `stages` in run order, whose ONNX file converts to an ncnn model that
    differs from `reference`; None when the last stage matches on ncnn after all.

    See `search_stages`; when the failure comes and goes, the answer is the first failing stage after
    the last matching one found. `converter` is a converter name or the config's converter section
    (its path, args and fp16). `last_differs` is what ncnn was already seen to get wrong on the last
    stage (the run's own verify stage found it), so that stage is not converted again. `suspect` is
    the name of a node of the last stage where ncnn was seen to go wrong (the first divergence): the
    stage that last changed it, and the one before, are converted first. Identical stage files are
    judged once. With a `budget`, the search stops when it runs out, and the culprit says how far it got.
    """
    if not stages:
        return None
    budget = budget or Budget(UNLIMITED)
    prober = _Prober(stages, inputs, reference, settings, converter, timeout, Path(workdir), budget)
    last = len(stages) - 1
    known = {last: Verdict(DIFFERS, last_differs)} if last_differs is not None else {}
    if known:
        prober.by_content[sha256(stages[last][1])] = known[last]
    changed_at = stage_that_wrote(prober.stages, suspect) if suspect else None
    first = [changed_at - 1, changed_at] if changed_at is not None else []
    search = search_stages(len(stages), prober.judge, known=known, first=first, budget=budget)
    return None if search is None else _culprit(prober, search)


class _Prober:
    """Converts and runs one stage at a time, each in its own folder; a file identical to one judged
    already gets that verdict."""

    def __init__(self, stages: list[tuple[str, Path]], inputs: Mapping[str, np.ndarray],
                 reference: Mapping[str, np.ndarray], settings: ParitySection,
                 converter: Union[str, ConverterSection], timeout: float, workdir: Path, budget: Budget) -> None:
        self.stages = [(name, Path(path)) for name, path in stages]
        self.inputs, self.reference, self.settings = inputs, reference, settings
        self.section = converter if isinstance(converter, ConverterSection) else ConverterSection(name=converter)
        self.timeout, self.workdir, self.budget = timeout, workdir, budget
        self.by_content: dict[str, Verdict] = {}
        self.converted = 0

    def judge(self, index: int) -> Verdict:
        path = self.stages[index][1]
        try:
            content = sha256(path)
        except OSError as exc:
            return Verdict(NOT_COMPARABLE, f"{path.name} could not be read: {exc}")
        if content not in self.by_content:
            verdict = self._probe(index)
            if verdict.outcome == OUT_OF_BUDGET:
                self.converted -= 1  # cut short: not counted as converted
                return verdict
            self.by_content[content] = verdict
        return self.by_content[content]

    def _probe(self, index: int) -> Verdict:
        self.converted += 1
        _, path = self.stages[index]
        folder = self.workdir / f"{index:02d}-{path.stem}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            model = onnx.load(str(path))
        except (OSError, DecodeError) as exc:
            return Verdict(NOT_COMPARABLE, f"{path.name} could not be read: {exc}")
        feed = _feed(model, self.inputs)
        if isinstance(feed, str):
            return Verdict(NOT_COMPARABLE, feed)
        try:
            outcome = convert_and_run(path, feed, self.section, folder, loaded=model,
                                      timeout=lambda: self.budget.timeout(self.timeout))
        except OSError as exc:
            return Verdict(NOT_COMPARABLE, f"{path.name} could not be converted: {exc}")
        if outcome.outputs is None:
            stopped = (outcome.convert_error or outcome.load_error) and self.budget.exhausted()
            return Verdict(OUT_OF_BUDGET) if stopped else Verdict(NOT_COMPARABLE, outcome.why_not())
        parity = compare_outputs(self.reference, outcome.outputs, self.settings, against="the export (on ncnn)")
        if parity.passed:
            return Verdict(MATCHES, f"max abs error {parity.max_abs:.3g}")
        return Verdict(DIFFERS, "; ".join(out.describe() for out in parity.failures()))


def stage_that_wrote(stages: list[tuple[str, Path]], node_name: str) -> Optional[int]:
    """The stage whose file first has the node `node_name` of the last stage as it is there (its op,
    inputs, outputs and attributes), 0 when it is there from the first stage on; None when the last
    stage has no such node. Only the last file is parsed: a node's serialized bytes, with their field
    tag and length, appear as they are inside the serialized graph that holds it."""
    try:
        graph = onnx.load(str(stages[-1][1])).graph
        node = next((node.SerializeToString() for node in graph.node if node.name == node_name), None)
        if node is None:
            return None
        wanted = _GRAPH_NODE_TAG + _varint(len(node)) + node  # framed as GraphProto holds it: no prefix matches
        for index in range(len(stages) - 2, -1, -1):
            if wanted not in stages[index][1].read_bytes():
                return index + 1
    except (OSError, DecodeError):
        return None
    return 0


_GRAPH_NODE_TAG = b"\x0a"  # GraphProto.node: field 1, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


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


def _culprit(prober: _Prober, search: Search) -> Culprit:
    stages, good, bad, verdicts = prober.stages, search.good, search.bad, search.verdicts
    name, path = stages[bad]
    pass_name = name[len(PASS_PREFIX):] if name.startswith(PASS_PREFIX) else None
    baseline = good if good >= 0 else bad - 1  # without a matching stage, what the stage itself changed
    changed = _nodes_changed(stages[baseline][1], path) if baseline >= 0 and not search.stopped else []
    verdict = verdicts.get(bad, Verdict(OUT_OF_BUDGET))
    skipped = [stages[i][1].name for i, v in sorted(verdicts.items())
               if good < i < bad and v.outcome == NOT_COMPARABLE]
    probes = prober.converted
    converted = f"{probes} of {len(stages)} stage(s) converted"
    if search.stopped:
        after = f"after {stages[good][1].name}" if good >= 0 else "from the first stage on"
        unusable = (f"; {len(skipped)} of them could not be compared on ncnn ({', '.join(skipped[:3])}"
                    f"{', ...' if len(skipped) > 3 else ''})" if skipped else "")
        detail = (f"The pass bisection stopped at the diagnosis budget with {converted}{unusable}: ncnn first "
                  f"differs somewhere {after} and by {path.name} ({name}).")
    elif good < 0 and bad == 0:
        detail = (f"ncnn already differs on {path.name}, before any pass, so the converter or the ncnn runtime "
                  f"gets that graph wrong ({verdict.reason}).")
    elif good < 0:
        detail = (f"{path.name} ({name}) is the first stage whose conversion ncnn can run, and it differs "
                  f"({verdict.reason}); no earlier stage could be compared, so the fault may be older.")
    else:
        what = f"pass {pass_name!r}" if pass_name else name
        between = (f"; {', '.join(skipped)} in between could not be compared on ncnn, so the fault may be in "
                   f"their passes" if skipped else "")
        found = (verdict.reason if verdict.outcome == DIFFERS
                 else f"the run's verify stage found it differs; here: {verdict}")
        detail = (f"ncnn first differs after {what}: {path.name} gives {found}, while {stages[good][1].name} "
                  f"matches{between} ({converted}).")
    return Culprit(pass_name=pass_name, stage_file=path.name,
                   last_good_file=stages[good][1].name if good >= 0 else None, probes=probes, detail=detail,
                   nodes_changed=changed, verdicts={stages[i][1].name: str(v) for i, v in sorted(verdicts.items())},
                   stopped=search.stopped)


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
