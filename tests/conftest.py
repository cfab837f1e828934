import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the shared helpers (passkit.py) beside the tests

REPO = Path(__file__).resolve().parent.parent


import os  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

NCNN_TOOL_NAMES = ("ncnnoptimize", "ncnn2table", "ncnn2int8")


def find_ncnn_tools() -> Path | None:
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
        reason = "ncnn's tools (ncnnoptimize, ncnn2table, ncnn2int8) not found: set NCNN_TOOLS to their folder"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI must run these tests)")
        pytest.skip(reason)
    monkeypatch.setenv("NCNN_TOOLS", str(found))
    return found


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
    from deploykit.artifacts import last_report

    return code, err, json.loads(last_report(folder / "out").read_text())  # beside a verified run when it failed
