"""Several input shapes: one conversion verified at every listed shape, or a shape converted on its own."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_yaml
from deploykit.core.config import Config, load_config
from deploykit.core.errors import EXIT_CONFIG, EXIT_STAGE, ConfigError
from deploykit.stages.shapes import folder_name, shape_sets

MIXER = """model: {factory: "models_for_tests:build_token_mixer"}
inputs: [{name: x, shape: [1, 16, 8], shapes: {axis: 1, from: 16, to: 64, step: 24}}]
"""


def config(text: str, tmp_path: Path) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text("model: {factory: 'm:f'}\n" + text)
    return load_config(path)[0]


def test_shapes_as_a_list_or_a_range_give_the_sets_verified_the_converted_one_first(tmp_path):
    listed = config("inputs: [{name: ids, dtype: int64, shape: [1, 64], shapes: [[1, 16], [1, 64], [1, 128]]},"
                    " {name: w, shape: [1, 4]}]", tmp_path)
    inputs = {"ids": np.zeros((1, 64), np.int64), "w": np.zeros((1, 4), np.float32)}
    assert shape_sets(listed, inputs) == [{"ids": [1, 64], "w": [1, 4]}, {"ids": [1, 16], "w": [1, 4]},
                                          {"ids": [1, 128], "w": [1, 4]}]
    ranged = config("inputs: [{name: x, shape: [1, 3, 32, 32], shapes: {axis: 2, from: 32, to: 64, step: 20}}]",
                    tmp_path)
    sets = shape_sets(ranged, {"x": np.zeros((1, 3, 32, 32), np.float32)})
    assert [s["x"][2] for s in sets] == [32, 52, 64]  # the range ends at `to` even off the step
    assert folder_name(sets[1]) == "shape_1x3x52x32"
    only = config("inputs: [{name: x, shapes: [[1, 8], [1, 4]]}]", tmp_path)
    assert only.inputs[0].shape == [1, 8]  # converted at the first listed shape


@pytest.mark.parametrize("inputs, expected", [
    ("[{name: x, shape: [1, 8], shapes: [[1, 4], [1, 16]]}]", "`shape` [1, 8] is not among `shapes`"),
    ("[{name: x, shape: [1, 8], shapes: [[1, 8], [1, 4, 2]]}]", "have different ranks"),
    ("[{name: x, shape: [1, 8], shapes: {axis: 3, from: 8, to: 16}}]", "shapes.axis 3 is not an axis of shape"),
    ("[{name: x, shape: [1, 8], shapes: {axis: 1, from: 9, to: 16}}]", "is not in the range [9, 10, 11"),
    ("[{name: x, shape: [1, 8], shapes: {axis: 1, from: 16, to: 8}}]", "must not be below `from`"),
    ("[{name: x, shape: [1, 8], shapes: [[1, 8], [1, 4]]}, {name: y, shape: [1, 2], shapes: [[1, 2]]}]",
     "must list as many shapes each"),
])
def test_shape_lists_that_cannot_be_right_are_config_errors_naming_the_key(tmp_path, inputs, expected):
    with pytest.raises(ConfigError) as caught:
        config(f"inputs: {inputs}\n", tmp_path)
    assert expected in caught.value.message and "inputs" in caught.value.message


@pytest.mark.slow
def test_one_pnnx_conversion_with_a_second_shape_is_verified_at_every_listed_shape(tmp_path, capsys):
    code, err, report = run_yaml(capsys, tmp_path, MIXER, "export.dynamic_axes={x: {1: length}}")
    assert code == 0, err
    log = (tmp_path / "out" / "convert.log").read_text()
    assert "inputshape=[1,16,8]f32" in log and "inputshape2=[1,64,8]f32" in log
    shapes = next(s for s in report["stages"] if s["name"] == "shapes")
    assert [entry["inputs"]["x"] for entry in shapes["shapes"]] == [[1, 16, 8], [1, 40, 8], [1, 64, 8]]
    assert {entry["converted"] for entry in shapes["shapes"]} == {"once"}
    assert all(entry["max_abs"] < 1e-4 for entry in shapes["shapes"]) and shapes["needs_own_conversion"] == []
    manifest = json.loads((tmp_path / "out" / "deploykit.json").read_text())
    assert [row["inputs"] for row in manifest["shapes"]] == [{"x": [1, 16, 8]}, {"x": [1, 40, 8]}, {"x": [1, 64, 8]}]
    assert {row["model"] for row in manifest["shapes"]} == {"model.ncnn.param"}
    assert "3 shape(s) verified with the one model" in err


@pytest.mark.slow
def test_a_shape_the_one_model_cannot_take_is_said_so_and_converted_on_its_own_if_allowed(tmp_path, capsys):
    code, err, report = run_yaml(capsys, tmp_path, MIXER)
    assert code == EXIT_STAGE
    assert "[shapes] the model converted at x [1, 16, 8] does not serve x [1, 40, 8] (and 1 more" in err
    assert "needs its own conversion" in err and "converter.separate_shapes: true" in err
    assert "export.dynamic_axes" in err and not (tmp_path / "out" / "deploykit.json").exists()
    code, err, report = run_yaml(capsys, tmp_path, MIXER, "converter.separate_shapes=true")
    assert code == 0, err
    rows = next(s for s in report["stages"] if s["name"] == "shapes")["shapes"]
    assert [(r["inputs"]["x"][1], r["converted"], r["model"]) for r in rows] == [
        (16, "once", "model.ncnn.param"), (40, "separately", "shape_1x40x8/model.ncnn.param"),
        (64, "separately", "shape_1x64x8/model.ncnn.param")]
    assert "shape [1, 16, 8] differs from the reference [1, 40, 8]" in rows[1]["reason"]
    own = json.loads((tmp_path / "out" / "shape_1x40x8" / "report.json").read_text())
    assert own["status"] == "verified" and own["inputs"][0]["shape"] == [1, 40, 8]
    assert "shape_1x64x8/deploykit.json" in report["artifacts"]


@pytest.mark.slow
def test_a_shape_the_model_cannot_take_is_a_config_error(tmp_path, capsys):
    encoder = """model: {factory: "deploykit.models.encoder:build_encoder", kwargs: {max_len: 32}}
inputs: [{name: ids, dtype: int64, range: [1, 1000], shapes: [[1, 16], [1, 48]]}]
export: {output_names: [hidden, attention]}
"""
    code, err, report = run_yaml(capsys, tmp_path, encoder)
    assert code == EXIT_CONFIG
    assert "[shapes] the model cannot take ids [1, 48] (inputs[].shapes)" in err and "forward()" in err
