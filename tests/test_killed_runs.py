"""A re-run stopped at each stage boundary (by the line it prints, then SIGKILL or SIGTERM) leaves
the artifact folder as the complete old run or the complete new one, no process behind, and
nothing the next run does not remove."""

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.core.artifacts import MARKER, OutputFolder
from passkit import model_from_text

pytestmark = pytest.mark.slow  # end to end: runs the converters and ncnn


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_config(folder: Path, extra: str = "") -> Path:
    model = folder / "tiny.onnx"
    onnx.save(model_from_text("""
        g (float[1,3,8] x) => (float[1,3,4] y) {
            m = MatMul(x, w)
            y = Relu(m)
        }""", {"w": np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)}), str(model))
    path = folder / "tiny.yaml"
    path.write_text(f"model: {{onnx: {model}}}\ninputs: [{{name: x, shape: [1, 3, 8]}}]\noutput: {folder / 'out'}\n"
                    + extra)
    return path


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deploykit", "run", str(config), *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def stop_after(process: subprocess.Popen, line: str, how: signal.Signals) -> list[str]:
    """Read what the run prints until `line` (a regex), then send `how`; returns what it printed."""
    printed = []
    for text in process.stderr:
        printed.append(text)
        if re.search(line, text):
            process.send_signal(how)
            break
    printed += process.stderr.read().splitlines(keepends=True)
    process.wait(timeout=60)
    return printed


def complete_run(folder: Path) -> bool:
    """Every file the folder's marker lists is there, as the report's record of it says."""
    marker = json.loads((folder / MARKER).read_text())
    report = json.loads((folder / "report.json").read_text())
    recorded = {name: digest for stage in report["stages"] for name, digest in stage["outputs_sha256"].items()}
    present = hashes(folder)
    return (sorted(present) == sorted([*marker["files"], MARKER])
            and all(present[name] == digest for name, digest in recorded.items()))


def processes_in(place: Path) -> list[int]:
    """Living processes whose temporary folder (TMPDIR) is under `place`: what a run started."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if f"TMPDIR={place}".encode() in environ and state not in ("Z", "X"):
            found.append(int(proc.name))
    return found


def no_processes_in(place: Path) -> bool:
    for _ in range(100):  # the kernel kills them at once; their reaping takes a moment
        if not processes_in(place):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("old")
    assert subprocess.run([sys.executable, "-m", "deploykit", "run", str(write_config(folder)), "-q"],
                          capture_output=True).returncode == 0
    return folder / "out"


@pytest.mark.parametrize("boundary", ["import", "simplify", "check", "convert", "verify"])
def test_a_rerun_killed_at_a_stage_boundary_leaves_the_old_run_or_the_new_one(old_run, tmp_path, boundary):
    config = write_config(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(old_run, out)
    old = hashes(out)
    printed = stop_after(start(config, "--set", "seed=7"), rf"^\s*ok\s+{boundary}\b", signal.SIGKILL)
    assert any(re.search(rf"^\s*ok\s+{boundary}\b", line) for line in printed), printed
    now = hashes(out)
    if now != old:  # the run got to its end before the signal
        assert boundary == "verify" and complete_run(out)
        assert json.loads((out / "report.json").read_text())["seed"] == 7
    else:  # killed on the way: its staging folder is left beside the old run
        assert _own_run_dir(tmp_path) and complete_run(out)
    assert no_processes_in(tmp_path), "a process of the killed run still runs"
    with OutputFolder(out).staging():  # the next run removes what the killed one left
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == [".out.deploykit-lock",
                                                                                         *_own_run_dir(tmp_path)]
    assert hashes(out) == now and sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.onnx", "tiny.yaml"]


def _own_run_dir(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".out.deploykit-run-")]


def test_a_rerun_stopped_by_sigterm_while_converting_ends_the_converter_and_reports_beside(old_run, tmp_path):
    pids = tmp_path / "pids"
    slow = tmp_path / "slow-pnnx"
    slow.write_text(f"#!/bin/sh\nsleep 1000 &\necho $! > {pids}\necho converting\nwait\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    config = write_config(tmp_path, f"converter: {{path: {slow}}}\n")
    out = tmp_path / "out"
    shutil.copytree(old_run, out)
    old = hashes(out)
    process = start(config)
    for _ in range(600):  # until the converter has started its own child
        if pids.is_file() and pids.read_text().strip():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    printed = process.stderr.read()
    assert process.wait(timeout=60) == 128 + signal.SIGTERM, printed
    assert "Traceback" not in printed and "[convert] stopped by SIGTERM" in " ".join(printed.split())
    assert hashes(out) == old
    report = json.loads((tmp_path / "out.failed" / "report.json").read_text())
    assert report["error"]["message"] == "stopped by SIGTERM." and report["stages"][-1]["name"] == "convert"
    assert no_processes_in(tmp_path), "the converter or a process it started still runs"
    assert int(pids.read_text()) not in processes_in(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
