"""The "Adding a built-in pass" example of passes/README.md, run as written: its pass file loaded as
a built-in pass module, and its test file's tests run on it."""

import importlib.util
import re
import sys

import pytest

from conftest import REPO
from deploykit.onnx import graph_pass
from deploykit.passes.indexing import GatherToSliceArgs
from deploykit.tools import preflight_rules


def example_blocks() -> list[str]:
    section = (REPO / "passes" / "README.md").read_text().split("## Adding a built-in pass", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture
def example(monkeypatch, tmp_path):
    monkeypatch.setattr(graph_pass, "_REGISTRY", graph_pass.registry())  # left as it was after the test
    code = example_blocks()[0]
    path = tmp_path / "div_by_power_of_two.py"
    path.write_text(code)
    name = "deploykit.passes.div_by_power_of_two"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_the_example_pass_is_a_built_in_and_its_test_passes(example):
    cls = graph_pass.registry()["div_by_power_of_two"]
    assert cls is example.DivByPowerOfTwoPass and graph_pass.is_builtin(cls)
    assert cls.summary() == "Div(x, c) with c a constant power of two -> Mul(x, 1/c), exact."
    tests: dict = {}
    exec(example_blocks()[2], tests)
    ran = [name for name, test in tests.items() if name.startswith("test_") and test() is None]
    assert len(ran) == 2


def test_the_examples_of_arguments_and_order_are_the_real_forms():
    blocks = example_blocks()
    declared: dict = {}
    exec(blocks[1], declared)
    assert declared["GatherToSliceArgs"].model_json_schema() == GatherToSliceArgs.model_json_schema()
    line = re.search(r'"(\w+)",\s+# ', blocks[3])
    assert line is not None and line.group(1) == "div_by_power_of_two"
    rule = eval(blocks[4].strip().rstrip(","), vars(preflight_rules))
    assert rule in preflight_rules.TARGETS["onnx2ncnn"].rules
