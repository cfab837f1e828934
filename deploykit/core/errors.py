"""Errors meant for people: each names the stage, what went wrong and what to try next."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional
from collections.abc import Iterator

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STAGE = 3
EXIT_PARITY = 4

MAX_ECHO = 2000  # characters of a message from user code or a tool that an error or report repeats


def shorten(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]} ... [{len(text) - limit} more characters]"


class DeployError(Exception):
    """A failure the user can act on; the CLI prints it as one paragraph, without a traceback."""

    exit_code = EXIT_STAGE

    def __init__(self, message: str, *, stage: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.hint = hint
        self.report_file: Optional[Path] = None  # where the failed run's report.json went
        self.traceback: Optional[str] = None  # an unexpected exception's, which the error stands for

    def __str__(self) -> str:
        head = f"[{self.stage}] " if self.stage else ""
        tail = f" Try: {self.hint}" if self.hint else ""
        return f"{head}{self.message}{tail}"


class ConfigError(DeployError):
    """The config, the inputs it describes, or a file it names is wrong."""

    exit_code = EXIT_CONFIG


class StageError(DeployError):
    """A stage (export, simplify, a pass, the converter, the ncnn runtime) failed."""

    exit_code = EXIT_STAGE


class MachineError(StageError):
    """A stage failed for a reason of the machine, not of the model (a full disk)."""


class ParityError(DeployError):
    """Outputs differ from the reference beyond tolerance."""

    exit_code = EXIT_PARITY


class RepeatedFailure(DeployError):
    """A stage that an earlier attempt of the run (deploykit/variations.py) ran with the same key
    and failed: it fails the same way, without running again."""

    def __init__(self, attempt: str, earlier: DeployError) -> None:
        super().__init__(f"given the same input as in attempt {attempt}, which failed here: {earlier.message}",
                         stage=earlier.stage, hint=earlier.hint)
        self.exit_code = earlier.exit_code


class Interrupted(KeyboardInterrupt):
    """A signal asked deploykit to stop (deploykit/core/processes.py). A KeyboardInterrupt, so that
    code which catches Exception lets it through and every `finally` on the way out runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"stopped by {self.signal_name}"


class StoppedError(DeployError):
    """The run was stopped by a signal; the exit code is the shell's for it (130 for SIGINT)."""

    def __init__(self, interrupted: Interrupted, *, stage: str) -> None:
        super().__init__(f"stopped by {interrupted.signal_name}.", stage=stage,
                         hint="run it again; the artifacts of the last verified run, if there was one, are as "
                              "they were.")
        self.exit_code = 128 + interrupted.signum


@contextmanager
def user_code(what: str, *, stage: str) -> Iterator[None]:
    """Run the user's code (a model module, its factory, its forward) where it cannot end
    deploykit: `sys.exit()` and a KeyboardInterrupt it raises itself become a ConfigError naming
    `what`, and an argparse parser in it reads an empty command line, not deploykit's."""
    saved = sys.argv
    sys.argv = [what]
    try:
        yield
    except SystemExit as exc:
        raise ConfigError(f"{what} called sys.exit({exc.code!r}), which would have ended deploykit.", stage=stage,
                          hint="keep command-line code (sys.exit, argparse) under `if __name__ == \"__main__\":` "
                               "in the model's module.") from None
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise ConfigError(f"{what} raised KeyboardInterrupt itself.", stage=stage,
                          hint="raise an ordinary exception in the model's code.") from None
    finally:
        sys.argv = saved
