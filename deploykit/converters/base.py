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

from deploykit.errors import ConfigError, StageError
from deploykit.malloc import release_freed_memory, tool_environment

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

    The exit code only catches crashes: converters exit 0 after failing, so callers read the text.
    """
    release_freed_memory()  # what this process keeps for reuse, the converter may need
    try:
        completed = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=timeout, check=False, env=tool_environment())
        text = completed.stdout.decode("utf-8", errors="replace")
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode("utf-8", errors="replace")
        log.write_text(f"$ {' '.join(command)}\n{text}\n[timed out after {timeout:g}s]\n", encoding="utf-8")
        raise StageError(f"{tool} did not finish within {timeout:g}s and was stopped; what it printed is in {log.name}.",
                         stage="convert", hint="raise converter.timeout, or check the model for a huge graph.") from None
    except OSError as exc:
        raise StageError(f"{tool} could not be started ({command[0]}): {exc.strerror or exc}.", stage="convert",
                         hint="check that the binary is built for this machine.") from None
    log.write_text(f"$ {' '.join(command)}\n{text}", encoding="utf-8")
    if completed.returncode < 0:
        name = signal.Signals(-completed.returncode).name
        raise StageError(f"{tool} crashed ({name}); what it printed is in {log.name}.", stage="convert",
                         hint="run `deploykit check` on the model, or try the other converter.")
    if completed.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-3:])
        raise StageError(f"{tool} failed with exit code {completed.returncode}: {tail}", stage="convert",
                         hint=f"read {log.name} in the artifact folder.")
    return text
