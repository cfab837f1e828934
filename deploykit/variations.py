"""When the run as configured fails at convert or verify: the variations a user would try by hand,
each a whole run with the same passes and checks, until one verifies on ncnn.

    as configured -> no_fusions -> no_simplify -> opset_17 -> other_exporter -> bare -> torchscript

Every attempt runs in the run's one staging folder. A failed attempt's files move to
`attempts/<name>/` (with its own report.json), so the next one starts from an empty top, and
what it shares with an earlier attempt (the export, when only onnxsim changes; every stage whose
key is the same) is taken from there by the stage cache instead of being made again. A stage an
earlier attempt failed with the same key fails the same way without running (`RepeatedFailure`).
When a variation verifies it ships from the top of the folder, with a warning naming it; when
none does, the attempt as configured goes back to the top and is the run's error, its diagnosis
(first divergence, bisection) made only then, once: a failed variation is not diagnosed.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional
from collections.abc import Callable

from rich.console import Console

from deploykit.core.artifacts import ArtifactDir, move_entries
from deploykit.core.cache import ATTEMPTS
from deploykit.core.config import AS_CONFIGURED, NEWEST_OPSET, VARIATION_NAMES, first_problem
from deploykit.core.errors import ConfigError, DeployError, MachineError, StoppedError, shorten
from deploykit.stages.export import ExportResult
from deploykit.stages.rewrite import PassResult

if TYPE_CHECKING:
    from deploykit.core.cache import StageCache
    from deploykit.core.config import Config
    from deploykit.core.report import Reporter
    from deploykit.stages.context import RunContext

FOLDER = ATTEMPTS  # in the artifact folder: the attempts that did not ship, one folder each
RETRIED_STAGES = ("simplify", "convert", "verify")  # a failure there is what a variation can change

Changes = Optional[dict[str, Any]]


@dataclass
class Attempt:
    name: str
    about: str
    changes: dict[str, Any]  # the config keys it changes
    config: Optional[Config] = None
    ctx: Any = None  # its RunContext
    error: Optional[DeployError] = None
    status: str = "skipped"  # verified, failed, skipped
    seconds: float = 0.0
    folder: str = ""  # where its files are in the artifact folder ("" for the top)
    skipped_because: str = ""

    @property
    def failure(self) -> DeployError:
        """The error of an attempt that failed."""
        if self.error is None:
            raise RuntimeError(f"attempt {self.name} did not fail")
        return self.error

    def summary(self) -> dict[str, Any]:
        """Its entry in report.json's `attempts`."""
        entry: dict[str, Any] = {"name": self.name, "about": self.about, "set": as_overrides(self.changes),
                                 "status": self.status, "seconds": round(self.seconds, 3)}
        if self.status == "skipped":
            entry["why"] = self.skipped_because
        if self.error is not None:
            entry.update(stage=self.error.stage, error=shorten(self.error.message, 600))
        if self.status != "skipped":
            entry["report"] = f"{self.folder}/report.json" if self.folder else "report.json"
        return entry


# ---------------------------------------------------------------------------------------------
# The built-in variations: each gives the config keys it changes, or None and why it does not apply.


@dataclass(frozen=True)
class Variation:
    name: str
    about: str
    changes: Callable[[Config, list[Attempt]], tuple[Changes, str]]


def _no_fusions(config: Config, tried: list[Attempt]) -> tuple[Changes, str]:
    if not _simplifies(config):
        return None, "onnxsim does not run"
    if "fuse_*" in config.simplify.skip_optimizers:
        return None, "onnxsim's fusions are off already"
    return {"simplify": {"skip_optimizers": [*config.simplify.skip_optimizers, "fuse_*"]}}, ""


def _no_simplify(config: Config, tried: list[Attempt]) -> tuple[Changes, str]:
    return ({"simplify": {"enabled": False}}, "") if _simplifies(config) else (None, "onnxsim does not run")


