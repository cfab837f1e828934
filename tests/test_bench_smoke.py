"""Smoke test of scripts/bench.py: its coverage benchmark on one small zoo model, through the
Python API. Checks the result's structure and that deploykit verified the model; no timings."""

import pytest
import importlib.util
import json
import sys

from conftest import REPO

pytestmark = pytest.mark.slow  # end to end: runs the converters and ncnn

ROUTE_KEYS = {"route", "status", "stage", "reason", "max_abs", "seconds", "converted", "ran", "verified",
              "leftover_layers", "files", "wall_seconds"}
STATUSES = {"verified", "mismatch", "no-load", "failed"}


def _load_bench():
    if "bench" in sys.modules:
        return sys.modules["bench"]
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    return module


def test_coverage_on_the_small_encoder(tmp_path):
    bench = _load_bench()
    routes = ("deploykit", "bare_pnnx", "pnnx_torch")
    result = bench.coverage(["encoder_s"], routes=routes, workdir=tmp_path)

    assert set(result) >= {"machine", "judge", "routes", "models", "headline"}
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert result["judge"] == {"atol": 1e-4, "rtol": 1e-3, "against": "torch"}
    assert result["routes"] == list(routes)
    [model] = result["models"]
    assert model["name"] == "encoder_s"
    assert set(model["routes"]) == set(routes)
    for route, outcome in model["routes"].items():
        assert ROUTE_KEYS <= set(outcome), route
        assert outcome["route"] == route and outcome["status"] in STATUSES
        assert outcome["verified"] == (outcome["status"] == "verified")

    deploykit = model["routes"]["deploykit"]
    assert deploykit["verified"], deploykit["reason"]
    assert deploykit["converted"] and deploykit["ran"] and deploykit["max_abs"] < 1e-4
    assert deploykit["leftover_layers"] == []
    assert (tmp_path / "encoder_s" / "deploykit" / "model.ncnn.param").is_file()
    assert result["headline"]["deploykit"] == {"verified": 1, "of": 1}
    for route in ("bare_pnnx", "pnnx_torch"):
        assert result["headline"][route]["of"] == 1

    json.dumps(result)  # what --json writes
    # judged on the blobs the conversion named (pnnx's in0, out0...)
    assert deploykit["blobs"]["inputs"] == [{"onnx_name": "ids", "blob": "in0", "batch_index": 0}]
    table = bench.format_coverage(result)
    assert "encoder_s" in table and "deploykit 1/1" in table


def test_the_onnx2ncnn_route_is_judged_on_the_blobs_onnx2ncnn_names(onnx2ncnn, tmp_path):
    bench = _load_bench()
    result = bench.coverage(["encoder_s"], routes=("onnx2ncnn",), workdir=tmp_path)
    outcome = result["models"][0]["routes"]["onnx2ncnn"]
    assert outcome["verified"] and outcome["max_abs"] < 1e-4, outcome["reason"]
    assert outcome["blobs"]["inputs"] == [{"onnx_name": "ids", "blob": "ids", "batch_index": 0}]
    assert {"embed_layer", "id_mask_lookup"} <= set(outcome["passes_changed"])
    assert result["headline"]["onnx2ncnn"] == {"verified": 1, "of": 1}
    assert "onnx2ncnn 1/1" in bench.format_coverage(result)
