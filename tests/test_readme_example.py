"""The "Writing a pass" example in README.md, run as a user would run it."""

import re

import numpy as np
import pytest

from conftest import REPO
from deploykit.cli import main
from deploykit.core.config import PassEntry
from deploykit.onnx.graph_pass import load_plugins, registry, resolve_passes
from passkit import assert_left_alone, assert_rewrites, model_from_text


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Writing a pass", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path_factory.mktemp("user") / "my_passes.py"
    path.write_text(code)
    load_plugins([str(path)])
    return path


def test_the_example_pass_removes_a_multiplication_by_ones(plugin):
    cls = registry()["drop_multiply_by_one"]
    model = model_from_text("""
        g (float[2,3] x) => (float[2,3] y) {
            m = Mul(x, ones)
            y = Relu(m)
        }""", {"ones": np.ones((1, 3), np.float32)})
    assert_rewrites(model, cls, expected_ops=["Relu"], inputs={"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2})


def test_the_example_pass_refuses_a_broadcast(plugin):
    model = model_from_text("""
        g (float[1,3] x) => (float[2,3] y) {
            m = Mul(x, ones)
            y = Relu(m)
        }""", {"ones": np.ones((2, 3), np.float32)})
    assert assert_left_alone(model, registry()["drop_multiply_by_one"]()) == [
        "Mul '': the ones broadcast x to another shape"]


def test_auto_in_a_list_expands_to_the_builtins_and_plugins_run_where_named(plugin):
    chosen = resolve_passes([PassEntry(name="auto"), PassEntry(name="drop_multiply_by_one")], "pnnx")
    builtins = resolve_passes(None, "pnnx")
    assert [p.name for p in chosen] == [p.name for p in builtins] + ["drop_multiply_by_one"]
    assert "drop_multiply_by_one" not in [p.name for p in builtins]


def test_deploykit_passes_lists_the_plugin(plugin, capsys):
    assert main(["passes", "--plugin", str(plugin)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "drop_multiply_by_one" in out and "id_mask_lookup" in out


def test_an_entry_after_auto_configures_the_pass_auto_runs_in_its_place():
    auto = [p.name for p in resolve_passes(None, "onnx2ncnn")]
    chosen = resolve_passes([PassEntry(name="auto"), PassEntry(name="embedding_gather", args={"on_host": True}),
                             PassEntry(name="id_mask_lookup", enabled=False)], "onnx2ncnn")
    assert [p.name for p in chosen] == [name for name in auto if name != "id_mask_lookup"]
    assert next(p for p in chosen if p.name == "embedding_gather").args.on_host is True
    # Without `auto` in the list, entries are the passes, in the order given.
    listed = resolve_passes([PassEntry(name="drop_identity"), PassEntry(name="fold_shapes")], "onnx2ncnn")
    assert [p.name for p in listed] == ["drop_identity", "fold_shapes"]
