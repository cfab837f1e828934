"""What every converter returns, and the one way a converter binary is run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from deploykit.core.errors import ConfigError, StageError, shorten
from deploykit.core.malloc import release_freed_memory, tool_environment
from deploykit.core.processes import child_options, end_group

# ncnn.Mat's batch_index: 0 means axis 0 of the array is a batch of one that the Mat drops;
# 233 means the array has no batch axis and maps onto the Mat as it is.
BATCH_AXIS = 0
NO_BATCH_AXIS = 233


@dataclass
class Blob:
    """An ncnn blob and the ONNX tensor it stands for."""

    onnx_name: str
    blob: str
    batch_index: int = BATCH_AXIS

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Conversion:
    param: Path
    bin: Path
    log: Path
    inputs: list[Blob]
    outputs: list[Blob]
    problems: list[str] = field(default_factory=list)  # what the converter said went wrong
    messages: list[str] = field(default_factory=list)  # everything else worth showing
    extra_files: list[Path] = field(default_factory=list)


class Converter(Protocol):
    name: str

    def version(self) -> str: ...

    def executable(self) -> Path: ...

    def convert(self, model_path: Path, inputs: dict[str, np.ndarray], outputs: list[str], workdir: Path,
                *, fp16: bool, args: list[str], timeout: float) -> Conversion: ...


def find_executable(name: str, candidates: list[tuple[str, Optional[Path]]]) -> Path:
    """The converter binary: the first candidate that is set, as (where it came from, path)."""
    chosen = [(source, Path(path)) for source, path in candidates if path]
    if not chosen:
        looked = ", ".join(source for source, _ in candidates)
        raise ConfigError(f"the {name} binary was not found (looked at {looked}).", stage="convert",
                          hint=f"build {name} and set converter.path to it, or use `converter.name: pnnx`.")
    source, path = chosen[0]
    path = path.absolute()  # the tool runs in a folder of its own
    if path.is_dir():
        raise ConfigError(f"the {name} binary named by {source} is a folder, not the {name} executable: {path}.",
                          stage="convert", hint=f"point {source} at the {name} executable itself.")
    if not path.is_file():
        raise ConfigError(f"the {name} binary named by {source} does not exist: {path}.", stage="convert",
                          hint=f"point {source} at the {name} executable.")
    if not os.access(path, os.X_OK):
        raise ConfigError(f"the {name} binary named by {source} is not executable: {path}.", stage="convert",
                          hint=f"chmod +x {path}")
    return path


def env_path(variable: str) -> Optional[Path]:
    value = os.environ.get(variable)
    return Path(value) if value else None


def on_path(name: str) -> Optional[Path]:
    found = shutil.which(name)
    return Path(found) if found else None


def run_tool(command: list[str], *, cwd: Path, timeout: float, log: Path, tool: str) -> str:
    """Run a converter, keep everything it printed in `log`, and return that text.

    The tool leads a process group of its own: on its timeout, and however deploykit ends (an
    error, a signal), the whole group is killed, the processes the tool started included.
    The exit code only catches crashes: converters exit 0 after failing, so callers read the text.
    """
    release_freed_memory()  # what this process keeps for reuse, the converter may need
    try:
        process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=tool_environment(), **child_options(own_group=True))
    except OSError as exc:
        raise StageError(f"{tool} could not be started ({command[0]}): {exc.strerror or exc}.", stage="convert",
                         hint="check that the binary is built for this machine.") from None
    timed_out = False
    try:
        try:
            printed, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            timed_out = True
            printed = exc.stdout or b""
            end_group(process)  # a process it started may hold the output open: the group goes first
            try:
                printed += process.communicate(timeout=5)[0] or b""
            except subprocess.TimeoutExpired:
                pass
    finally:
        end_group(process)
    text = printed.decode("utf-8", errors="replace")
    if timed_out:
        log.write_text(f"$ {' '.join(command)}\n{text}\n[timed out after {timeout:g}s]\n", encoding="utf-8")
        raise StageError(f"{tool} did not finish within {timeout:g}s and was stopped; what it printed is in "
                         f"{log.name}.", stage="convert",
                         hint="raise converter.timeout, or check the model for a huge graph.")
    log.write_text(f"$ {' '.join(command)}\n{text}", encoding="utf-8")
    if process.returncode < 0:
        name = signal.Signals(-process.returncode).name
        raise StageError(f"{tool} crashed ({name}); what it printed is in {log.name}.", stage="convert",
                         hint="run `deploykit check` on the model, or try the other converter.")
    if process.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise StageError(f"{tool} failed with exit code {process.returncode}: {shorten(tail)}", stage="convert",
                         hint=f"read {log.name} in the artifact folder.")
    return text
