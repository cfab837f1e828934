"""converter.optimize: ncnnoptimize after the converter, the optimized model verified and shipped."""

import json
import sys
from pathlib import Path

import pytest

from conftest import run_yaml
from deploykit.core.errors import EXIT_CONFIG, EXIT_PARITY, StageError
from deploykit.ncnn.runtime import read_param_layers
from deploykit.stages.optimize import restore_lost_blobs

CNN = """model: {factory: "models_for_tests:build_conv_bn_cnn"}
inputs: [{name: x, shape: [1, 3, 16, 16]}]
export: {output_names: [logits]}
converter: {optimize: true}
"""


def stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)


def write_param(path: Path, layers: list[str]) -> Path:
    blobs = {b for line in layers for b in line.split()[4:4 + int(line.split()[2]) + int(line.split()[3])]}
    path.write_text("\n".join(["7767517", f"{len(layers)} {len(blobs)}", *layers]) + "\n")
    return path


def test_a_split_removed_with_a_model_output_is_put_back(tmp_path):
    before = write_param(tmp_path / "before.param", [
        "Input in0 0 1 in0", "Softmax sm 1 1 in0 3", "Split sp 1 2 3 out1 4", "ReLU relu 1 1 4 out0"])
    after = write_param(tmp_path / "after.param", ["Input in0 0 1 in0", "Softmax sm 1 1 in0 4", "ReLU relu 1 1 4 out0"])
    assert restore_lost_blobs(before, after, ["in0", "out0", "out1"]) == ["sp"]
    layers = read_param_layers(after)
    assert [(kind, bottoms, tops) for kind, _, bottoms, tops in layers] == [
        ("Input", [], ["in0"]), ("Softmax", ["in0"], ["3"]), ("Split", ["3"], ["4", "out1"]), ("ReLU", ["4"], ["out0"])]
    assert after.read_text().split("\n")[1] == "4 5"  # layer and blob counts follow


def test_nothing_lost_leaves_the_file_alone_and_a_blob_lost_otherwise_is_an_optimize_error(tmp_path):
    before = write_param(tmp_path / "before.param", ["Input in0 0 1 in0", "ReLU relu 1 1 in0 out0"])
    after = write_param(tmp_path / "after.param", ["Input in0 0 1 in0", "ReLU relu 1 1 in0 out0"])
    text = after.read_text()
    assert restore_lost_blobs(before, after, ["in0", "out0"]) == [] and after.read_text() == text
    with pytest.raises(StageError, match="removed blob 'out9'") as caught:
        restore_lost_blobs(before, after, ["out9"])
    assert caught.value.stage == "optimize" and "converter.optimize: false" in caught.value.hint


@pytest.mark.slow
def test_optimized_model_is_verified_and_shipped_with_layers_before_and_after(tmp_path, capsys, ncnn_tools):
    code, err, report = run_yaml(capsys, tmp_path, CNN)
    assert code == 0, err
    optimize = stage(report, "optimize")
    assert optimize["status"] == "ok" and optimize["storage"] == "fp32"
    before, after = optimize["layers_before"], optimize["layers"]
    # pnnx folds the BatchNorms and ReLUs into the convolutions itself; ncnnoptimize drops the identity pooling
    assert before["Convolution"] == after["Convolution"] == 2 and before["Pooling"] == after["Pooling"] + 1 == 2
    assert sum(after.values()) == sum(before.values()) - 1
    assert any(action.startswith("eliminate_pooling1x1 ") for action in optimize["actions"])
    assert f"{sum(before.values())} -> {sum(after.values())} layers" in err
    assert [s["name"] for s in report["stages"]][-2:] == ["optimize", "verify"]
    assert report["ncnn"]["param"] == "model.opt.param" and report["ncnn"]["parity"]["max_abs"] < 1e-4
    manifest = json.loads((tmp_path / "out" / "deploykit.json").read_text())
    assert manifest["param"]["file"] == "model.opt.param" and manifest["bin"]["file"] == "model.opt.bin"
    assert manifest["optimized"] is True
    fp32_bytes = optimize["files"]["model.opt.bin"]["bytes"]
    # fp16 storage: the optimized weights take about half the bytes, verified under the fp16 tolerances
    code, err, report = run_yaml(capsys, tmp_path, CNN, "converter.fp16=true")
    assert code == 0, err
    assert stage(report, "optimize")["storage"] == "fp16"
    assert stage(report, "optimize")["files"]["model.opt.bin"]["bytes"] < 0.6 * fp32_bytes
    assert report["ncnn"]["parity"]["outputs"][0]["atol"] == report["config"]["parity"]["fp16"]["atol"]


BROKEN_OPTIMIZER = """#!{python}
import sys
import numpy as np
param, weights, out_param, out_bin = sys.argv[1:5]
open(out_param, "w").write(open(param).read())
data = np.fromfile(weights, dtype=np.uint8).copy()
values = data[-64:].view(np.float32)
values *= 3.0  # the last weights (the Linear's), scaled: the model loads and runs, with other numbers
data.tofile(out_bin)
print("fuse_convolution_activation conv relu")
"""


@pytest.mark.slow
def test_a_model_ncnnoptimize_makes_wrong_fails_verify_naming_the_stage(tmp_path, capsys):
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "ncnnoptimize"
    fake.write_text(BROKEN_OPTIMIZER.format(python=sys.executable))
    fake.chmod(0o755)
    code, err, report = run_yaml(capsys, tmp_path, CNN, f"converter.tools={tools}", "parity.bisect=false")
    assert code == EXIT_PARITY
    assert "[verify]" in err and "ncnnoptimize made the model wrong" in err and "converter.optimize: false" in err
    culprit = stage(report, "verify")["culprit"]
    assert culprit["stage"] == "optimize" and culprit["unoptimized_passed"] is True
    assert culprit["unoptimized_param"] == "model.ncnn.param"
    assert not (tmp_path / "out" / "deploykit.json").exists()


@pytest.mark.slow
def test_a_missing_ncnnoptimize_is_a_config_error_naming_where_it_was_looked_for(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NCNN_TOOLS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    code, err, report = run_yaml(capsys, tmp_path, CNN.replace("{optimize: true}", "{optimize: true, timeout: 60}"))
    assert code == EXIT_CONFIG
    assert "[optimize] ncnn's ncnnoptimize was not found" in err
    assert "converter.tools" in err and "NCNN_TOOLS" in err and "bin/" in err
    assert report["error"]["stage"] == "optimize"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err, _ = run_yaml(capsys, tmp_path, CNN, f"converter.tools={empty}")
    assert code == EXIT_CONFIG and f"named by converter.tools does not exist: {empty / 'ncnnoptimize'}" in err

