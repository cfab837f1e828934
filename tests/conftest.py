import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (passkit.py) beside the tests

REPO = Path(__file__).resolve().parent.parent
CONVERTERS = ("pnnx", "onnx2ncnn")


def find_onnx2ncnn() -> Optional[Path]:
    """The real onnx2ncnn binary: $ONNX2NCNN, else onnx2ncnn on PATH (None when neither is set)."""
    value = os.environ.get("ONNX2NCNN")
    found = Path(value) if value else (Path(p) if (p := shutil.which("onnx2ncnn")) else None)
    return found if found and found.is_file() and os.access(found, os.X_OK) else None


ONNX2NCNN = find_onnx2ncnn()  # looked up before any test changes the environment


def need_onnx2ncnn() -> Path:
    """The real binary, or a skip with the reason; in CI (CI=true) a missing binary fails the test."""
    if ONNX2NCNN is None:
        reason = ("no onnx2ncnn binary: set ONNX2NCNN or put onnx2ncnn on PATH (README, Converters: "
                  "scripts/build_onnx2ncnn.sh builds it from an ncnn checkout)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI builds it with ../shared/tools/onnx2ncnn/build.sh", pytrace=False)
        pytest.skip(reason)
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
