import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (passkit.py) beside the tests

REPO = Path(__file__).resolve().parent.parent
CONVERTERS = ("pnnx", "onnx2ncnn")
NCNN_TOOL_NAMES = ("ncnnoptimize", "ncnn2table", "ncnn2int8")


def skip_or_fail(reason: str, in_ci: str) -> None:
    """Skip a test for want of a tool, naming the reason; in CI (CI=true) fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; {in_ci}", pytrace=False)
    pytest.skip(reason)


def find_ncnn_tools() -> Optional[Path]:
    """The folder of ncnn's tools: $NCNN_TOOLS, or where ncnnoptimize is on PATH."""
    value = os.environ.get("NCNN_TOOLS")
    found = Path(value) if value else (Path(p).parent if (p := shutil.which("ncnnoptimize")) else None)
    if found and all(os.access(found / name, os.X_OK) for name in NCNN_TOOL_NAMES):
        return found
    return None


@pytest.fixture
def ncnn_tools(monkeypatch) -> Path:
    """ncnn's tools for a test that runs them: skipped with the reason when absent, a failure in CI."""
    found = find_ncnn_tools()
    if found is None:
        skip_or_fail("ncnn's tools (ncnnoptimize, ncnn2table, ncnn2int8) not found: set NCNN_TOOLS to their folder",
                     "CI must run these tests")
    monkeypatch.setenv("NCNN_TOOLS", str(found))
    return found


def find_onnx2ncnn() -> Optional[Path]:
    """The real onnx2ncnn binary: $ONNX2NCNN, else onnx2ncnn on PATH (None when neither is set)."""
    value = os.environ.get("ONNX2NCNN")
    found = Path(value) if value else (Path(p) if (p := shutil.which("onnx2ncnn")) else None)
    return found if found and found.is_file() and os.access(found, os.X_OK) else None


ONNX2NCNN = find_onnx2ncnn()  # looked up before any test changes the environment


def need_onnx2ncnn() -> Path:
    """The real binary, or a skip with the reason; in CI (CI=true) a missing binary fails the test."""
    if ONNX2NCNN is None:
        skip_or_fail("no onnx2ncnn binary: set ONNX2NCNN or put onnx2ncnn on PATH (README, Converters: "
                     "scripts/build_onnx2ncnn.sh builds it from an ncnn checkout)",
                     "CI builds it with ../shared/tools/onnx2ncnn/build.sh")
    return ONNX2NCNN


@pytest.fixture
def onnx2ncnn(monkeypatch) -> Path:
    """The real onnx2ncnn, also as $ONNX2NCNN for what the test runs."""
    path = need_onnx2ncnn()
    monkeypatch.setenv("ONNX2NCNN", str(path))
    return path


@pytest.fixture(params=CONVERTERS)
def converter(request, monkeypatch) -> str:
    """Each converter in turn ("pnnx", then "onnx2ncnn" with the real binary as $ONNX2NCNN)."""
    if request.param == "onnx2ncnn":
        monkeypatch.setenv("ONNX2NCNN", str(need_onnx2ncnn()))
    return request.param


def run_yaml(capsys, folder: Path, config: str, *sets: str) -> tuple[int, str, dict]:
    """`deploykit run` on a config written as `config` (writing into folder/out), with `--set`s;
    returns the exit code, what it printed on one line, and the report.json of that run."""
    import json

    from deploykit.cli import main

    path = folder / "config.yaml"
    path.write_text(config + f"output: {folder / 'out'}\n")
    code = main(["run", str(path), *(arg for item in sets for arg in ("--set", item))])
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    from deploykit.core.artifacts import last_report

    return code, err, json.loads(last_report(folder / "out").read_text())  # beside a verified run when it failed
