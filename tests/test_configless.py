"""Configs made without a YAML file, deploykit init, and a factory found beside its config: fast
tests, no conversion."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import yaml

from conftest import REPO
from deploykit.cli import main
from deploykit.configless import configless_raw, id_ranges, init_yaml, onnx_input_specs, parse_input, parse_range
from deploykit.core.config import build_config, load_config
from deploykit.core.errors import ConfigError
from deploykit.stages.export import build_torch_model
from passkit import model_from_text


def save(tmp_path, text, weights):
    path = tmp_path / "m.onnx"
    onnx.save(model_from_text(text, weights), str(path))
    return path


def test_integer_ids_get_the_rows_of_the_smallest_table_a_gather_reads_them_into(tmp_path):
    path = save(tmp_path, """
        g (int64[1,4] ids, int64[1,4] other, int64[1,4] summed, float[1,4] x) => (float[1,4,3] a, float[1,4,2] b,
                                                                                  float[1,4,2] c, float[1,4] d) {
            as_int = Cast<to=6>(ids)
            a = Gather(big, as_int)
            b = Gather(small, other)
            c = Gather(smaller, other)
            plus = Add(summed, one)
            c2 = Gather(small, plus)
            d = Identity(x)
        }""", {"big": np.zeros((50, 3), np.float32), "small": np.zeros((9, 2), np.float32),
               "smaller": np.zeros((7, 2), np.float32), "one": np.ones((1, 4), np.int64)})
    # through Cast it is still the id; an Add makes another number, whose range says nothing of the input's
    assert id_ranges(onnx.load(str(path))) == {"ids": 50, "other": 7}
    specs = onnx_input_specs(path)
    assert specs == [{"name": "ids", "dtype": "int64", "shape": [1, 4], "range": [0, 50]},
                     {"name": "other", "dtype": "int64", "shape": [1, 4], "range": [0, 7]},
                     {"name": "summed", "dtype": "int64", "shape": [1, 4]},
                     {"name": "x", "dtype": "float32", "shape": [1, 4]}]


def test_an_unfixed_batch_axis_is_one_and_another_unfixed_axis_asks_for_an_input_option(tmp_path):
    path = save(tmp_path, """
        g (float[N,3] x) => (float[N,3] y) { y = Relu(x) }""", {})
    assert onnx_input_specs(path) == [{"name": "x", "dtype": "float32", "shape": [1, 3]}]
    path = save(tmp_path, """
        g (float[1,T] x) => (float[1,T] y) { y = Relu(x) }""", {})
    with pytest.raises(ConfigError, match=re.escape("give it: --input x:float32[1,N]")):
        onnx_input_specs(path)
    # --input gives what the graph leaves open
    assert onnx_input_specs(path, {"x": parse_input("x:float32[1,40]")}) == [
        {"name": "x", "dtype": "float32", "shape": [1, 40]}]
    with pytest.raises(ConfigError, match=r"--input 'y': m.onnx has no such input \(it has x\)"):
        onnx_input_specs(path, {"x": parse_input("x[1,40]"), "y": parse_input("y[1]")})


def test_input_and_range_options():
    assert parse_input("ids:int64[1,16]") == {"name": "ids", "dtype": "int64", "shape": [1, 16]}
    assert parse_input("x[1, 3, 8, 8]") == {"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}
    assert parse_range("ids=0:1000") == ("ids", [0, 1000]) and parse_range("x=-1.5:2") == ("x", [-1.5, 2])
    for bad in ("ids:int64", "ids:int64(1,16)", ":int64[1]"):
        with pytest.raises(ConfigError, match="expected NAME:DTYPE"):
            parse_input(bad)
    with pytest.raises(ConfigError, match="unknown dtype 'int128'"):
        parse_input("ids:int128[1]")
    with pytest.raises(ConfigError, match="expected NAME=LOW:HIGH"):
        parse_range("ids=0-1000")


def test_a_factory_needs_its_inputs_and_a_range_names_one_of_them():
    with pytest.raises(ConfigError, match="no --input given"):
        configless_raw(factory="pkg.mod:build")
    raw, name = configless_raw(factory="pkg.mod:build", inputs=["ids:int64[1,16]"], ranges=["ids=0:1000"])
    assert name == "build" and raw["inputs"] == [{"name": "ids", "dtype": "int64", "shape": [1, 16],
                                                  "range": [0, 1000]}]
    config = build_config(raw, ["export.opset=17"], source="--factory pkg.mod:build", name=name)
    assert config.export.opset == 17 and str(config.output) == "artifacts/build"
    with pytest.raises(ConfigError, match="there is no input 'x'"):
        configless_raw(factory="pkg.mod:build", inputs=["ids:int64[1,16]"], ranges=["x=0:1"])


def reference_keys() -> list[str]:
    """Every key the README's config reference lists (`parity.atol` / `rtol` / `min_cosine` is three)."""
    table = (REPO / "README.md").read_text().split("## Config reference", 1)[1].split("\n## ", 1)[0]
    keys = []
    for row in re.findall(r"^\| `([^|]+?)` \|", table, re.M):
        names = [part.strip(" `") for part in row.split("/")]
        section = names[0].rsplit(".", 1)[0] if "." in names[0] else ""
        keys += [names[0]] + [f"{section}.{name}" for name in names[1:]]
    return keys


