"""pnnx: the default converter, the binary shipped in the `pnnx` Python package."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit.core.errors import StageError
from deploykit.ncnn.converters.base import BATCH_AXIS, Blob, Conversion, env_path, find_executable, on_path, run_tool

_TYPE_SUFFIX = {"float32": "f32", "float16": "f16", "float64": "f64", "int64": "i64", "int32": "i32",
                "int8": "i8", "uint8": "u8", "bool": "b"}
# In the *_ncnn.py pnnx writes: ex.input("in0", ncnn.Mat(in0.numpy(), batch_index=0).clone())
_INPUT_LINE = re.compile(r'ex\.input\("(?P<blob>[^"]+)",\s*ncnn\.Mat\((?P<var>\w+)\.numpy\(\)'
                         r'(?:,\s*batch_index=(?P<bi>\d+))?')
# ... and: _, out0 = ex.extract("out0") / out0.numpy(batch_index=0)
_EXTRACT_LINE = re.compile(r'(?P<var>\w+)\s*=\s*ex\.extract\("(?P<blob>[^"]+)"\)')
_PROBLEM_LINE = re.compile(r"(not supported|unsupported|error|failed|not implemented)", re.IGNORECASE)
# Binary files are written next to the input; we keep these (under the names they get here).
KEPT_FILES = ("model.ncnn.param", "model.ncnn.bin", "model_ncnn.py", "model.pnnx.param")
# What pnnx writes and nothing reads: its own weights file, Python script and ONNX re-export go to
# the null device, which spares writing the weights twice more (the user's converter.args, given
# after these, can still name files for them).
DISCARDED_OUTPUTS = ("pnnxbin", "pnnxpy", "pnnxonnx")


class PnnxConverter:
    name = "pnnx"

    def __init__(self, path: Optional[Path] = None) -> None:
        self.configured_path = path

    def executable(self) -> Path:
        # The package's binary comes before PATH, where `pnnx` is only a wrapper script around it.
        return find_executable("pnnx", [("converter.path", self.configured_path), ("$PNNX", env_path("PNNX")),
                                        ("the pnnx package", shipped_binary()), ("PATH", on_path("pnnx"))])

    def version(self) -> str:
        try:
            return version("pnnx")
        except PackageNotFoundError:
            return "unknown"

    def convert(self, model_path: Path, inputs: dict[str, np.ndarray], outputs: list[str], workdir: Path,
                *, fp16: bool, args: list[str], timeout: float) -> Conversion:
        exe = self.executable()
        source = workdir / f"model{model_path.suffix}"  # pnnx reads the format from it: .onnx, or .pt (TorchScript)
        _link_or_copy(model_path, source)
        shapes = ",".join(shape_arg(array) for array in inputs.values())
        command = [str(exe), source.name, f"inputshape={shapes}", f"fp16={int(fp16)}",
                   *(f"{key}={os.devnull}" for key in DISCARDED_OUTPUTS), *args]
        log = workdir / "convert.log"
        text = run_tool(command, cwd=workdir, timeout=timeout, log=log, tool="pnnx")
        param, binary, script = workdir / "model.ncnn.param", workdir / "model.ncnn.bin", workdir / "model_ncnn.py"
        if not (param.is_file() and binary.is_file()):
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise StageError(f"pnnx exited without writing model.ncnn.param/.bin: {tail}", stage="convert",
                             hint="the full output is in convert.log; `deploykit check` lists unsupported ops.")
        in_blobs, out_blobs = read_ncnn_script(script, list(inputs), outputs)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return Conversion(
            param=param, bin=binary, log=log, inputs=in_blobs, outputs=out_blobs,
            problems=[line for line in lines if _PROBLEM_LINE.search(line)],
            messages=[line for line in lines if line.startswith("ignore ")],
            extra_files=[workdir / name for name in ("model_ncnn.py", "model.pnnx.param")
                         if (workdir / name).is_file()],
        )


def _link_or_copy(source: Path, target: Path) -> None:
    """pnnx only reads its input: a hard link serves where the file system allows one."""
    if target.exists() and target.samefile(source):
        return
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def shipped_binary() -> Optional[Path]:
    """The binary in the pnnx package's folder, found without importing the package, which imports
    torch (1.6 s of a run that reuses every stage, or that reads an ONNX file)."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / ("pnnx.exe" if platform.system() == "Windows" else "pnnx")


def shape_arg(array: np.ndarray) -> str:
    suffix = _TYPE_SUFFIX.get(array.dtype.name)
    if suffix is None:
        raise StageError(f"pnnx takes no input of dtype {array.dtype}.", stage="convert",
                         hint=f"use one of {', '.join(_TYPE_SUFFIX)} in `inputs:`.")
    return "[" + ",".join(str(d) for d in array.shape) + "]" + suffix


def read_ncnn_script(script: Path, input_names: list[str], output_names: list[str]) -> tuple[list[Blob], list[Blob]]:
    """Blob names and batch-axis convention from the *_ncnn.py pnnx writes.

    pnnx names blobs in0, in1... and out0, out1... in the order of the ONNX graph's inputs and
    outputs, and decides per blob whether axis 0 is a batch axis (batch_index=0) or not (233).
    """
    text = script.read_text(encoding="utf-8") if script.is_file() else ""
    feeds = [(m["blob"], int(m["bi"]) if m["bi"] is not None else 233) for m in _INPUT_LINE.finditer(text)]
    extracts = []
    for found in _EXTRACT_LINE.finditer(text):
        var = found["var"].split(",")[-1].strip()
        index = re.search(rf"{re.escape(var)}\.numpy\((?:batch_index=(\d+))?\)", text)
        batch = int(index.group(1)) if index and index.group(1) is not None else 233
        extracts.append((found["blob"], batch))
    if not feeds:  # pnnx versions without the script: fall back to its naming scheme
        feeds = [(f"in{i}", BATCH_AXIS) for i in range(len(input_names))]
        extracts = [(f"out{i}", BATCH_AXIS) for i in range(len(output_names))]
    if len(feeds) != len(input_names) or len(extracts) != len(output_names):
        raise StageError(
            f"pnnx wrote a model with {len(feeds)} input(s) and {len(extracts)} output(s), but the ONNX "
            f"graph has {len(input_names)} and {len(output_names)}.", stage="convert",
            hint="an input the graph never uses is dropped by pnnx; remove it from the model or the config.")
    return ([Blob(name, blob, batch) for name, (blob, batch) in zip(input_names, feeds)],
            [Blob(name, blob, batch) for name, (blob, batch) in zip(output_names, extracts)])