def _newest_opset(config: Config, tried: list[Attempt]) -> tuple[Changes, str]:
    if config.model.onnx is not None:
        return None, "the model is an ONNX file, exported already"
    if NEWEST_OPSET in {config.export.opset, *(_exported(a).opset for a in tried)}:
        return None, f"the export is at opset {NEWEST_OPSET} already"
    return {"export": {"opset": NEWEST_OPSET}}, ""


def _other_exporter(config: Config, tried: list[Attempt]) -> tuple[Changes, str]:
    if config.model.onnx is not None:
        return None, "the model is an ONNX file, exported already"
    other = "dynamo" if config.export.exporter == "torchscript" else "torchscript"
    if any(_exported(a).exporter == other for a in tried):
        return None, f"the export fell back to the {other} exporter already"
    if other == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        return None, "the torch.export-based exporter needs onnxscript (pip install -e \".[dynamo]\")"
    return {"export": {"exporter": other}}, ""


def _bare(config: Config, tried: list[Attempt]) -> tuple[Changes, str]:
    if _moved_to_host(tried):
        return None, "the passes move lookups to the host, which a run without them would not"
    return {"simplify": {"enabled": False}, "passes": []}, ""


def _torchscript(config: Config, tried: list[Attempt]) -> tuple[Changes, str]:
    if config.converter.name != "pnnx":
        return None, "onnx2ncnn reads ONNX only"
    if config.model.onnx is not None:
        return None, "the model is an ONNX file, with no PyTorch model to trace"
    if config.cut_at:
        return None, "cut_at cuts the ONNX graph, which pnnx would not be given"
    if _moved_to_host(tried):
        return None, "the passes move lookups to the host, which the trace keeps in the model"
    return {"converter": {"source": "torchscript"}}, ""


_CATALOG = {  # what each of the config's VARIATION_NAMES does, in their order
    "no_fusions": ("onnxsim with its fusions off", _no_fusions),
    "no_simplify": ("without onnxsim", _no_simplify),
    f"opset_{NEWEST_OPSET}": (f"exported at opset {NEWEST_OPSET}, the newest pnnx reads right", _newest_opset),
    "other_exporter": ("exported by the other exporter", _other_exporter),
    "bare": ("the export straight to the converter, without onnxsim and passes", _bare),
    "torchscript": ("pnnx straight from a TorchScript trace", _torchscript),
}
assert tuple(_CATALOG) == VARIATION_NAMES, "a built-in variation the config does not know, or the other way round"
BUILTIN = tuple(Variation(name, about, changes) for name, (about, changes) in _CATALOG.items())
_BY_NAME = {v.name: v for v in BUILTIN}


def _simplifies(config: Config) -> bool:
    return config.simplify.enabled and config.converter.source == "onnx"


def _exported(attempt: Attempt) -> ExportResult:
    """What the export of an attempt recorded (the opset and exporter it ended with); empty when
    it did not get there."""
    found = attempt.ctx.reporter.result("export", ExportResult) if attempt.ctx is not None else None
    return found or ExportResult()


def _moved_to_host(tried: list[Attempt]) -> bool:
    return any(isinstance(r.result, PassResult) and r.result.host_lookups
               for a in tried if a.ctx is not None for r in a.ctx.reporter.stages)


def _own(entry: Any) -> Variation:
    changes = dict(entry.set)
    return Variation(entry.name, f"your variation: {', '.join(as_overrides(changes))}",
                     lambda config, tried: (changes, ""))


def planned(config: Config) -> list[Variation]:
    """The variations the config asks for, in order: `auto` (None) is the built-ins."""
    if config.variations is None:
        return list(BUILTIN)
    chosen: list[Variation] = []
    for entry in config.variations:
        if entry.name == "auto":
            chosen += [v for v in BUILTIN if v.name not in {c.name for c in chosen}]
        else:
            chosen.append(_own(entry) if entry.set is not None else _BY_NAME[entry.name])
    return list({v.name: v for v in chosen}.values())


