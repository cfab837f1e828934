"""Stage caching: a re-run with nothing changed reuses each stage's artifacts.

Every stage records a key: a digest of everything its result depends on (the artifact it reads,
its config section, the tool versions, for the export the model's code and weights and the
inputs). A stage whose key matches the previous run's record in the same folder, and whose
artifact is still there with the recorded sha256, is restored instead of run; any change gives
another key from the first affected stage on, since each key includes the artifact before it.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from deploykit.core.artifacts import sha256

_REUSABLE = ("ok", "unchanged", "skipped")
ATTEMPTS = "attempts"  # the folder of a run's attempts that did not ship, one subfolder each


def digest(*parts: Any) -> str:
    text = json.dumps(parts, sort_keys=True, default=_jsonable)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """The code and the weights of a torch model: the source files of its module classes (outside
    torch itself, whose version is keyed separately) and every tensor of its state_dict."""
    h = hashlib.sha256()
    files, unfiled = set(), {}
    for module in model.modules():
        kind = type(module)
        try:
            source = inspect.getsourcefile(kind)
        except (TypeError, OSError):  # a class defined in `python -c`, a notebook or an interpreter session
            source = None
        if source and Path(source).is_file():
            if "/torch/" not in source.replace("\\", "/"):
                files.add(source)
        elif not kind.__module__.startswith("torch."):
            unfiled[f"{kind.__module__}.{kind.__qualname__}"] = _code_digest(kind)
    for source in sorted(files):
        h.update(source.encode())
        h.update(Path(source).read_bytes())
    for name in sorted(unfiled):
        h.update(f"{name}:{unfiled[name]}".encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _code_digest(kind: type) -> str:
    """The compiled code of a class's own functions, for a class whose source file is not at hand."""
    h = hashlib.sha256()
    for name, value in sorted(vars(kind).items()):
        code = getattr(value, "__code__", None)
        if code is not None:
            h.update(name.encode())
            h.update(code.co_code)
            h.update(repr(code.co_consts).encode())
    return h.hexdigest()


def source_digest(obj: Any) -> str:
    """The source file an object (e.g. a pass class) is defined in, and the files of the modules
    it imports from its own top-level package or from deploykit, followed transitively: a pass
    that takes a helper from another file gets another key when that helper changes."""
    try:
        source = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        source = None
    if source is None:
        return "unknown"
    first = Path(source)
    module = getattr(obj, "__module__", "") or ""
    roots = {module.split(".")[0], "deploykit", "passes"} - {""}
    h = hashlib.sha256()
    for path in sorted(_local_imports(first, roots)):
        h.update(str(path).encode())
        h.update(sha256(path).encode())
    return h.hexdigest()


def _local_imports(first: Path, roots: set[str]) -> set[Path]:
    """`first` and the source files of the modules under `roots` that it imports, transitively."""
    seen: set[Path] = set()
    todo = [first]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo += [found for name in _imported_names(path) if name.split(".")[0] in roots
                 for found in [_module_file(name)] if found is not None]
    return seen


_IMPORTS: dict[tuple[Path, int, int], list[str]] = {}  # by file version: a run reads each file once


def _imported_names(path: Path) -> list[str]:
    stat = path.stat()
    version = (path, stat.st_size, stat.st_mtime_ns)
    if version not in _IMPORTS:
        _IMPORTS[version] = _parse_imports(path)
    return _IMPORTS[version]


def _parse_imports(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from pkg import mod` may name a module as well as an attribute
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def _module_file(name: str) -> Optional[Path]:
    """The source file of module `name`, found without importing anything: its own file when it is
    imported, else under the folder of its nearest imported package (an imported attribute, or a
    module that is not there, has none)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        if cut == len(parts):
            file = getattr(module, "__file__", None)
            return Path(file) if file and file.endswith(".py") else None
        folders = list(getattr(module, "__path__", None) or [])
        if not folders:
            return None  # `from module import attribute`
        base = Path(folders[0]).joinpath(*parts[cut:])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    return None


class StageCache:
    """The stage records of the previous runs into this artifact folder (the folders that hold
    them, newest first), looked up by stage name and key."""

    def __init__(self, folders: list[Path], enabled: bool) -> None:
        self.previous: list[tuple[Path, dict[str, dict]]] = []
        for folder in folders if enabled else []:
            report = _read_report(folder / "report.json")
            self._add(folder, report.get("stages"))
            for attempt in report.get("attempts") or []:  # the attempts that did not ship (deploykit/variations.py)
                where = Path(str(attempt.get("report") or "")) if isinstance(attempt, dict) else Path()
                if len(where.parts) == 3 and where.parts[0] == ATTEMPTS and ".." not in where.parts:
                    self._add(folder / where.parent, _read_report(folder / where).get("stages"))

    def remember(self, folder: Path, stages: list[dict]) -> None:
        """The stages of an earlier attempt of this run, whose files are in `folder`: looked up first
        (with --force too: they are this run's own)."""
        self._add(folder, stages, first=True)

    def _add(self, folder: Path, stages: Any, first: bool = False) -> None:
        if not isinstance(stages, list):
            return
        entry = (folder, {s["name"]: s for s in stages if isinstance(s, dict) and "name" in s})
        self.previous.insert(0 if first else len(self.previous), entry)

    def lookup(self, name: str, key: str) -> Optional[tuple[dict, Path]]:
        """The record of a stage with this key whose files are all still there unchanged, and
        the folder that holds them."""
        for folder, records in self.previous:
            record = records.get(name)
            if record and record.get("key") == key and record.get("status") in _REUSABLE \
                    and _files_unchanged(folder, record.get("outputs_sha256") or {}):
                return record, folder
        return None


def _read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return report if isinstance(report, dict) else {}


def _files_unchanged(folder: Path, files: dict[str, str]) -> bool:
    return all((folder / file).is_file() and sha256(folder / file) == expected for file, expected in files.items())
