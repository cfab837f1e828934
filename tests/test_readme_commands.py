"""Every command block of README.md, run as a user would run it, in the order the README gives
them, in a fresh working directory (with the repository's configs/, tests/ and scripts/ in it).
Where the README shows the output (a ```text block after the commands), the output is compared
line by line: times and figures in e-notation, which change from machine to machine, are
compared as placeholders, and a README line `...` stands for any number of lines."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, find_ncnn_tools

README = (REPO / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent

# Commands not run here, each with the reason and where it is checked instead. Nothing else may be skipped.
NOT_RUN = {
    'pip install -c constraints.txt -e ".[test]"': "the set-up itself: .ci/run runs it on a clean checkout",
    "python -m pytest -q": "this test suite itself: .ci/run runs it",
}
# The suite's fast tier: a part of the suite .ci/run runs whole.
FAST_TIER = 'python -m pytest -q -m "not slow"'

# Benchmarks over the whole zoo take far longer than a test may: each subcommand is checked to exist
# here, and tests/test_bench_smoke.py runs the coverage benchmark on one model.
LONG_BENCHMARKS = re.compile(r"^python scripts/bench\.py (coverage|speed|pipeline-cost)$")
NEEDS_NCNN_TOOLS = ("configs/*.yaml", "configs/mobile_release.yaml")
# `deploykit lint` and `deploykit check` exit 1 when they found something, as the README says
FOUND_SOMETHING = {"deploykit lint": 1, "deploykit check": 1}


@dataclass
class Block:
    language: str  # bash or python
    text: str
    line: int
    output: list[str] = field(default_factory=list)  # the ```text block after it, if any

    @property
    def commands(self) -> list[str]:
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in self.text.splitlines()]
        return [line for line in lines if line and not line.startswith("#")]


def readme_blocks() -> list[Block]:
    """The bash and python blocks a user runs, in order; a plugin file (`@register_pass`) is
    tested by tests/test_readme_example.py and is not a command."""
    blocks: list[Block] = []
    for found in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M):
        language, text = found.group(1), found.group(2)
        line = README.count("\n", 0, found.start()) + 1
        if language == "text" and blocks:
            blocks[-1].output = text.rstrip("\n").splitlines()
        elif language == "bash" or (language == "python" and "@register_pass" not in text):
            blocks.append(Block(language, text, line))
    return blocks


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    for name in ("configs", "tests", "scripts"):
        (folder / name).symlink_to(REPO / name)
    return folder


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command's stdout and stderr as one stream, in the order they were written."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1800, stdin=subprocess.DEVNULL, executable="/bin/bash")


def normalised(line: str) -> str:
    line = re.sub(r"\b\d+\.\ds\b", "<s>", line)  # times
    line = re.sub(r"-?\d\.\d+e[-+]\d+", "<e>", line)  # figures of the machine's arithmetic
    line = re.sub(r"[━─]+", "─", line)  # rules as long as the cells they span
    return " ".join(line.split())


def assert_output_shown(shown: list[str], printed: str) -> None:
    """Each README line is printed, in order; consecutive README lines are consecutive output lines."""
    actual = [normalised(line) for line in printed.splitlines() if line.strip()]
    position, gap = 0, False
    for expected in (normalised(line) for line in shown):
        if expected == "...":
            gap = True
            continue
        if gap:
            found = next((i for i in range(position, len(actual)) if actual[i] == expected), None)
            assert found is not None, f"README line not printed (after line {position}): {expected!r}"
        else:
            found = position
            assert found < len(actual) and actual[found] == expected, (
                f"README line {expected!r} != printed {actual[found] if found < len(actual) else '(nothing)'!r}")
        position, gap = found + 1, False


def test_the_readme_has_the_blocks_this_test_knows():
    commands = [c for block in BLOCKS if block.language == "bash" for c in block.commands]
    assert commands[:2] == ["deploykit run artifacts/encoder/00_export.onnx -o artifacts/from_onnx",
                            "deploykit run --factory deploykit.models.encoder:build_encoder --input ids:int64[1,16] "
                            "--input-range ids=0:1000"]  # the README opens with them, after the Python one
    assert BLOCKS[0].language == "python" and "deploykit.convert(" in BLOCKS[0].text
    assert set(NOT_RUN) | {FAST_TIER} <= set(commands)
    assert sum(bool(LONG_BENCHMARKS.match(c)) for c in commands) == 3
    assert sum(bool(block.output) for block in BLOCKS) >= 2  # deploykit run's and deploykit lint's output


def test_the_set_up_commands_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in NOT_RUN:
        assert command in ci
    assert FAST_TIER.startswith("python -m pytest -q ")  # the suite's command, with the marker



@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}-{b.language}" for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, workdir: Path):
    if block.language == "python":
        done = run(f"{shlex.quote(sys.executable)} -c {shlex.quote(block.text)}", workdir)
        assert done.returncode == 0, done.stdout[-3000:]
        if "extractor.extract" in block.text:  # the manifest example: every output matches its golden
            errors = [float(m) for m in re.findall(r"max abs error (\S+)", done.stdout)]
            assert len(errors) == 2 and max(errors) < 1e-4, done.stdout
        return
    if any(needed in block.text for needed in NEEDS_NCNN_TOOLS):
        if find_ncnn_tools() is None:
            reason = "ncnn's tools (ncnnoptimize, ncnn2table, ncnn2int8) not found: set NCNN_TOOLS to their folder"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{reason} (CI must run this README block)")
            pytest.skip(reason)
    printed = ""
    for command in block.commands:
        if command in NOT_RUN or command == FAST_TIER:
            continue
        if LONG_BENCHMARKS.match(command):
            done = run(f"{command} --help", workdir)
            assert done.returncode == 0, done.stdout
            continue
        done = run(command, workdir)
        expected = next((code for start, code in FOUND_SOMETHING.items() if command.startswith(start)), 0)
        assert done.returncode == expected, f"{command}\n{done.stdout[-4000:]}"
        assert "Traceback" not in done.stdout
        printed = done.stdout
    if block.output:
        assert_output_shown(block.output, printed)


def test_the_output_comparison_catches_a_changed_line_and_keeps_the_order():
    printed = "ok  export  126 nodes  1.2s\nok  simplify  95 nodes  0.3s\nverified: max abs 7.15e-07\n"
    assert_output_shown(["ok export 126 nodes 9.9s", "...", "verified: max abs 5.96e-07"], printed)
    with pytest.raises(AssertionError, match="94 nodes"):
        assert_output_shown(["ok export 126 nodes 9.9s", "ok simplify 94 nodes 0.3s"], printed.replace("95", "96"))
    with pytest.raises(AssertionError, match="not printed"):  # printed, but before the line shown above it
        assert_output_shown(["ok export 126 nodes 1.2s", "...", "verified: max abs 1e-07", "...",
                             "ok simplify 95 nodes 0.3s"], printed)
