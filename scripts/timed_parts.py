"""Run one conversion in this process with timers on the parts that are not deploykit's own work.

    python scripts/timed_parts.py PARTS.json deploykit run CONFIG --force -q
    python scripts/timed_parts.py PARTS.json bench _route bare_pnnx MODEL FOLDER

`bench.py pipeline-cost` starts every measured run through this script, so that both routes are
split the same way: building the model (the user's code and its library imports), the exporter
(`torch.onnx.export`), deploykit's lint, onnxruntime (deploykit's checks of each stage file), the
first `import torch`, and every child process by kind (onnxsim, pnnx, the ncnn runner), with the
seconds each took. The rest of a run is the Python start-up, deploykit's own stages and its I/O.
PARTS.json is written when the process exits.

Timers go on a module only once something imports it (an import hook), so a run that never
imports torch, such as a cached re-run, does not pay for it here either. The bare route's model is
built once and reused for the reference forward and the export, as a user's script would.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import runpy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

SECONDS: dict[str, float] = {}
CALLS: dict[str, int] = {}
CHILDREN: list[dict[str, Any]] = []
_OPEN: list[str] = []  # the timed parts running now, innermost last


def _timed(part: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, its seconds added to `part`'s, without the seconds of timed parts it runs
    (the first `import torch`, inside building the model, counts as the import, not the build)."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        _OPEN.append(part)
        try:
            return function(*args, **kwargs)
        finally:
            _OPEN.pop()
            elapsed = time.perf_counter() - start
            SECONDS[part] = SECONDS.get(part, 0.0) + elapsed
            CALLS[part] = CALLS.get(part, 0) + 1
            if _OPEN:
                SECONDS[_OPEN[-1]] = SECONDS.get(_OPEN[-1], 0.0) - elapsed
    return wrapper


def _built_once(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
    models: dict[str, Any] = {}

    @functools.wraps(build)
    def wrapper(entry: Any) -> Any:
        if entry.name not in models:
            models[entry.name] = build(entry)
        return models[entry.name]
    return wrapper


def _patch_torch_onnx(module: Any) -> None:
    module.export = _timed("exporter", module.export)


def _patch_lint(module: Any) -> None:
    module.lint_module = _timed("lint", module.lint_module)


def _patch_export_stage(module: Any) -> None:
    module.build_torch_model = _timed("build", module.build_torch_model)


def _patch_zoo(module: Any) -> None:
    module.ZooModel.build = _timed("build", _built_once(module.ZooModel.build))


def _patch_onnxruntime(module: Any) -> None:
    session = module.InferenceSession
    session.__init__ = _timed("onnxruntime", session.__init__)
    session.run = _timed("onnxruntime", session.run)


PATCHES = {"torch": lambda module: None, "torch.onnx": _patch_torch_onnx, "deploykit.tools.lint": _patch_lint,
           "deploykit.stages.export": _patch_export_stage, "zoo": _patch_zoo, "onnxruntime": _patch_onnxruntime}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Applies PATCHES[name] right after module `name` has executed, before any importer binds it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            PATCHES[name](module)
        spec.loader.exec_module = _timed("import torch", exec_module) if name == "torch" else exec_module
        return spec


def _child_kind(args: Any) -> str:
    argv = [str(a) for a in (args if isinstance(args, (list, tuple)) else [args])]
    text = " ".join(argv)
    if "deploykit.stages.simplify" in text:
        return "onnxsim"
    if "deploykit.ncnn.runtime" in text:
        return "ncnn"
    if Path(argv[0]).name.startswith("pnnx"):
        return "pnnx"
    if Path(argv[0]).name.startswith("onnx2ncnn"):
        return "onnx2ncnn"
    return Path(argv[0]).name


def _time_children() -> None:
    """Each child process's seconds from its start to the moment it was seen ended."""
    original_init, original_wait, original_poll = subprocess.Popen.__init__, subprocess.Popen.wait, subprocess.Popen.poll

    def init(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
        self._timed_part = {"kind": _child_kind(args), "start": time.perf_counter()}
        original_init(self, args, *rest, **kwargs)

    def ended(self: subprocess.Popen) -> None:
        part = getattr(self, "_timed_part", None)
        if part is not None and self.returncode is not None and "seconds" not in part:
            part["seconds"] = time.perf_counter() - part.pop("start")
            CHILDREN.append(part)

    def wait(self: subprocess.Popen, *args: Any, **kwargs: Any) -> Any:
        try:
            return original_wait(self, *args, **kwargs)
        finally:
            ended(self)

    def poll(self: subprocess.Popen) -> Any:
        try:
            return original_poll(self)
        finally:
            ended(self)

    subprocess.Popen.__init__, subprocess.Popen.wait, subprocess.Popen.poll = init, wait, poll


def _write(path: Path, started: float) -> None:
    children: dict[str, float] = {}
    for child in CHILDREN:
        children[child["kind"]] = children.get(child["kind"], 0.0) + child["seconds"]
    path.write_text(json.dumps({"seconds": time.perf_counter() - started, "parts": SECONDS, "calls": CALLS,
                                "children": children, "child_count": len(CHILDREN)}), encoding="utf-8")


def main(argv: list[str]) -> int:
    out, tool, rest = Path(argv[0]), argv[1], argv[2:]
    atexit.register(_write, out, time.perf_counter())
    sys.meta_path.insert(0, _PatchOnImport())
    _time_children()
    if tool == "deploykit":
        from deploykit.cli import main as deploykit_main

        return deploykit_main(rest)
    bench = Path(__file__).resolve().with_name("bench.py")
    sys.argv = [str(bench), *rest]
    try:
        runpy.run_path(str(bench), run_name="__main__")
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
