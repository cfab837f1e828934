"""Errors meant for people: each names the stage, what went wrong and what to try next."""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STAGE = 3
EXIT_PARITY = 4


class DeployError(Exception):
    """A failure the user can act on; the CLI prints it as one paragraph, without a traceback."""

    exit_code = EXIT_STAGE

    def __init__(self, message: str, *, stage: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.hint = hint

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


class ParityError(DeployError):
    """Outputs differ from the reference beyond tolerance."""

    exit_code = EXIT_PARITY
