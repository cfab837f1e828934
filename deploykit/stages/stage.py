"""What a stage of the pipeline is: a name, the key of everything its result depends on, how it
runs, and how it takes up the result of an earlier run that had the same key (deploykit/core/cache.py).
A stage's findings are a typed `StageResult` (deploykit/core/report.py, beside the record that
holds it in report.json)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from deploykit.core.cache import arrays_digest
from deploykit.core.report import R, StageResult  # noqa: F401  (a stage module names its result type from here)

if TYPE_CHECKING:
    from deploykit.stages.context import RunContext


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
