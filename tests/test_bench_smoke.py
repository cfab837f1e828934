"""Smoke test of scripts/bench.py: its coverage benchmark on one small zoo model, through the
Python API. Checks the result's structure and that deploykit verified the model; no timings."""

import importlib.util
import json
import sys

from conftest import REPO

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
    routes = ("deploykit", "onnx2ncnn_check", "bare_pnnx", "pnnx_torch")
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
        assert outcome["route"] == route and outcome["status"] in STATUSES | {"clean", "findings"}
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
    # The encoder reaches onnx2ncnn (a stand-in here) with a graph the pre-flight check calls clean.
    check = model["routes"]["onnx2ncnn_check"]
    assert check["status"] == "clean" and check["findings"] == [] and "embedding_gather" in check["passes_changed"]
    assert result["headline"]["onnx2ncnn_check"] == {"clean": 1, "of": 1}
    table = bench.format_coverage(result)
    assert "encoder_s" in table and "deploykit 1/1" in table and "onnx2ncnn_check: 1/1 models" in table
