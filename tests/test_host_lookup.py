"""The shipped encoder with `embedding_gather` `on_host: true` (configs/mobile_on_host.yaml, pnnx): the
embedding and pad-mask lookups leave the ncnn model, the rows the app computes on the host feed
every check, and the artifact folder carries the tables and the recipe (report.json,
deploykit.json), which `deploykit verify` and a re-run from the cache use again."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import pytest
import torch
from rich.console import Console

from deploykit.core.config import load_config
from deploykit.models.encoder import PAD_ID, build_encoder
from deploykit.ncnn.runtime import read_param_layers
from deploykit.pipeline import run
from deploykit.stages.verify import reverify
from passkit import model_from_text

REPO = Path(__file__).resolve().parent.parent
EMBEDDING, MASK = "/embedding/Gather_output_0", "/Equal/id_mask_lookup/hit"


def run_encoder(output: Path, *overrides: str, console: Optional[Console] = None) -> dict:
    config, path = load_config(REPO / "configs" / "mobile_on_host.yaml", [*overrides, f"output={output}"])
    return run(config, path, console)[1]


def encoder() -> torch.nn.Module:
    config, _ = load_config(REPO / "configs" / "mobile.yaml")
    return build_encoder(**config.model.kwargs)


def stage(report: dict, name: str) -> dict:
    return next(s for s in report["stages"] if s["name"] == name)


@pytest.fixture(scope="module")
def host_run(tmp_path_factory) -> tuple[dict, Path]:
    output = tmp_path_factory.mktemp("on_host") / "out"
    return run_encoder(output), output


@pytest.mark.slow
def test_the_encoder_verifies_on_ncnn_with_its_lookups_on_the_host(host_run):
    report, _ = host_run
    assert report["status"] == "verified"
    moved = stage(report, "pass:embedding_gather")
    assert moved["changed"] == 2 and moved["refusals"] == []
    assert moved["parity"]["passed"] and moved["parity"]["max_abs"] == 0.0  # the same rows, looked up outside
    parity = report["ncnn"]["parity"]
    assert parity["passed"] and [out["name"] for out in parity["outputs"]] == ["hidden", "attention"]
    assert parity["max_abs"] < 1e-5
    assert report["ncnn"]["input_dtypes"] == {MASK: "float32", EMBEDDING: "float32"}


@pytest.mark.slow
def test_the_saved_tables_are_the_models_embedding_and_the_pad_mask(host_run):
    _, output = host_run
    np.testing.assert_array_equal(np.load(output / "host_table_1.npy"), encoder().embedding.weight.detach().numpy())
    mask = np.load(output / "host_table_0.npy")
    assert mask.shape == (1000, 1) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask[:, 0], np.arange(1000) == PAD_ID)


@pytest.mark.slow
def test_the_manifest_tells_the_app_how_to_fill_each_new_input(host_run):
    _, output = host_run
    manifest = json.loads((output / "deploykit.json").read_text())
    lookups = [{k: v for k, v in entry.items() if k != "note"} for entry in manifest["host_lookups"]]
    recipe = {"dtype": "float32", "ids": "ids", "rows": "table[ids].reshape(onnx_shape)"}
    assert lookups == [
        {"blob": "in0", "input": MASK, "onnx_shape": [1, 16, 1], "table": "host_table_0.npy",
         "table_shape": [1000, 1], **recipe},
        {"blob": "in1", "input": EMBEDDING, "onnx_shape": [1, 16, 64], "table": "host_table_1.npy",
         "table_shape": [1000, 64], **recipe}]
    assert [(i["blob"], i["onnx_name"], i["dtype"], i["mat_shape"]) for i in manifest["inputs"]] == [
        ("in0", MASK, "float32", [16, 1]), ("in1", EMBEDDING, "float32", [16, 64])]
    # The recipe, done as the app does it, gives what the checks were fed.
    ids = np.load(output / "inputs.npz")["ids"]
    table = np.load(output / manifest["host_lookups"][1]["table"])
    expected = encoder().embedding(torch.from_numpy(ids)).detach().numpy()
    np.testing.assert_array_equal(table[ids].reshape(manifest["host_lookups"][1]["onnx_shape"]), expected)


@pytest.mark.slow
def test_the_ncnn_model_has_no_embed_layer_and_takes_the_rows(host_run):
    _, output = host_run
    layers = read_param_layers(output / "model.ncnn.param")
    assert "Embed" not in {kind for kind, _, _, _ in layers}
    assert [(name, outputs) for kind, name, _, outputs in layers if kind == "Input"] == [("in0", ["in0"]),
                                                                                          ("in1", ["in1"])]


@pytest.mark.slow
def test_deploykit_verify_computes_the_rows_from_the_saved_tables(host_run):
    report, output = host_run
    assert sorted(np.load(output / "inputs.npz").files) == ["ids"]  # the config's inputs; the rows are derived
    result = reverify(output)
    assert result.passed
    assert [out.max_abs for out in result.outputs] == [out["max_abs"] for out in report["ncnn"]["parity"]["outputs"]]


@pytest.mark.slow
def test_a_rerun_restores_the_lookups_and_a_new_table_is_checked_again(host_run, tmp_path):
    report, first = host_run
    output = tmp_path / "out"
    shutil.copytree(first, output)
    printed = io.StringIO()
    again = run_encoder(output, console=Console(file=printed, width=300))
    assert all(s["cached"] for s in again["stages"] if s["name"] != "check")
    assert "lookups moved to the host: host_table_0.npy, host_table_1.npy" in printed.getvalue()
    moved = "pass:embedding_gather"
    assert stage(again, moved)["host_lookups"] == stage(report, moved)["host_lookups"]
    assert again["ncnn"]["parity"] == report["ncnn"]["parity"]
    assert json.loads((output / "deploykit.json").read_text()) == json.loads((first / "deploykit.json").read_text())

    # New embedding weights: the graph after the pass is the same file, so the conversion is reused;
    # the rows it is fed are not, so ncnn checks it again.
    weights = encoder().state_dict()
    weights["embedding.weight"] = weights["embedding.weight"].flip(0)
    torch.save(weights, tmp_path / "flipped.pt")
    changed = run_encoder(output, f"model.checkpoint={tmp_path / 'flipped.pt'}")
    cached = {s["name"]: s["cached"] for s in changed["stages"] if s["name"] in ("pass:embedding_gather", "convert",
                                                                                  "verify")}
    assert cached == {"pass:embedding_gather": False, "convert": True, "verify": False}
    assert changed["status"] == "verified" and changed["ncnn"]["parity"]["max_abs"] < 1e-5
    np.testing.assert_array_equal(np.load(output / "host_table_1.npy"), weights["embedding.weight"].numpy())


@pytest.mark.slow
def test_tied_lookups_share_one_table_file(tmp_path):
    # Two lookups in one table (an input and an output embedding tied, say): one file, two entries.
    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    model = model_from_text("""
        g (int64[1,6] ids, int64[1,6] other) => (float[1,6,4] y) {
            a = Gather(table, ids)
            b = Gather(table, other)
            y = Add(a, b)
        }""", {"table": table})
    onnx.save(model, str(tmp_path / "tied.onnx"))
    config = tmp_path / "tied.yaml"
    config.write_text(f"model: {{onnx: {tmp_path / 'tied.onnx'}}}\n"
                      "inputs: [{name: ids, dtype: int64, shape: [1, 6], range: [0, 10]},\n"
                      "         {name: other, dtype: int64, shape: [1, 6], range: [0, 10]}]\n"
                      f"passes: [{{name: embedding_gather, args: {{on_host: true}}}}]\noutput: {tmp_path / 'out'}\n")
    code, report = run(*load_config(config))
    assert code == 0 and report["ncnn"]["parity"]["max_abs"] < 1e-6
    lookups = stage(report, "pass:embedding_gather")["host_lookups"]
    assert [(entry["ids"], entry["table"]) for entry in lookups] == [("ids", "host_table_0.npy"),
                                                                     ("other", "host_table_0.npy")]
    assert sorted(p.name for p in (tmp_path / "out").glob("host_table_*.npy")) == ["host_table_0.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "host_table_0.npy"), table)


@pytest.mark.slow
def test_reduce_with_the_runs_inputs_feeds_the_rows_the_app_computes(host_run, monkeypatch, tmp_path, capsys):
    import deploykit.tools.reduce
    from deploykit.cli import main

    _, output = host_run
    given = {}

    def probe(model, **settings):
        given.update(settings["inputs"])
        return None  # as if the model converted and matched: nothing to reduce

    monkeypatch.setattr(deploykit.tools.reduce, "probe", probe)
    stage_file = next(output.glob("*_embedding_gather.onnx"))
    assert main(["reduce", str(stage_file), "--inputs", str(output / "inputs.npz"), "-o", str(tmp_path)]) == 0
    ids = np.load(output / "inputs.npz")["ids"]
    table = np.load(output / "host_table_1.npy")
    np.testing.assert_array_equal(given[EMBEDDING], table[ids])
    assert given[MASK].shape == (*ids.shape, 1)
    # Without its table beside it, the run's inputs are refused rather than filled at random.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("inputs.npz", "report.json"):
        shutil.copy(output / name, elsewhere / name)
    assert main(["reduce", str(stage_file), "--inputs", str(elsewhere / "inputs.npz"), "-o", str(tmp_path)]) == 2
    assert "host_table_" in " ".join(capsys.readouterr().err.split())
