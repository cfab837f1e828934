"""What the stages of one run share: config, inputs, artifact folder, current graph, reference."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar
from collections.abc import Callable

import numpy as np
import onnx

from deploykit.core.artifacts import ArtifactDir, sha256
from deploykit.core.cache import StageCache
from deploykit.core.config import Config, ParitySection
from deploykit.core.errors import DeployError, ParityError, RepeatedFailure
from deploykit.core.parity import StageParity, compare_outputs
from deploykit.core.report import Reporter, StageRecord
from deploykit.ncnn.converters.base import Conversion
from deploykit.onnx.host_lookup import host_inputs, recorded
from deploykit.onnx.onnx_io import describe
from deploykit.stages.stage import R, StageResult


if TYPE_CHECKING:
    from typing import Protocol

    from deploykit.ncnn.calibration import CalibrationSet
    from deploykit.onnx.graph_pass import PassGraph
    from deploykit.stages.simplify import Simplifier

    class Finding(Protocol):  # deploykit.tools.diagnose.Divergence, deploykit.tools.bisect.Culprit
        def to_dict(self) -> dict: ...
        def describe(self) -> str: ...

T = TypeVar("T")


@dataclass
class RunContext:
    config: Config
    config_path: Optional[Path]  # None: a config made without a YAML file
    artifacts: ArtifactDir
    inputs: dict[str, np.ndarray]
    reporter: Reporter
    # The current graph and its file, and the record of the stage that runs: set from the first stage
    # on, and read through the properties below, which fail on a run that has not got there.
    _model: Optional[onnx.ModelProto] = None
    _model_file: Optional[Path] = None
    _record: Optional[StageRecord] = None
    reference: Optional[dict[str, np.ndarray]] = None  # what later stages are checked against (`expected`)
    conversion: Optional[Conversion] = None  # the model verified and shipped (`converted`)
    unoptimized: Optional[Conversion] = None  # the converter's own model, when ncnnoptimize replaced it
    passes: list = field(default_factory=list)
    cache: Optional[StageCache] = None
    versions: dict[str, str] = field(default_factory=dict)
    model_sha: str = ""
    preflight: dict[str, list[dict]] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    next_index: int = 2  # of the next numbered_file: 00 export/import, 01 simplify, the cut and passes from 02 on
    simplifier: Optional[Simplifier] = None  # onnxsim's process, while it runs
    pass_graph: Optional[PassGraph] = None  # the graph the check, the passes and convert's check share
    # Shared by the attempts of one run (deploykit/variations.py): the stage keys an earlier attempt
    # failed at, with its name and error, and the torch models built, by their model section.
    known_failures: dict[str, tuple[str, DeployError]] = field(default_factory=dict)
    torch_models: dict[str, Any] = field(default_factory=dict)
    # When a failed verify finds where ncnn went wrong: "now", "later" (left in deferred_diagnosis,
    # which raises the error it explains, for when no variation verifies) or "off".
    diagnosis: str = "now"
    deferred_diagnosis: Optional[Callable[[], None]] = None
    given_model: Any = None  # a torch module given to deploykit.convert, exported instead of model.factory's
    # A whole run of another config (the shapes stage's run at each further shape); the pipeline
    # sets it: (config, config path, console) -> (exit code, report).
    run_separately: Optional[Callable[[Config, Optional[Path], Any], tuple[int, dict]]] = None
    calibration: Optional[CalibrationSet] = None  # quantize.calibration's samples, read once for int8's key and run

    @property
    def model(self) -> onnx.ModelProto:
        """The current ONNX graph."""
        return _required(self._model, "model")

    @model.setter
    def model(self, model: onnx.ModelProto) -> None:
        self._model = model

    @property
    def model_file(self) -> Path:
        """The current graph's file, or the file the converter is given instead (a TorchScript trace)."""
        return _required(self._model_file, "model_file")

    @model_file.setter
    def model_file(self, path: Path) -> None:
        self._model_file = path

    @property
    def record(self) -> StageRecord:
        """The record of the stage that runs now."""
        return _required(self._record, "record")

    @record.setter
    def record(self, record: Optional[StageRecord]) -> None:
        self._record = record

    @property
    def current_record(self) -> Optional[StageRecord]:
        """The record of the stage that runs now; None before the first."""
        return self._record

    @property
    def expected(self) -> dict[str, np.ndarray]:
        """The reference outputs, once the export (or the import) has computed them."""
        return _required(self.reference, "reference")

    @property
    def converted(self) -> Conversion:
        """The converter's model (then ncnnoptimize's, and so on), once convert has run."""
        return _required(self.conversion, "conversion")

    def torch_model(self) -> tuple[Any, str]:
        """The PyTorch model to export (the one given, or what `model.factory` builds) and its
        fingerprint, built once for all attempts of the run."""
        from deploykit.core.cache import digest, model_fingerprint

        section = digest(self.config.model)
        if section not in self.torch_models:
            if self.given_model is not None:
                model = self.given_model.eval()
            else:
                from deploykit.stages.export import build_torch_model

                model = build_torch_model(self.config.model)
            self.torch_models[section] = (model, model_fingerprint(model))
        return self.torch_models[section]

    def set_model(self, model: onnx.ModelProto, path: Path) -> None:
        self.model, self.model_file = model, path
        self.model_sha = sha256(path)
        self.written.append(path.name)
        if self._record is not None:
            self._record.artifact = path.name
            self._record.graph = {**describe(model), "bytes": path.stat().st_size}
            self._record.outputs_sha256[path.name] = self.model_sha

    def set_converter_input(self, path: Path) -> None:
        """The file the converter is given when it is not the current ONNX graph (a TorchScript
        trace); `model` stays the graph whose inputs and outputs it has."""
        self.model_file, self.model_sha = path, sha256(path)
        self.written.append(path.name)
        self.record.artifact = path.name
        self.record.outputs_sha256[path.name] = self.model_sha

    def wrote(self, path: Path) -> None:
        """Record a file the current stage wrote besides its model."""
        self.written.append(path.name)
        self.record.outputs_sha256[path.name] = sha256(path)

    def numbered_file(self, label: str) -> str:
        """The name of the graph file a numbered stage (the cut, a pass) writes: NN_<label>.onnx,
        numbered in stage order (deploykit/stages/stage.py takes the number once the stage wrote it)."""
        return f"{self.next_index:02d}_{label}.onnx"

    def result(self, kind: type[R]) -> R:
        """The result the current stage fills in."""
        result = self.record.result
        if not isinstance(result, kind):
            raise RuntimeError(f"stage {self.record.name!r} has a {type(result).__name__}, not a {kind.__name__}")
        return result

    def reuse(self, key: str, kind: type[StageResult] = StageResult) -> Optional[StageResult]:
        """Restore the current stage from the previous run in this folder when its key matches;
        returns that run's result of it, or None when the stage must run (a record this version
        cannot read as a `kind` included)."""
        self.record.key = key
        if key in self.known_failures:
            raise RepeatedFailure(*self.known_failures[key])
        found = self.cache.lookup(self.record.name, key) if self.cache is not None else None
        if found is None:
            return None
        previous, folder = found
        try:
            result = kind.from_report(previous)
            parity = StageParity.from_dict(previous["parity"]) if previous.get("parity") else None
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        record = self.record
        record.cached, record.status = True, previous["status"]
        record.artifact, record.graph = previous.get("artifact"), previous.get("graph")
        record.outputs_sha256 = dict(previous.get("outputs_sha256") or {})
        record.result, record.parity = result, parity
        for name, digest in record.outputs_sha256.items():  # this run's folder has every file of its own
            self.artifacts.take(folder / name, name, digest)
        self.written += list(record.outputs_sha256)
        if record.artifact and record.artifact.endswith(".onnx"):
            path = self.artifacts.file(record.artifact)
            self.model, self.model_file, self.model_sha = onnx.load(str(path)), path, record.outputs_sha256[path.name]
        elif record.artifact and record.artifact.endswith(".pt"):  # a TorchScript trace (set_converter_input)
            self.model_file = self.artifacts.file(record.artifact)
            self.model_sha = record.outputs_sha256[record.artifact]
        return result

    def ordered_inputs(self) -> dict[str, np.ndarray]:
        """The inputs in the order of the current graph's inputs, each in the dtype the graph now
        declares: a pass may turn integer ids into a float input (same values) for a converter
        whose runtime reads only floats."""
        initializers = {init.name for init in self.model.graph.initializer}
        feed = {}
        for value in self.model.graph.input:
            if value.name in initializers:
                continue
            array = self.inputs[value.name]
            declared = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            feed[value.name] = array if array.dtype == declared else array.astype(declared)
        return feed

    def feeds_for(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`ordered_inputs` for other values of the config's inputs (a calibration sample, another
        shape): the inputs passes moved to the host computed from them, as for the run's own."""
        values = dict(values)
        for record in self.reporter.stages:
            values.update(host_inputs(recorded([record.result.to_report()]), self.artifacts.path, values))
        return replace(self, inputs=values).ordered_inputs()

    @staticmethod
    def diagnose(error: ParityError, find: Callable[[], Optional[Finding]], *,
                 lead: str = "First divergence: ") -> tuple[ParityError, Optional[dict]]:
        """Add what a diagnosis found (where the outputs first went wrong, which pass broke them) to
        a parity error; returns the error and the finding as the report holds it (None: nothing
        found). A diagnosis that itself fails must not hide the error, so it is only noted."""
        try:
            found = find()
        except DeployError as exc:
            return error, {"error": str(exc)}
        if found is None:
            return error, None
        error.message = f"{error.message} {lead}{found.describe()}"
        return error, found.to_dict()

    def check_parity(self, actual: dict[str, np.ndarray], *, against: str,
                     reference: Optional[dict[str, np.ndarray]] = None,
                     settings: Optional[ParitySection] = None) -> StageParity:
        """Compare with the reference, record it, and stop the run if it differs."""
        result = compare_outputs(reference if reference is not None else self.expected, actual,
                                 settings or self.config.parity, against=against)
        self.record.parity = result
        if not result.passed:
            earlier = [r.name for r in self.reporter.stages if r.parity is not None and r is not self.record]
            first = (f"Every earlier check ({', '.join(earlier)}) matched, so `{self.record.name}` is the first "
                     f"stage that went wrong" if earlier else f"`{self.record.name}` is the first stage checked")
            details = "; ".join(out.describe() for out in result.failures())
            raise ParityError(f"outputs differ from {against} beyond tolerance: {details}. {first}.",
                              stage=self.record.name,
                              hint="see report.json for every statistic; per-output tolerances go under "
                                   "parity.outputs.<name>.atol/rtol if the difference is expected.")
        return result


def _required(value: Optional[T], name: str) -> T:
    if value is None:
        raise RuntimeError(f"RunContext.{name} is read before a stage has set it")
    return value
