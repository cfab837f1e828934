"""ncnn's own tools (ncnnoptimize, ncnn2table, ncnn2int8): found like a converter binary, run like one.

They ship in `bin/` of ncnn's release packages, not in the `ncnn` Python package. deploykit looks
for each in `converter.tools` (a folder), then in the folder `$NCNN_TOOLS` names, then on PATH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from deploykit.core.artifacts import sha256
from deploykit.core.errors import ConfigError, DeployError, StageError
from deploykit.ncnn.converters.base import env_path, find_executable, on_path, run_tool

TOOLS_VARIABLE = "NCNN_TOOLS"


def find_tool(name: str, folder: Optional[Path], *, stage: str) -> Path:
    """The path of one of ncnn's tools, or a ConfigError naming where it was looked for."""
    from_env = env_path(TOOLS_VARIABLE)
    candidates = [("converter.tools", folder / name if folder else None),
                  (f"${TOOLS_VARIABLE}", from_env / name if from_env else None), ("PATH", on_path(name))]
    try:
        return find_executable(name, candidates)
    except ConfigError as exc:
        if not any(path for _, path in candidates):
            raise ConfigError(f"ncnn's {name} was not found (looked in converter.tools, ${TOOLS_VARIABLE} and on "
                              f"PATH); {stage} needs it.", stage=stage,
                              hint=f"ncnn's release packages have it in bin/: set converter.tools (or "
                                   f"{TOOLS_VARIABLE}) to that folder, or put it on PATH.") from None
        raise ConfigError(exc.message, stage=stage,
                          hint=f"set converter.tools (or {TOOLS_VARIABLE}) to the folder of ncnn's tools.") from None


def run_ncnn_tool(command: list[str], *, cwd: Path, timeout: float, log: Path, stage: str) -> str:
    """Run one of the tools, keep what it printed in `log`; its failures are errors of `stage`."""
    tool = Path(command[0]).name
    try:
        return run_tool(command, cwd=cwd, timeout=timeout, log=log, tool=tool)
    except DeployError as exc:
        raise StageError(exc.message, stage=stage, hint=f"read {log.name}; " + exc.hint) from None


def tool_digest(name: str, folder: Optional[Path], *, stage: str) -> str:
    """What a stage's result depends on of the tool: the SHA-256 of its binary."""
    return sha256(find_tool(name, folder, stage=stage))
