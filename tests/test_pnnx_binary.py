"""Where the pnnx binary is found: the package's own binary, located without importing the package
(which imports torch), then PATH; converter.path and $PNNX before both."""

from __future__ import annotations

import subprocess
import sys
import pytest

from deploykit.core.errors import ConfigError, StageError
from deploykit.ncnn.converters.pnnx import PnnxConverter


def test_the_shipped_binary_is_the_packages_and_finding_it_imports_no_torch():
    code = ("import sys\n"
            "from deploykit.ncnn.converters.pnnx import PnnxConverter\n"
            "exe = PnnxConverter().executable()\n"
            "assert 'torch' not in sys.modules and 'pnnx' not in sys.modules, sorted(sys.modules)[:5]\n"
            "import pnnx\n"
            "print(exe, pnnx.EXEC_PATH)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found, shipped = done.stdout.split()
    assert found == shipped


def test_converter_path_and_the_environment_come_before_the_package(tmp_path, monkeypatch):
    mine = tmp_path / "pnnx"
    mine.write_text("#!/bin/sh\n")
    mine.chmod(0o755)
    assert PnnxConverter(mine).executable() == mine
    monkeypatch.setenv("PNNX", str(mine))
    assert PnnxConverter().executable() == mine


def test_a_configured_path_that_is_not_there_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "pnnx"
    with pytest.raises((ConfigError, StageError)) as raised:
        PnnxConverter(missing).executable()
    assert "converter.path" in raised.value.message and str(missing) in raised.value.message


def test_without_the_package_on_the_path_the_binary_is_not_taken_from_it(monkeypatch):
    import importlib.util

    from deploykit.ncnn.converters import pnnx as module

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert module.shipped_binary() is None
    monkeypatch.undo()
    found = module.shipped_binary()
    assert found is not None and found.name == "pnnx" and found.is_file()
