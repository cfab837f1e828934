"""onnx2ncnn: the legacy converter, run from a binary the user points to."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit.converters.base import BATCH_AXIS, Blob, Conversion, env_path, find_executable, on_path, run_tool
from deploykit.errors import StageError

# Messages onnx2ncnn prints (and then exits 0) when it could not convert something.
_PROBLEM_PATTERNS = [re.compile(p) for p in (
    r"not supported yet!?",
    r"^Unsupported ",
    r"^Unknown data type",
    r"^Unknown ",
)]


def find_problems(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [line for line in lines if any(p.search(line) for p in _PROBLEM_PATTERNS)]


class Onnx2NcnnConverter:
    name = "onnx2ncnn"

    def __init__(self, path: Optional[Path] = None) -> None:
        self.configured_path = path

    def executable(self) -> Path:
        return find_executable("onnx2ncnn", [("converter.path", self.configured_path),
                                             ("$ONNX2NCNN", env_path("ONNX2NCNN")),
                                             ("PATH", on_path("onnx2ncnn"))])

    def version(self) -> str:
        return str(self.executable()) if self._available() else "not found"

    def _available(self) -> bool:
        try:
            self.executable()
            return True
        except Exception:
            return False

    def convert(self, model_path: Path, inputs: dict[str, np.ndarray], outputs: list[str], workdir: Path,
                *, fp16: bool, args: list[str], timeout: float) -> Conversion:
        exe = self.executable()
        param, binary, log = workdir / "model.ncnn.param", workdir / "model.ncnn.bin", workdir / "convert.log"
        text = run_tool([str(exe), str(model_path), param.name, binary.name, *args], cwd=workdir,
                        timeout=timeout, log=log, tool="onnx2ncnn")
        if not (param.is_file() and binary.is_file()):
            raise StageError("onnx2ncnn exited without writing model.ncnn.param/.bin.", stage="convert",
                             hint="its output is in convert.log.")
        # onnx2ncnn keeps ONNX tensor names as blob names and treats axis 0 as the batch.
        return Conversion(param=param, bin=binary, log=log,
                          inputs=[Blob(name, name, BATCH_AXIS) for name in inputs],
                          outputs=[Blob(name, name, BATCH_AXIS) for name in outputs],
                          problems=find_problems(text))