def as_overrides(changes: dict[str, Any], prefix: str = "") -> list[str]:
    """Config changes as the `--set key.path=value` items that make them."""
    import json

    items = []
    for key, value in changes.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += as_overrides(value, f"{path}.")
        else:
            plain = isinstance(value, str) and value.replace("_", "").isalnum()
            items.append(f"{path}={value if plain else json.dumps(value)}")
    return items


# ---------------------------------------------------------------------------------------------
# Running the attempts


# (config, reporter, diagnosis: "later" or "off") -> (the attempt's RunContext, its error or None)
AttemptRun = Callable[["Config", "Reporter", str], tuple["RunContext", Optional[DeployError]]]


@dataclass
class Outcome:
    """What the attempts came to: the one whose files are at the top of the artifact folder
    (the shipped variation, or the run as configured when none verified) and every attempt."""

    top: Attempt
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def shipped_variation(self) -> Optional[Attempt]:
        return self.top if self.top.name != AS_CONFIGURED and self.top.status == "verified" else None


def run_attempts(config: Config, attempt: AttemptRun, finish_diagnosis: Callable[[RunContext], Optional[DeployError]],
                 artifacts: ArtifactDir, cache: Optional[StageCache], reporter: Reporter,
                 quiet: Callable[[], Reporter]) -> Outcome:
    """The run as configured, then, if it failed where a variation can help, each variation in
    turn until one verifies. `attempt` runs one config into the top of `artifacts`; `quiet` makes
    the reporter of a variation, whose stages are not printed (one line per attempt is)."""
    variations = planned(config)
    first = Attempt(AS_CONFIGURED, "the config as given", {}, config)
    _run_one(first, attempt, reporter, diagnosis="later" if variations else "now")
    outcome = Outcome(first, [first])
    if first.error is None or not retried(first.error) or not variations:
        _finish(first, finish_diagnosis)
        return outcome
    console = reporter.console
    console.print(f"  the run as configured failed at {first.error.stage}; trying {len(variations)} variation(s) "
                  f"(`variations: []` turns this off):", highlight=False)
    _park(first, artifacts, cache)
    for variation in variations:
        current = _planned_attempt(variation, config, outcome.attempts)
        outcome.attempts.append(current)
        if current.config is None:
            _print_line(console, current)
            continue
        with console.status(f"[bold]variation {variation.name}[/] ({variation.about}) ...", spinner="dots"):
            _run_one(current, attempt, quiet(), diagnosis="off")
        _print_line(console, current)
        if isinstance(current.error, StoppedError):
            _park(current, artifacts, cache)
            break
        if current.error is None:
            outcome.top = current
            reporter.warn(shipping_warning(first, current))
            return outcome
        _park(current, artifacts, cache)
    move_entries(artifacts.path / first.folder, artifacts.path)  # the run as configured is the run's result
    first.folder = ""
    stopped = next((a.error for a in outcome.attempts if isinstance(a.error, StoppedError)), None)
    if stopped is None:
        with console.status("[bold]diagnosing the run as configured[/] ...", spinner="dots"):
            _finish(first, finish_diagnosis)
        first.error.message += " " + tried_sentence(outcome.attempts[1:])
    else:
        first.error = stopped
    return outcome


def _planned_attempt(variation: Variation, config: Config, tried: list[Attempt]) -> Attempt:
    """The attempt of a variation, with the config it runs, or without one and why it is skipped."""
    changes, why = variation.changes(config, tried)
    current = Attempt(variation.name, variation.about, changes or {}, skipped_because=why)
    if changes is None:
        return current
    try:
        varied = config.varied(changes)
    except ValueError as exc:  # pydantic's ValidationError: the change does not fit this config
        current.skipped_because = f"it makes an invalid config: {first_problem(exc)}"
        return current
    same = next((a.name for a in tried if a.config is not None and _comparable(a.config) == _comparable(varied)), None)
    if same is not None:
        current.skipped_because = f"it is the config of {same}"
    else:
        current.config = varied
    return current


