from pathlib import Path

import pytest

from deploykit.core.config import deep_merge, load_config
from deploykit.core.errors import ConfigError

MINIMAL = """
model: {factory: "pkg.mod:build"}
inputs: [{name: x, shape: [1, 3], dtype: float32}]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_defaults_fill_every_section(tmp_path):
    config, path = load_config(write(tmp_path, "m.yaml", MINIMAL))
    assert path.name == "m.yaml"
    assert config.export.opset == 13 and config.export.exporter == "torchscript"
    assert config.converter.name == "pnnx" and config.converter.fp16 is False
    assert config.passes is None  # auto
    assert config.output == Path("artifacts/m")


def test_base_is_deep_merged_and_the_child_wins(tmp_path):
    write(tmp_path, "base.yaml", MINIMAL + "export: {opset: 11, output_names: [y]}\nparity: {atol: 0.5}\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nexport: {opset: 17}\n")
    config, _ = load_config(child)
    assert config.export.opset == 17
    assert config.export.output_names == ["y"]
    assert config.parity.atol == 0.5


def test_set_overrides_parse_values_as_yaml_and_index_lists(tmp_path):
    config, _ = load_config(write(tmp_path, "m.yaml", MINIMAL),
                            ["export.opset=17", "inputs.0.shape=[2, 5]", "converter.args=[optlevel=1]"])
    assert config.export.opset == 17
    assert config.inputs[0].shape == [2, 5]
    assert config.converter.args == ["optlevel=1"]


def test_relative_input_files_resolve_against_the_yaml_that_names_them(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "base.yaml", "model: {onnx: m.onnx}\ninputs: [{name: x, file: x.npy}]\n")
    config, _ = load_config(write(tmp_path, "c.yaml", "_base_: sub/base.yaml\n"))
    assert config.model.onnx == tmp_path / "sub" / "m.onnx"
    assert config.inputs[0].file == tmp_path / "sub" / "x.npy"


def test_passes_accept_names_and_entries(tmp_path):
    config, _ = load_config(write(tmp_path, "m.yaml", MINIMAL + "passes: [a, {name: b, enabled: false, args: {k: 1}}]\n"))
    assert [(p.name, p.enabled, p.args) for p in config.passes] == [("a", True, {}), ("b", False, {"k": 1})]


@pytest.mark.parametrize("extra, expected", [
    ("export: {opset: x}", "export.opset: Input should be a valid integer"),
    ("export: {opset: 13, colour: red}", "export.colour: unknown key"),
    ("converter: {name: tflite}", "converter.name: Input should be 'pnnx' or 'onnx2ncnn'"),
    ("passes: 3", "passes: expected `auto` or a list"),
    ("parity: {metric: mean}", "parity.metric"),
])
def test_bad_values_name_the_file_and_key_path(tmp_path, extra, expected):
    path = write(tmp_path, "bad.yaml", MINIMAL + extra + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize("text, expected", [
    ("inputs: [{name: x, shape: [1]}]", "model: required key is missing"),
    ("model: {factory: nocolon}\ninputs: [{name: x, shape: [1]}]", "must look like"),
    ("model: {factory: 'a:b', onnx: m.onnx}\ninputs: [{name: x, shape: [1]}]", "exactly one of"),
    (MINIMAL.replace("[1, 3]", "[1, 0]"), "positive sizes"),
    ("model: {factory: 'a:b'}\ninputs: [{name: x, shape: [1]}, {name: x, shape: [2]}]",
     "input names must be unique; repeated: x"),
])
def test_inconsistent_sections_are_explained(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, "bad.yaml", text))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3, column 1: .* \(while parsing a flow sequence that starts at line 2\)"):
        load_config(write(tmp_path, "bad.yaml", "model:\n  a: [1, 2\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


def test_base_cycles_and_bad_overrides_are_errors(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(tmp_path / "a.yaml")
    minimal = write(tmp_path, "m.yaml", MINIMAL)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(minimal, ["export.opset"])
    with pytest.raises(ConfigError, match="is a list of 1"):
        load_config(minimal, ["inputs.4.shape=[1]"])
    with pytest.raises(ConfigError, match=r"index after a dot, not in brackets") as caught:
        load_config(minimal, ["inputs[0].shape=[1, 4]"])
    assert caught.value.hint == "write --set inputs.0.shape=[1, 4]"


def test_a_folder_given_as_the_config_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


def test_deep_merge_replaces_lists_and_keeps_the_base_intact():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
