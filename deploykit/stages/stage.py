"""What a stage of the pipeline is: a name, the key of everything its result depends on, how it
runs, and how it takes up the result of an earlier run that had the same key (deploykit/cache.py).
A stage's findings are a typed `StageResult`, which report.json holds beside the record's own fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from deploykit.cache import arrays_digest

if TYPE_CHECKING:
    from deploykit.stages.context import RunContext

R = TypeVar("R", bound="StageResult")


@dataclass
class StageResult:
    """What a stage found. Each field is one key of the stage's record in report.json; a field left
    None is one the stage has not got to (or does not say), and is left out of the report."""

    def to_report(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_report(cls: type[R], record: Mapping[str, Any]) -> R:
        """The result as report.json recorded it (the stage cache's copy of an earlier run); raises
        KeyError, TypeError or ValueError on a record that is not one of this stage."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})

    def headline(self) -> list[str]:
        """What the stage's line on the terminal says of the result, in a few words (rich markup)."""
        return []

    def ran(self) -> list[str]:
        """What the stage ran and with which settings, for `--verbose` (plain text)."""
        return []


class Stage:
    """One step of the pipeline (deploykit/pipeline.py lists them in order)."""

    name: str = ""
    result_type: type[StageResult] = StageResult
    # The stage writes its graph as NN_<name>.onnx (RunContext.numbered_file): the number is taken
    # when it did, and kept when its file is reused, so the files after it keep theirs.
    numbered = False

    def title(self, ctx: RunContext) -> str:
        """What the progress display says while the stage runs."""
        return self.name

    def applies(self, ctx: RunContext) -> bool:
        """Whether this run has the stage at all (a stage that is switched off records `skipped`)."""
        return True

    def prepare(self, ctx: RunContext) -> None:
        """What the stage does first, whether it then runs or is reused."""

    def key(self, ctx: RunContext) -> Optional[str]:
        """A digest of everything the stage's result depends on; None: never reused."""
        return None

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError

    def restore(self, ctx: RunContext, result: Any) -> None:
        """Take up the result of an earlier run that the cache found unchanged; its record, files
        and graph are restored already (RunContext.reuse)."""


def run_stage(ctx: RunContext, stage: Stage) -> None:
    """Run one stage in its own record, or restore it from an earlier run when its key matches."""
    with ctx.reporter.stage(stage.name, stage.title(ctx)) as ctx.record:
        ctx.record.result = stage.result_type()
        stage.prepare(ctx)
        key = stage.key(ctx)
        restored = ctx.reuse(key, stage.result_type) if key is not None else None
        if restored is None:
            stage.run(ctx)
        else:
            stage.restore(ctx, restored)
        if stage.numbered and ctx.record.artifact:
            ctx.next_index += 1


def config_inputs_key(ctx: RunContext) -> str:
    """The config's inputs (not the ones a pass adds for a lookup on the host), as a digest."""
    return arrays_digest({spec.name: ctx.inputs[spec.name] for spec in ctx.config.inputs})