def retried(error: DeployError) -> bool:
    """Whether a variation can change this failure: a stage's own, not the config's, the machine's
    (a full disk), a signal's or a bug's (an unexpected exception, with its traceback)."""
    return (error.stage in RETRIED_STAGES and not isinstance(error, (ConfigError, MachineError, StoppedError))
            and getattr(error, "traceback", None) is None)


def _run_one(current: Attempt, attempt: AttemptRun, reporter: Reporter, diagnosis: str) -> None:
    started = time.perf_counter()
    assert current.config is not None, f"attempt {current.name} runs without a config"
    current.ctx, current.error = attempt(current.config, reporter, diagnosis)
    current.seconds = time.perf_counter() - started
    current.status = "verified" if current.error is None else "failed"
    for record in current.ctx.reporter.stages:  # a later attempt reaching one of these stages fails the same way
        if record.status == "failed" and record.key and current.error is not None:
            current.ctx.known_failures.setdefault(record.key, (current.name, current.error))


def _finish(first: Attempt, finish_diagnosis: Callable[[RunContext], Optional[DeployError]]) -> None:
    """Diagnose the run as configured, if its verify left the diagnosis for later."""
    if first.error is not None and first.ctx.deferred_diagnosis is not None:
        started = time.perf_counter()
        first.error = finish_diagnosis(first.ctx)
        first.seconds += time.perf_counter() - started
        first.status = "failed"


def _park(current: Attempt, artifacts: ArtifactDir, cache: Optional[StageCache]) -> None:
    """Move a failed attempt's files from the top to attempts/<name>/, where the stage cache can
    lend them to the next attempt."""
    current.folder = f"{FOLDER}/{current.name}"
    move_entries(artifacts.path, artifacts.path / current.folder, keep=(FOLDER,))
    if cache is not None:
        cache.remember(artifacts.path / current.folder, [r.to_dict() for r in current.ctx.reporter.stages])


def _comparable(config: Config) -> dict:
    return config.model_dump(mode="json", exclude={"variations"})


def _print_line(console: Console, current: Attempt) -> None:
    from rich.markup import escape

    mark = {"verified": "[green]ok[/]", "failed": "[red]FAILED[/]", "skipped": "[dim]skipped[/]"}[current.status]
    if current.status == "skipped":
        said = current.skipped_because
    elif current.error is None:
        verify = next((r for r in current.ctx.reporter.stages if r.name == "verify"), None)
        said = "verified on ncnn" + (f", max abs {verify.parity.max_abs:.2e}" if verify and verify.parity else "")
    else:
        said = f"failed at {current.error.stage}: {_first_clause(current.error.message)}"
    console.print(f"{mark:>8}  [bold]{current.name}[/]: {escape(current.about)}; {escape(said)}"
                  + (f"  [dim]{current.seconds:.1f}s[/]" if current.status != "skipped" else ""), highlight=False)


def _first_clause(message: str, limit: int = 100) -> str:
    """The start of an error message, for a line of the terminal (report.json has all of it)."""
    head = message.split(": ", 1)[0] if len(message) > limit and ": " in message[:limit] else message
    return head if len(head) <= limit else head[:limit].rsplit(" ", 1)[0] + " ..."


def shipping_warning(first: Attempt, shipped: Attempt) -> str:
    keys = " ".join(f"--set {item}" for item in as_overrides(shipped.changes))
    return (f"shipping variation {shipped.name} ({shipped.about}): the run as configured failed at "
            f"{first.failure.stage} ({_first_clause(first.failure.message)}). To get this model without the retries: "
            f"{keys}; the run as configured is in {FOLDER}/{AS_CONFIGURED}/ of the artifact folder.")


def tried_sentence(variations: list[Attempt]) -> str:
    ran = [a for a in variations if a.status != "skipped"]
    if not ran:
        return "No variation applied to this run (report.json: attempts)."
    said = "; ".join(f"{a.name} failed at {a.failure.stage}" for a in ran)
    return (f"No variation verified either ({said}; report.json: attempts, each attempt's files under "
            f"{FOLDER}/).")
