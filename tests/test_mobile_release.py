"""configs/mobile_release.yaml end to end with ncnn's tools: optimize, int8 and three sentence lengths."""

import pytest
import json
import os
import subprocess
import sys

from conftest import REPO


@pytest.mark.slow
def test_mobile_release_config_verifies_every_length_in_int8(tmp_path, ncnn_tools):
    done = subprocess.run([sys.executable, "-m", "deploykit", "run", str(REPO / "configs" / "mobile_release.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "NCNN_TOOLS": str(ncnn_tools)})
    assert done.returncode == 0, done.stderr
    out = tmp_path / "artifacts" / "mobile_release"
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages)[-4:] == ["optimize", "verify", "shapes", "int8"]
    assert report["status"] == "verified" and stages["verify"]["artifact"] == "model.opt.param"
    assert stages["optimize"]["splits_restored"] == ["splitncnn_5"]  # the attention output kept its Split
    assert "calibrate on real data" in done.stderr
    manifest = json.loads((out / "deploykit.json").read_text())
    assert manifest["precision"] == "int8" and manifest["param"]["file"] == "model.int8.param"
    assert {layer["type"] for layer in manifest["int8"]["quantized_layers"]} == {"Embed", "Gemm"}
    assert [(row["inputs"]["ids"], row["converted"]) for row in manifest["shapes"]] == [
        ([1, 16], "once"), ([1, 64], "separately"), ([1, 128], "separately")]
    for row in manifest["shapes"]:
        own = json.loads((out / row.get("manifest", "deploykit.json")).read_text())
        assert own["precision"] == "int8" and (out / row["model"]).is_file()
        assert own["int8"]["cost_vs_fp32"]["held_back"]["hidden"]["worst_sample_cosine"] > 0.999
    assert stages["int8"]["size_ratio"] > 2.5 and stages["int8"]["parity"]["outputs"][0]["cosine"] > 0.999


def test_the_readme_shows_the_release_config_as_it_is():
    import re

    import yaml

    section = (REPO / "README.md").read_text().split("## Release builds", 1)[1]
    shown = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    assert shown == yaml.safe_load((REPO / "configs" / "mobile_release.yaml").read_text())
