"""int8: calibration inputs, the lists ncnn2table reads, ncnn2table + ncnn2int8, and the int8 verdict."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_yaml
from deploykit.core.config import CalibrationSection, InputSpec
from deploykit.core.errors import EXIT_CONFIG, EXIT_PARITY, ConfigError
from deploykit.ncnn.calibration import load_calibration, ncnn_cells, write_ncnn2table_lists
from deploykit.ncnn.converters.base import NO_BATCH_AXIS, Blob
from deploykit.stages.quantize import quantized_layers

CNN = """model: {factory: "models_for_tests:build_conv_bn_cnn"}
inputs: [{name: x, shape: [1, 3, 16, 16]}]
export: {output_names: [logits]}
converter: {optimize: true}
"""
SPEC = [InputSpec(name="x", shape=[1, 3, 16, 16])]
X = {"x": np.zeros((1, 3, 16, 16), np.float32)}


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 16, 16)).astype(np.float32)


def run(capsys, folder: Path, extra: str, *sets: str) -> tuple[int, str, dict]:
    return run_yaml(capsys, folder, CNN + extra, *sets)


def int8_stage(report: dict) -> dict:
    return next(s for s in report["stages"] if s["name"] == "int8")


# ---------------------------------------------------------------------------------------------
# Calibration inputs (no tools needed)


def test_a_folder_of_single_samples_and_stacks_with_a_share_held_back(tmp_path):
    np.save(tmp_path / "a.npy", images(1))
    np.save(tmp_path / "b.npy", images(7, seed=1))  # a stack of 7 along the batch axis
    (tmp_path / "notes.txt").write_text("not an input")
    found = load_calibration(CalibrationSection(folder=tmp_path, held_back=0.25), SPEC, X, seed=0)
    assert (len(found.samples), len(found.held_back)) == (6, 2) and found.source == "folder"
    assert all(s["x"].shape == (1, 3, 16, 16) and s["x"].dtype == np.float32 for s in found.samples)
    np.testing.assert_array_equal(found.samples[0]["x"], images(1))
    np.testing.assert_array_equal(found.held_back[-1]["x"][0], images(7, seed=1)[6])


def test_npz_files_give_one_array_per_input_and_generated_inputs_follow_the_config(tmp_path):
    specs = [InputSpec(name="ids", dtype="int64", shape=[1, 5], range=[1, 50]), InputSpec(name="w", shape=[1, 5])]
    like = {"ids": np.zeros((1, 5), np.int64), "w": np.zeros((1, 5), np.float32)}
    np.savez(tmp_path / "s.npz", ids=np.arange(10).reshape(2, 5), w=np.ones((2, 5), np.float32))
    found = load_calibration(CalibrationSection(files=[tmp_path / "s.npz"], held_back=0), specs, like, seed=0)
    assert [s["ids"].tolist() for s in found.samples] == [[[0, 1, 2, 3, 4]], [[5, 6, 7, 8, 9]]]
    generated = load_calibration(CalibrationSection(generate=4), specs, like, seed=3)
    assert (len(generated.samples), len(generated.held_back), generated.source) == (4, 1, "generate")
    ids = np.concatenate([s["ids"] for s in generated.samples + generated.held_back])
    assert ids.dtype == np.int64 and ids.min() >= 1 and ids.max() < 50 and len({tuple(r) for r in ids}) == 5
    again = load_calibration(CalibrationSection(generate=4), specs, like, seed=3)
    np.testing.assert_array_equal(again.samples[2]["w"], generated.samples[2]["w"])


@pytest.mark.parametrize("write, expected", [
    (lambda d: None, "holds no .npy or .npz file, so there is nothing to calibrate on"),
    (lambda d: np.save(d / "a.npy", np.zeros((1, 3, 8, 8), np.float32)),
     "input 'x' has shape [1, 3, 8, 8], but the model takes [1, 3, 16, 16] (or a stack of samples, ['N', 3, 16, 16])"),
    (lambda d: np.save(d / "a.npy", np.zeros((1, 3, 16, 16), np.complex64)), "holds complex64, but the model takes"),
    (lambda d: np.savez(d / "a.npz", y=np.zeros((1, 3, 16, 16), np.float32)), "has no array for input(s) x"),
    (lambda d: (d / "a.npy").write_text("text"), "is not a .npy or .npz file"),
])
def test_calibration_files_that_cannot_serve_are_config_errors(tmp_path, write, expected):
    write(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_calibration(CalibrationSection(folder=tmp_path), SPEC, X, seed=0)
    assert caught.value.stage == "int8" and expected in caught.value.message and caught.value.hint


def test_the_lists_ncnn2table_reads_drop_the_batch_axis_reverse_the_shape_and_keep_ids_as_int32_bits(tmp_path):
    samples = [{"ids": np.array([[3, 1, 4, 1, 5, 9]], np.int64), "x": np.full((1, 2, 6), 0.5, np.float32)}]
    blobs = [Blob("ids", "in0", 0), Blob("x", "in1", NO_BATCH_AXIS)]
    lists, shapes = write_ncnn2table_lists(samples, blobs, tmp_path)
    assert lists == ["list0.txt", "list1.txt"] and shapes == ["[6]", "[6,2,1]"]
    assert (tmp_path / "list0.txt").read_text() == "in0_00000.npy\n"
    ids = np.load(tmp_path / "in0_00000.npy")
    assert ids.dtype == np.float32 and ids.shape == (6,) and ids.view(np.int32).tolist() == [3, 1, 4, 1, 5, 9]
    x = np.load(tmp_path / "in1_00000.npy")
    assert x.dtype == np.float32 and x.shape == (1, 2, 6) and (x == 0.5).all()
    assert ncnn_cells(np.ones((1, 2), np.float32), Blob("z", "in2", 0)).shape == (2,)
    with pytest.raises(ConfigError, match="ncnn2table reads 1 to 4"):
        write_ncnn2table_lists([{"y": np.zeros((1, 2, 2, 2, 2, 2), np.float32)}], [Blob("y", "in2", 0)], tmp_path)


def test_quantized_layers_are_the_ones_ncnn2int8_changed(tmp_path):
    fp32, int8 = tmp_path / "a.param", tmp_path / "b.param"
    fp32.write_text("7767517\n3 3\nInput in0 0 1 in0\nConvolution c 1 1 in0 1 0=8 6=216\nReLU r 1 1 1 out0\n")
    int8.write_text("7767517\n3 3\nInput in0 0 1 in0\nConvolution c 1 1 in0 1 0=8 6=216 8=2\nReLU r 1 1 1 out0\n")
    assert quantized_layers(fp32, int8) == [{"name": "c", "type": "Convolution"}]


# ---------------------------------------------------------------------------------------------
# With ncnn's tools


@pytest.mark.slow
def test_int8_is_calibrated_verified_on_held_back_inputs_and_shipped(tmp_path, capsys, ncnn_tools):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for index in range(4):
        np.save(calibration / f"batch{index}.npy", images(3, seed=index))
    code, err, report = run(capsys, tmp_path, f"quantize: {{int8: true, calibration: {{folder: {calibration}}}}}\n")
    assert code == 0, err
    stage = int8_stage(report)
    assert stage["status"] == "ok" and stage["method"] == "kl"
    assert stage["calibration"] == {"source": "folder", "samples": 9, "held_back": 3,
                                    "files": [str(calibration / f"batch{i}.npy") for i in range(4)]}
    assert sorted(layer["type"] for layer in stage["quantized_layers"]) == ["Convolution", "Convolution",
                                                                          "InnerProduct"]
    parity = stage["parity"]["outputs"][0]
    assert parity["metric"] == "cosine" and parity["min_cosine"] == 0.99 and 0.99 <= parity["cosine"] <= 1
    cost = stage["int8_cost"]
    assert cost["held_back"]["logits"]["samples"] == 4 and cost["calibration"]["logits"]["samples"] == 9
    assert 0.99 <= cost["held_back"]["logits"]["worst_sample_cosine"] < 1  # int8 costs something, not much
    assert stage["size_ratio"] > 2.5
    out = tmp_path / "out"
    table = (out / "model.int8.table").read_text()
    assert all(f"{layer['name']}_param_0 " in table for layer in stage["quantized_layers"])
    manifest = json.loads((out / "deploykit.json").read_text())
    assert manifest["precision"] == "int8" and manifest["param"]["file"] == "model.int8.param"
    assert manifest["int8"]["table"] == "model.int8.table" and manifest["int8"]["fp32_param"] == "model.opt.param"
    assert manifest["int8"]["quantized_layers"] == stage["quantized_layers"]
    assert "int8" in err and "3 layer(s) quantized" in err
    # a verdict int8 cannot meet fails the run at the int8 stage; its folder, beside the verified
    # run's (which stays as it was), ships no manifest
    shipped = (out / "deploykit.json").read_bytes()
    code, err, report = run(capsys, tmp_path, f"quantize: {{int8: true, calibration: {{folder: {calibration}}}}}\n",
                            "parity.int8.min_cosine=0.9999999")
    assert code == EXIT_PARITY and "[int8] the int8 model differs from the export beyond parity.int8" in err
    assert "quantize.method: aciq" in err and (out / "deploykit.json").read_bytes() == shipped
    failed = tmp_path / "out.failed"
    assert report["status"] == "failed" and json.loads((failed / "report.json").read_text())["status"] == "failed"
    assert not (failed / "deploykit.json").exists() and (out / "model.int8.param").is_file()


@pytest.mark.slow
def test_generated_calibration_warns_that_real_data_is_needed(tmp_path, capsys, ncnn_tools):
    code, err, report = run(capsys, tmp_path, "quantize: {int8: true, method: aciq, calibration: {generate: 4}}\n")
    assert code == 0, err
    assert "calibrate on real data" in err and int8_stage(report)["calibration"]["source"] == "generate"
    assert int8_stage(report)["method"] == "aciq"


@pytest.mark.slow
def test_int8_without_its_tools_names_what_is_missing(tmp_path, capsys, monkeypatch, ncnn_tools):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "ncnnoptimize").symlink_to(ncnn_tools / "ncnnoptimize")
    code, err, _ = run(capsys, tmp_path, "quantize: {int8: true, calibration: {generate: 2}}\n",
                       f"converter.tools={tools}")
    assert code == EXIT_CONFIG and "[int8]" in err and "the ncnn2table binary named by converter.tools does not exist" in err


@pytest.mark.slow
def test_an_empty_calibration_folder_stops_the_run_at_int8(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err, report = run(capsys, tmp_path, f"quantize: {{int8: true, calibration: {{folder: {empty}}}}}\n",
                            "converter.optimize=false")
    assert code == EXIT_CONFIG and "[int8] quantize.calibration.folder:" in err and "nothing to calibrate on" in err
    assert report["error"]["stage"] == "int8"


def test_images_are_resized_and_normalised_per_channel_or_say_what_reading_them_needs(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    section = CalibrationSection(images={"folder": folder, "mean": [1, 2, 3], "norm": [0.5, 0.5, 0.5]}, held_back=0)
    try:
        from PIL import Image
    except ImportError:  # the error says what to install; no image is read without Pillow
        (folder / "a.png").write_bytes(b"\x89PNG")
        with pytest.raises(ConfigError, match="needs Pillow") as caught:
            load_calibration(section, SPEC, X, seed=0)
        assert "pip install" in caught.value.hint
        return
    Image.new("RGB", (32, 8), (10, 20, 30)).save(folder / "a.png")
    found = load_calibration(section, SPEC, X, seed=0)
    x = found.samples[0]["x"]
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32
    assert [float(x[0, c, 0, 0]) for c in range(3)] == [4.5, 9.0, 13.5]  # (pixel - mean) * norm, RGB order