def has_key(data, key: str) -> bool:
    node = data
    for part in key.replace("[]", ".[]").split("."):
        if part == "[]":
            if not isinstance(node, list) or not node:
                return False
            node = node[0]
        elif part == "<name>":
            if not isinstance(node, dict) or not node:
                return False
            node = next(iter(node.values()))
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def test_init_writes_every_key_of_the_readme_reference_and_a_config_that_loads(tmp_path, capsys):
    path = save(tmp_path, """
        g (int64[1,4] ids) => (float[1,4,3] a) { a = Gather(table, ids) }""", {"table": np.zeros((50, 3), np.float32)})
    config_file = tmp_path / "sub" / "m.yaml"
    config_file.parent.mkdir()
    assert main(["init", str(path), "-o", str(config_file)]) == 0
    text = config_file.read_text()
    keys = reference_keys()
    assert len(keys) > 40 and "parity.min_cosine" in keys and "model.factory_folder" in keys
    # each commented key, uncommented, is where the reference says
    uncommented = yaml.safe_load(re.sub(r"^(\s*)# (\s*[a-z_0-9]+:)", r"\1\2", text, flags=re.M))
    missing = [key for key in keys if not has_key(uncommented, key)]
    assert missing == []
    config, _ = load_config(config_file)  # as written, it is a config
    assert config.model.onnx.resolve() == path and [s.model_dump(exclude_defaults=True) for s in config.inputs] == [
        {"name": "ids", "dtype": "int64", "shape": [1, 4], "range": (0.0, 50.0)}]
    assert "model:\n  onnx: ../m.onnx\n" in text
    assert main(["init", str(path), "-o", str(config_file)]) == 2  # never replaces a file
    assert "exists; init does not replace a file" in capsys.readouterr().err


def test_init_for_a_factory(tmp_path):
    raw, _ = configless_raw(factory="pkg.mod:build", inputs=["x:float32[1,8]"])
    text = init_yaml(raw, tmp_path)
    data = yaml.safe_load(text)
    assert data["model"] == {"factory": "pkg.mod:build", "factory_folder": str(__import__("os").path.relpath(
        raw["model"]["factory_folder"], tmp_path))}
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": [1, 8]}]
    assert "  # onnx: model.onnx  # instead of factory" in text


MODULE = """\
import torch


class Scale(torch.nn.Module):
    def forward(self, x):
        return x * {factor}


def build():
    return Scale()
"""


def test_the_factory_module_is_found_beside_its_config_first(tmp_path):
    for name, factor in (("a", 2.0), ("b", 3.0)):  # two folders, each with its own mymodel.py
        folder = tmp_path / name
        folder.mkdir()
        (folder / "mymodel.py").write_text(MODULE.format(factor=factor))
        (folder / "c.yaml").write_text('model: {factory: "mymodel:build"}\ninputs: [{name: x, shape: [1, 2]}]\n')
    for name, factor in (("a", 2.0), ("b", 3.0)):
        config, _ = load_config(tmp_path / name / "c.yaml")
        assert config.model.factory_folder == tmp_path / name
        import torch

        model = build_torch_model(config.model)
        assert model(torch.ones(1, 2)).tolist() == [[factor, factor]]


