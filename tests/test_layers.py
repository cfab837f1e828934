"""The import direction of deploykit's layers: each module imports only from its own layer and the
layers below it, at module level or inside a function. Imports for type annotations only (under
`if TYPE_CHECKING:`) are not counted: they do not run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module's layer is the first prefix that names it; the rest of the package (the
# pipeline, variations, the manifest, the Python API, the CLI) is the top, free to import anything.
LAYERS = [
    ("core", ("deploykit.core",)),
    ("onnx", ("deploykit.onnx", "deploykit.graph_pass")),
    ("passes", ("deploykit.passes",)),
    ("ncnn", ("deploykit.ncnn",)),
    ("tools", ("deploykit.tools",)),
    ("stages", ("deploykit.stages",)),
]
TOP = len(LAYERS)

# Upward imports by design, each with its reason.
ALLOWED = {
    ("deploykit.onnx.graph_pass", "deploykit.passes"):
        "the pass registry imports the built-in passes on first use, as it does plugins: they register themselves",
}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return TOP


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / "deploykit").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "passes").rglob("*.py")):  # installed as deploykit.passes
        parts = ("deploykit", *path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module imported) for each deploykit import that runs; relative imports resolved."""
    found: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from deploykit.x import y` may name a module y: count the most specific one that exists
            for alias in node.names:
                found.append((node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in FILES else base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return [(line, name) for line, name in found if name.startswith("deploykit.")]


FILES = module_files()


def upward_imports() -> list[str]:
    wrong = []
    for module, path in FILES.items():
        own = layer_of(module)
        for line, imported in imports(path, module):
            target = next((m for m in sorted(FILES, key=len, reverse=True)
                           if imported == m or imported.startswith(m + ".")), imported)
            if layer_of(target) > own and (module, target) not in ALLOWED:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[own][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0] if layer_of(target) < TOP else 'the top'})")
    return wrong


def test_no_module_imports_from_a_layer_above_its_own():
    assert upward_imports() == []


def test_every_allowed_exception_still_exists():
    present = {(module, target) for module, path in FILES.items() for _, target in imports(path, module)}
    assert set(ALLOWED) <= present, "an allowed upward import is gone: take it out of ALLOWED"


def test_the_walk_sees_imports_inside_functions_and_not_type_only_ones(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import deploykit.stages.context\n"
                      "def f():\n    from deploykit.pipeline import run\n    from . import judge\n")
    found = [name for _, name in imports(source, "deploykit.ncnn.sample")]
    assert found == ["deploykit.pipeline.run" if "deploykit.pipeline.run" in FILES else "deploykit.pipeline",
                     "deploykit.ncnn.judge"]
    assert layer_of("deploykit.pipeline") == TOP > layer_of("deploykit.ncnn.judge")


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_each_layer_has_modules(layer):
    prefixes = dict(LAYERS)[layer]
    assert any(layer_of(m) == [n for n, _ in LAYERS].index(layer) for m in FILES), prefixes
