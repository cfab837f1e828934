"""deploykit.convert on the shipped encoder and on an ONNX file exported at opset 11, the same file
run without a config, and `deploykit verify` on an fp16 run (end to end: pnnx and ncnn)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch

import deploykit
from deploykit.cli import main
from deploykit.core.errors import StageError
from deploykit.models.encoder import build_encoder

IDS = torch.tensor([[101, 7, 352, 18, 999, 64, 5, 230, 871, 42, 13, 102, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def opset11(tmp_path_factory):
    """The shipped encoder as a user's ONNX file, exported at opset 11."""
    path = tmp_path_factory.mktemp("user") / "encoder11.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(build_encoder(), (IDS,), str(path), input_names=["ids"],
                          output_names=["hidden", "attention"], opset_version=11, dynamo=False)
    return path


@pytest.mark.slow
def test_convert_a_module_with_example_inputs(tmp_path):
    result = deploykit.convert(build_encoder(), IDS, output=tmp_path / "out", quiet=True,
                               export={"output_names": ["hidden", "attention"]})
    assert isinstance(result, deploykit.Result) and result.verified
    assert result.param == tmp_path / "out" / "model.ncnn.param" and result.bin.is_file()
    manifest = json.loads(result.manifest.read_text())
    assert [i["onnx_name"] for i in manifest["inputs"]] == ["ids"]  # the name forward() gives it
    assert result.report["inputs"] == [{"name": "ids", "shape": [1, 16], "dtype": "int64", "source": "data",
                                        "range": None, "file": None}]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "inputs.npz")["ids"], IDS.numpy())
    assert result.parity["max_abs"] < 1e-4 and [o["name"] for o in result.parity["outputs"]] == ["hidden", "attention"]
    assert result.report["config"]["model"]["factory"] == "deploykit.models.encoder:Encoder"


@pytest.mark.slow
def test_a_failed_convert_raises_the_stage_error_the_command_prints(tmp_path):
    with pytest.raises(StageError) as raised:
        deploykit.convert(build_encoder(), {"ids": IDS}, output=tmp_path / "out", passes=[], quiet=True)
    error = raised.value
    assert error.stage == "convert" and error.exit_code == 3
    assert "the ncnn runtime does not have" in error.message
    assert json.loads(error.report_file.read_text())["error"]["message"] == error.message


@pytest.mark.slow
def test_an_opset_11_onnx_file_runs_without_a_config(opset11, tmp_path, capsys):
    assert main(["run", str(opset11), "-o", str(tmp_path / "out"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("verified on ncnn: max abs error") and err == ""
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config_file"] is None and report["stages"][0]["graph"]["opset"] == {"ai.onnx": 11}
    # the ids' range is the embedding table's rows: generated ids never index past the vocabulary
    assert report["inputs"] == [{"name": "ids", "shape": [1, 16], "dtype": "int64", "source": "random",
                                 "range": [0.0, 1000.0], "file": None}]
    ids = np.load(tmp_path / "out" / "inputs.npz")["ids"]
    assert ids.min() >= 0 and ids.max() < 1000 and ids.max() >= 10  # not the default [0, 10)


@pytest.mark.slow
def test_convert_an_onnx_file_in_fp16_and_verify_it_again(opset11, tmp_path, capsys, monkeypatch):
    result = deploykit.convert(str(opset11), output=str(tmp_path / "fp16"), fp16=True, quiet=True)
    assert result.report["config"]["converter"]["fp16"] is True
    worst = result.parity["max_abs"]
    assert 1e-4 < worst < 1e-2  # beyond the fp32 tolerance, within parity.fp16
    verified = json.loads(result.manifest.read_text())["verified"]
    assert (verified["atol"], verified["rtol"], verified["min_cosine"]) == (1e-2, 1e-2, 0.999)
    assert verified["ncnn_options"]["use_fp16_storage"] is True
    # deploykit verify judges the fp16 run as the run did, with or without --fp16
    for extra in ([], ["--fp16"]):
        assert main(["verify", str(result.output), *extra]) == 0, capsys.readouterr()
        assert "DIFFER" not in capsys.readouterr().out
    # --bin relative to the artifact folder, as --param, from another working directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["verify", str(result.output), "--param", "model.ncnn.param", "--bin", "model.ncnn.bin"]) == 0
    capsys.readouterr()
    assert main(["verify", str(result.output), "--bin", "nothing.bin"]) == 2
    assert "neither" in capsys.readouterr().err


def test_the_onnx_graph_must_hold_what_convert_is_given(opset11, tmp_path):
    with pytest.raises(deploykit.DeployError, match="takes 1"):
        deploykit.convert(str(opset11), (IDS, IDS), output=str(tmp_path / "out"))
    assert onnx.load(str(opset11)).opset_import[0].version == 11  # the user's file is only read