def test_a_factory_not_found_says_which_folder_was_searched(tmp_path):
    (tmp_path / "c.yaml").write_text('model: {factory: "nosuchmodel:build"}\ninputs: [{name: x, shape: [1, 2]}]\n')
    config, _ = load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"looked for nosuchmodel.py or nosuchmodel/ in {tmp_path} "
                                                    "(model.factory_folder: the folder of the config that names the "
                                                    "factory, or the working directory for --factory), then on "
                                                    "sys.path")):
        build_torch_model(config.model)


def test_the_cli_and_the_api_share_one_run(tmp_path, monkeypatch, capsys):
    from deploykit import api
    from deploykit.core.errors import StageError

    calls = []

    def fake_run(config, **kwargs):
        calls.append((config, kwargs))
        raise StageError("the converter said no.", stage="convert", hint="try another.")

    monkeypatch.setattr(api, "run", fake_run)
    assert main(["run", str(REPO / "configs" / "mobile.yaml"), "-o", str(tmp_path / "o"), "-v"]) == 3
    [(config, kwargs)] = calls
    assert str(config.output) == str(tmp_path / "o") and config._file == REPO / "configs" / "mobile.yaml"
    assert kwargs["verbose"] is True
    assert "deploykit: error [convert] the converter said no. Try: try another." in capsys.readouterr().err


def test_convert_options_are_config_keys_and_shorthands():
    from deploykit.api import _named, _options

    assert _options({"converter": "onnx2ncnn", "fp16": True, "opset": 11, "passes": ["auto"],
                     "output": "out"}) == {"converter": {"name": "onnx2ncnn", "fp16": True},
                                           "export": {"opset": 11}, "passes": ["auto"], "output": "out"}
    with pytest.raises(ConfigError, match="unknown option 'fp61'"):
        _options({"fp61": True})
    ids = np.zeros((1, 4), np.int64)
    assert list(_named({"ids": ids}, ["ids", "mask"], "f()")) == ["ids"]
    assert list(_named((ids, ids), ["ids", "mask"], "f()")) == ["ids", "mask"]
    with pytest.raises(ConfigError, match="3 example input"):
        _named((ids, ids, ids), ["ids", "mask"], "f()")
    with pytest.raises(ConfigError, match="names 'idz'"):
        _named({"idz": ids}, ["ids"], "f()")


def test_a_model_class_without_a_source_file_is_fingerprinted_by_its_code():
    # deploykit.convert from `python -c`, a notebook or an interpreter: inspect finds no source file
    from deploykit.core.cache import model_fingerprint

    def model(body: str):
        scope = {"__name__": "notebook_cell"}  # a module with no file, as __main__ of a notebook
        exec("import torch\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return " + body, scope)
        return scope["Net"]()

    assert model_fingerprint(model("x * 2")) == model_fingerprint(model("x * 2"))
    assert model_fingerprint(model("x * 2")) != model_fingerprint(model("x * 3"))


def test_convert_takes_the_shape_an_onnx_graph_leaves_open_from_the_example_inputs(tmp_path):
    from deploykit.api import _model_section

    path = save(tmp_path, """
        g (float[1,T] x) => (float[1,T] y) { y = Relu(x) }""", {})
    raw, model, name = _model_section(str(path), np.zeros((1, 40), np.float32))
    assert model is None and name == "m" and raw["inputs"][0]["shape"] == [1, 40]
    with pytest.raises(ConfigError, match="from Python: example_inputs"):
        _model_section(str(path), None)


def test_convert_names_the_inputs_of_a_forward_taking_args():
    import torch

    from deploykit.api import _forward_names

    class Takes(torch.nn.Module):
        def forward(self, ids, *rest):
            return ids

    assert _forward_names(Takes())[:3] == ["ids", "input1", "input2"]
