"""The whole pipeline, end to end, and the bad inputs it must explain instead of crashing on."""

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import REPO
from deploykit.cli import main
from deploykit.core.errors import EXIT_CONFIG, EXIT_PARITY, EXIT_STAGE
from passkit import model_from_text

MOBILE = REPO / "configs" / "mobile.yaml"


def run_cli(capsys, *args):
    code = main(["run", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, " ".join(err.split())  # rich wraps long lines


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.mark.slow
def test_mobile_config_verifies_on_ncnn_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, "-m", "deploykit", "run", str(MOBILE)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("verified on ncnn") and done.stdout.count("\n") == 1  # the result line alone
    assert "verified on ncnn" not in done.stderr
    out = tmp_path / "artifacts" / "mobile"
    result = report(out)
    assert result["status"] == "verified" and result["exit_code"] == 0
    names = [s["name"] for s in result["stages"]]
    assert names == ["export", "simplify", "check", *(f"pass:{p}" for p in result["passes"]), "convert", "verify"]
    changed = {s["name"]: s["changed"] for s in result["stages"] if s.get("changed")}
    assert changed == {"pass:id_mask_lookup": 1}
    parity = result["ncnn"]["parity"]
    assert [o["name"] for o in parity["outputs"]] == ["hidden", "attention"]
    for output in parity["outputs"]:
        assert output["passed"] and output["nan_count"] == 0
        assert output["max_abs"] < 1e-4 and output["cosine"] > 0.99999
        assert output["shape"] == output["reference_shape"]
    assert result["ncnn"]["inputs"] == [{"onnx_name": "ids", "blob": "in0", "batch_index": 0}]
    convert = result["stages"][-2]
    files = convert["files"]
    for name in ("model.ncnn.param", "model.ncnn.bin"):
        assert files[name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert convert["layers"]["Embed"] == 2
    for name in ("00_export.onnx", "01_simplify.onnx", "02_id_mask_lookup.onnx", "convert.log", "model_ncnn.py"):
        assert (out / name).is_file(), name
    # The marker is the one hidden file, and lists every other file: the folder is deploykit's.
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".deploykit"]
    marker = json.loads((out / ".deploykit").read_text())
    assert marker["status"] == "verified" and marker["folder"] == "mobile"
    assert marker["files"] == sorted(p.name for p in out.iterdir() if p.name != ".deploykit")
    assert sorted(p.name for p in out.parent.iterdir()) == ["mobile"]  # no staging folder or lock left beside it
    assert result["versions"]["pnnx"] and result["versions"]["ncnn"]
    # Digests the run took from memory match the files, and pnnx, given the last stage file
    # itself (a hard link), left it as it was.
    recorded = {name: digest for s in result["stages"] for name, digest in s["outputs_sha256"].items()}
    assert {"00_export.onnx", "01_simplify.onnx", "02_id_mask_lookup.onnx", "model.ncnn.bin"} <= set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    # What pnnx writes and nothing reads went to the null device.
    command = (out / "convert.log").read_text().splitlines()[0]
    assert all(f"{key}={os.devnull}" in command for key in ("pnnxbin", "pnnxpy", "pnnxonnx")), command


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    weights = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    model = model_from_text("""
        g (float[1,3,8] x) => (float[1,3,4] y) {
            m = MatMul(x, w)
            y = Relu(m)
        }""", {"w": weights})
    path = tmp_path_factory.mktemp("user") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def tiny_config(folder: Path, model: Path, extra: str = "") -> Path:
    path = folder / "tiny.yaml"
    path.write_text(f"model: {{onnx: {model}}}\ninputs: [{{name: x, shape: [1, 3, 8]}}]\n"
                    f"output: {folder / 'out'}\n{extra}")
    return path


@pytest.mark.slow
def test_an_onnx_model_is_imported_without_touching_the_users_file(tmp_path, tiny_onnx, capsys):
    before = tiny_onnx.read_bytes()
    code, err = run_cli(capsys, tiny_config(tmp_path, tiny_onnx))
    assert code == 0, err
    assert tiny_onnx.read_bytes() == before
    result = report(tmp_path / "out")
    assert result["stages"][0]["name"] == "import" and result["stages"][0]["artifact"] == "00_import.onnx"
    assert result["ncnn"]["parity"]["passed"]
    # A second run into the same folder replaces every artifact and leaves no partial file.
    first_param = (tmp_path / "out" / "model.ncnn.param").read_text()
    code, _ = run_cli(capsys, tiny_config(tmp_path, tiny_onnx), "--set", "seed=5")
    assert code == 0
    assert (tmp_path / "out" / "model.ncnn.param").read_text() == first_param
    assert report(tmp_path / "out")["seed"] == 5
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == [".deploykit"]


# --- bad inputs: one clear paragraph and a non-zero exit, never a traceback -------------------

def test_missing_config(tmp_path, capsys):
    code, err = run_cli(capsys, tmp_path / "nope.yaml")
    assert code == EXIT_CONFIG and "config file not found" in err


def test_unknown_pass_fails_before_export(tmp_path, capsys):
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path, "--set", "passes=[id_mask_lookup, no_such_pass]")
    assert code == EXIT_CONFIG
    assert "passes[1]: unknown pass 'no_such_pass'" in err and "deploykit passes" in err
    assert report(tmp_path)["stages"] == []


@pytest.mark.parametrize("factory, expected", [
    ("no_such_package.models:build", "cannot import 'no_such_package.models'"),
    ("deploykit.models.encoder:nothing_here", "has no callable 'nothing_here'"),
])
def test_factory_that_cannot_be_imported(tmp_path, capsys, factory, expected):
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path, "--set", f"model.factory={factory}")
    assert code == EXIT_CONFIG and "[export] model.factory:" in err and expected in err


def test_factory_that_raises(tmp_path, capsys):
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path, "--set", "model.kwargs.heads=5")
    assert code == EXIT_CONFIG
    assert "raised ValueError: d_model=64 is not divisible by heads=5" in err


def test_inputs_that_do_not_fit_the_torch_model(tmp_path, capsys):
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path, "--set", "inputs.0.data=null", "--set", "inputs.0.shape=[1, 16, 3]")
    assert code == EXIT_CONFIG
    assert "the model rejected the configured inputs (ids[1, 16, 3] int64)" in err


def test_inputs_that_do_not_fit_the_onnx_model(tmp_path, tiny_onnx, capsys):
    config = tiny_config(tmp_path, tiny_onnx)
    code, err = run_cli(capsys, config, "--set", "inputs=[{name: x, shape: [1, 4, 8], dtype: int64}, {name: z, shape: [1]}]")
    assert code == EXIT_CONFIG
    assert "input 'x' is float32 in the graph but int64 in the config" in err
    assert "input 'x' has shape [1, 4, 8] but the graph takes [1, 3, 8]" in err
    assert "the graph has no input 'z'" in err


def test_a_file_that_is_not_onnx(tmp_path, capsys):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    code, err = run_cli(capsys, tiny_config(tmp_path, bogus))
    assert code == EXIT_CONFIG and f"{bogus} is not an ONNX model" in err
    assert bogus.read_bytes() == b"\x00\x01 definitely not protobuf \xff" * 10


def test_an_onnx_file_that_fails_the_checker(tmp_path, capsys):
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"]), onnx.helper.make_node("Relu", ["nowhere"], ["z"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8])]))
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    code, err = run_cli(capsys, tiny_config(tmp_path, path))
    assert code == EXIT_CONFIG and "fails onnx.checker" in err and "nowhere" in err


def fake_converter(folder: Path, body: str, executable: bool = True) -> Path:
    path = folder / "fake-pnnx"
    path.write_text("#!/bin/sh\n" + body + "\n")
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("body, executable, timeout, code, expected", [
    (None, True, 60, EXIT_CONFIG, "does not exist"),
    ("exit 0", False, 60, EXIT_CONFIG, "is not executable"),
    ("kill -SEGV $$", True, 60, EXIT_STAGE, "pnnx crashed (SIGSEGV)"),
    ("sleep 20", True, 0.5, EXIT_STAGE, "pnnx did not finish within 0.5s"),
    ("echo 'fatal: bad graph'; exit 3", True, 60, EXIT_STAGE, "pnnx failed with exit code 3: fatal: bad graph"),
    ("echo all good", True, 60, EXIT_STAGE, "pnnx exited without writing model.ncnn.param/.bin"),
])
def test_converter_binary_problems(tmp_path, tiny_onnx, capsys, body, executable, timeout, code, expected):
    binary = fake_converter(tmp_path, body, executable) if body else tmp_path / "missing-pnnx"
    config = tiny_config(tmp_path, tiny_onnx, f"converter: {{path: {binary}, timeout: {timeout}}}\n")
    got, err = run_cli(capsys, config)
    assert got == code and "[convert]" in err and expected in err


def test_artifact_folder_that_cannot_be_written(tmp_path, tiny_onnx, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run_cli(capsys, tiny_config(tmp_path, tiny_onnx), "-o", blocker / "out")
    assert code == EXIT_CONFIG and "cannot write to the artifact folder" in err


@pytest.mark.slow
def test_leftover_layers_are_a_failed_conversion_naming_the_onnx_node(tmp_path, capsys):
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path, "--set", "passes=[]")
    assert code == EXIT_STAGE
    assert "pnnx wrote layers the ncnn runtime does not have: torch.eq" in err
    assert "from ONNX Equal '/Equal'" in err
    assert report(tmp_path)["stages"][-1]["name"] == "convert"


SOFTMAX_AXIS_PLUGIN = '''
from deploykit.onnx.graph_pass import GraphPass, register_pass

@register_pass
class WrongSoftmaxAxis(GraphPass):
    """Test-only: moves a Softmax to another axis, which changes the numbers."""
    name = "test_wrong_softmax_axis"

    def match(self, node):
        return node if node.op == "Softmax" and node.attrs.get("axis", -1) == -1 else None

    def rewrite(self, graph, node):
        node.attrs["axis"] = 2
'''


@pytest.mark.slow
def test_parity_failure_names_the_stage_and_output(tmp_path, capsys):
    plugin = tmp_path / "wrong_pass.py"
    plugin.write_text(SOFTMAX_AXIS_PLUGIN)
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path / "out", "--set", f"plugins=[{plugin}]",
                        "--set", "passes=[id_mask_lookup, test_wrong_softmax_axis]")
    assert code == EXIT_PARITY
    assert "[pass:test_wrong_softmax_axis] outputs differ from the export beyond tolerance" in err
    assert "output 'attention': max abs error" in err
    assert "so `pass:test_wrong_softmax_axis` is the first stage that went wrong" in err
    assert ("First divergence: the first tensor that differs is '/layers.0/attention/Softmax_output_0' "
            "of Softmax node '/layers.0/attention/Softmax'") in err
    result = report(tmp_path / "out")
    assert result["error"]["stage"] == "pass:test_wrong_softmax_axis"
    assert result["stages"][-1]["parity"]["passed"] is False
    assert result["stages"][-1]["divergence"]["op"] == "Softmax"


@pytest.mark.slow
def test_parity_failure_on_ncnn_after_clean_onnx_stages(tmp_path, capsys):
    code, err = run_cli(capsys, MOBILE, "-o", tmp_path, "--set", "converter.fp16=true",
                        "--set", "parity.fp16={atol: 1.0e-5, rtol: 0}")
    assert code == EXIT_PARITY
    assert "[verify] outputs differ from the export (on ncnn, fp16)" in err, err
    assert "Every earlier check (export, simplify, pass:id_mask_lookup) matched" in err
    assert report(tmp_path)["ncnn"]["parity"]["passed"] is False
    divergence = report(tmp_path)["stages"][-1]["divergence"]
    assert divergence["where"] == "ncnn" and divergence["layer_type"]
    assert f"First divergence: the first ncnn layer whose output matches no ONNX tensor is {divergence['layer_type']}" in err


@pytest.mark.slow
def test_the_torch_export_based_exporter_also_verifies(tmp_path):
    from deploykit.core.config import load_config
    from deploykit.pipeline import run

    code, result = run(*load_config(MOBILE, [f"output={tmp_path}", "export.exporter=dynamo"]))
    assert code == 0 and result["status"] == "verified"
    stages = {s["name"]: s for s in result["stages"]}
    # That exporter writes Gather(axis=0), which pnnx turns into Embed only once the axis is implicit.
    assert stages["pass:pnnx_embed"]["changed"] == 1
    assert stages["convert"]["layers"]["Embed"] == 2
    assert result["ncnn"]["parity"]["max_abs"] < 1e-4


@pytest.fixture(scope="module")
def mobile_run(tmp_path_factory):
    from deploykit.core.config import load_config
    from deploykit.pipeline import run

    folder = tmp_path_factory.mktemp("mobile")
    code, _ = run(*load_config(MOBILE, [f"output={folder}"]))
    assert code == 0
    return folder


@pytest.mark.slow
def test_verify_rechecks_saved_goldens_and_catches_a_hand_edited_param(mobile_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(mobile_run, folder)
    with np.load(folder / "inputs.npz") as saved:
        assert saved["ids"].tolist() == [[101, 7, 352, 18, 999, 64, 5, 230, 871, 42, 13, 102, 0, 0, 0, 0]]
    assert main(["verify", str(folder)]) == 0
    assert "match" in capsys.readouterr().out
    param = folder / "model.ncnn.param"
    lines = param.read_text().splitlines()
    softmax = [i for i, line in enumerate(lines) if line.startswith("Softmax")][-1]
    lines[softmax] = lines[softmax].replace(" 0=2 ", " 0=1 ")  # the last attention's softmax, over another axis
    param.write_text("\n".join(lines) + "\n")
    assert main(["verify", str(folder)]) == EXIT_PARITY
    captured = capsys.readouterr()
    assert "DIFFER" in captured.out and "output 'attention': max abs error" in " ".join(captured.err.split())
    assert main(["verify", str(tmp_path)]) == EXIT_CONFIG
    assert "has no report.json" in capsys.readouterr().err


@pytest.mark.slow
def test_preflight_runs_before_and_after_the_passes(mobile_run, capsys):
    result = report(mobile_run)
    before = result["preflight"]["before_passes"]
    assert result["preflight"]["target"] == "pnnx"
    assert [(f["op"], f["fix"]) for f in before] == [("Equal", "id_mask_lookup"), ("Cast", "id_mask_lookup")]
    assert result["preflight"]["after_passes"] == []
    check = next(s for s in result["stages"] if s["name"] == "check")
    assert check["findings"] == 2 and check["fixed_by_selected_passes"] == 2


@pytest.mark.slow
def test_check_command_lists_findings_and_exits_1(mobile_run, capsys):
    assert main(["check", str(mobile_run / "01_simplify.onnx"), "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)
    assert [f["node"] for f in findings] == ["/Equal", "/Cast"]
    assert main(["check", str(mobile_run / "02_id_mask_lookup.onnx")]) == 0
    assert "nothing pnnx would refuse" in " ".join(capsys.readouterr().err.split())
    assert main(["check", str(MOBILE)]) == EXIT_CONFIG


@pytest.mark.slow
def test_a_rerun_replaces_what_the_earlier_run_wrote_and_keeps_the_users_files(tmp_path, tiny_onnx, capsys):
    out = tmp_path / "out"
    code, _ = run_cli(capsys, tiny_config(tmp_path, tiny_onnx))
    assert code == 0 and (out / "01_simplify.onnx").is_file()
    (out / "notes.txt").write_text("the user's own file")
    code, _ = run_cli(capsys, tiny_config(tmp_path, tiny_onnx, "simplify: {enabled: false}\n"))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [".deploykit", "00_import.onnx", "convert.log", "deploykit.json",
                                                       "golden_in0.bin", "golden_out0.bin", "inputs.npz",
                                                       "model.ncnn.bin", "model.ncnn.param", "model.pnnx.param",
                                                       "model_ncnn.py", "notes.txt", "reference.npz", "report.html",
                                                       "report.json"]
    assert (out / "notes.txt").read_text() == "the user's own file"


@pytest.mark.slow
def test_manifest_describes_the_blobs_of_the_written_param(mobile_run):
    from deploykit.ncnn.runtime import read_param_layers

    manifest = json.loads((mobile_run / "deploykit.json").read_text())
    layers = read_param_layers(mobile_run / "model.ncnn.param")
    input_blobs = [outs[0] for kind, _, _, outs in layers if kind == "Input"]
    produced = {blob for _, _, _, outs in layers for blob in outs}
    assert [i["blob"] for i in manifest["inputs"]] == input_blobs == ["in0"]
    assert {k: v for k, v in manifest["inputs"][0].items() if k not in ("golden", "preprocess")} == {
        "blob": "in0", "onnx_name": "ids", "onnx_shape": [1, 16], "onnx_dtype": "int64", "dtype": "int32",
        "batch_axis": True, "mat_shape": [16]}
    assert [(o["blob"], o["onnx_name"], o["mat_shape"]) for o in manifest["outputs"]] == [
        ("out0", "hidden", [16, 64]), ("out1", "attention", [4, 16, 16])]
    assert {o["blob"] for o in manifest["outputs"]} <= produced
    for part in ("param", "bin"):
        entry = manifest[part]
        assert hashlib.sha256((mobile_run / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["host_tail"] is None and manifest["fp16_weights"] is False


@pytest.mark.slow
def test_fp16_is_verified_under_its_own_tolerances_and_its_cost_reported(tmp_path):
    from deploykit.core.config import load_config
    from deploykit.pipeline import run

    code, result = run(*load_config(MOBILE, [f"output={tmp_path}", "converter.fp16=true"]))
    assert code == 0
    verify = result["stages"][-1]
    assert verify["parity"]["against"] == "the export (on ncnn, fp16)"
    assert verify["parity"]["outputs"][0]["atol"] == 1e-2
    cost = verify["fp16_cost"]["hidden"]
    assert cost["max_abs_fp32"] < 1e-5 < cost["max_abs_fp16"] < 1e-2
    assert json.loads((tmp_path / "deploykit.json").read_text())["fp16_weights"] is True


CRASHING_PLUGIN = '''
from deploykit.onnx.graph_pass import GraphPass, register_pass

@register_pass
class Crashes(GraphPass):
    name = "test_crashes_in_match"

    def match(self, node):
        raise KeyError("a bug")
'''


@pytest.mark.slow
def test_a_bug_in_a_pass_is_reported_as_a_stage_failure_with_the_traceback_in_the_report(tmp_path, tiny_onnx, capsys):
    plugin = tmp_path / "crashing.py"
    plugin.write_text(CRASHING_PLUGIN)
    config = tiny_config(tmp_path, tiny_onnx, f"plugins: [{plugin}]\npasses: [test_crashes_in_match]\n")
    code, err = run_cli(capsys, config)
    assert code == EXIT_STAGE
    assert "[pass:test_crashes_in_match] pass 'test_crashes_in_match' raised KeyError: 'a bug'" in err
    assert "enabled: false" in err


@pytest.mark.slow
def test_an_unexpected_error_still_writes_the_report_and_names_the_stage(tmp_path, tiny_onnx, capsys, monkeypatch):
    import deploykit.stages.check

    def broken(ctx, when, graph=None):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(deploykit.stages.check, "preflight", broken)
    code, err = run_cli(capsys, tiny_config(tmp_path, tiny_onnx))
    assert code == EXIT_STAGE
    assert "[check] unexpected RuntimeError: simulated bug" in err and "this is a bug" in err
    error = report(tmp_path / "out")["error"]
    assert error["stage"] == "check" and "RuntimeError: simulated bug" in error["traceback"]


CAUSAL = """
model: {factory: "models_for_tests:build_causal_scores"}
inputs: [{name: x, shape: [1, 6, 6]}]
export: {output_names: [y]%s}
"""


@pytest.mark.slow
def test_an_unset_opset_is_raised_to_what_an_operator_needs(tmp_path, capsys):
    config = tmp_path / "causal.yaml"
    config.write_text(CAUSAL % "")
    code, err = run_cli(capsys, config, "-o", tmp_path / "out")
    assert code == 0, err
    assert "aten::triu to ONNX opset version 13 is not supported" in err.replace("'", "")
    assert "Exported at opset 14 instead of 13; set export.opset to choose" in err
    export = report(tmp_path / "out")["stages"][0]
    assert export["opset"] == 14 and len(export["export_retried"]) == 1
    exported = onnx.load(str(tmp_path / "out" / "00_export.onnx"))
    assert [o.version for o in exported.opset_import if o.domain in ("", "ai.onnx")] == [14]


def test_an_opset_the_config_sets_is_kept_and_the_error_names_the_one_needed(tmp_path, capfd):
    config = tmp_path / "causal.yaml"
    config.write_text(CAUSAL % ", opset: 13")
    code = main(["run", str(config), "-o", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    err = " ".join(err.split())
    assert code == EXIT_STAGE
    assert "[export] torch.onnx.export failed: UnsupportedOperatorError" in err
    assert "Try: set export.opset: 14;" in err
    # torch's C++ side prints the graph on stdout when an operator fails: it goes to the report.
    assert out == ""
    printed = report(tmp_path / "out")["stages"][0]["exporter_output"]
    assert printed[0].startswith("Torch IR graph at exception") and any("aten::triu" in line for line in printed)


@pytest.mark.slow
def test_an_operator_no_opset_exports_goes_to_the_other_exporter(tmp_path, capsys):
    differences = CAUSAL.replace("build_causal_scores", "build_differences")
    config = tmp_path / "diff.yaml"
    config.write_text(differences % "")
    code, err = run_cli(capsys, config, "-o", tmp_path / "out")
    assert code == 0, err
    assert "the TorchScript exporter has no rule for aten::diff at any opset. Exported with the torch.export-based" in err
    export = report(tmp_path / "out")["stages"][0]
    assert export["exporter"] == "dynamo" and len(export["export_retried"]) == 1
    # An exporter the config names is kept, and the error says what to try.
    config.write_text(differences % ", exporter: torchscript")
    code, err = run_cli(capsys, config, "-o", tmp_path / "out2")
    assert code == EXIT_STAGE
    assert "Try: the TorchScript exporter has no rule for aten::diff at any opset: set export.exporter: dynamo" in err


def run_torch_layer(tmp_path: Path, capfd, factory: str, export: str = "") -> tuple[int, str, str]:
    """`deploykit run -q` on a models_for_tests factory taking x[1, 5, 16]; (exit code, stdout, stderr)."""
    config = tmp_path / "layer.yaml"
    config.write_text(f'model: {{factory: "models_for_tests:{factory}"}}\n'
                      f"inputs: [{{name: x, shape: [1, 5, 16]}}]\nexport: {{output_names: [y]{export}}}\n")
    code = main(["run", str(config), "-o", str(tmp_path / "out"), "-q"])
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.slow
def test_torchs_transformer_layer_verifies_through_the_dynamo_exporter_quietly(tmp_path, capfd):
    # The TorchScript exporter of torch 2.13 fails on nn.TransformerEncoderLayer (is_causal traced
    # as a tensor); the torch.export-based one works, logging warnings and a traceback on the way.
    code, out, err = run_torch_layer(tmp_path, capfd, "build_transformer_layer", ", exporter: dynamo")
    assert code == 0, err
    assert out.startswith("verified on ncnn") and "Traceback" not in err and "WARNING" not in err
    result = report(tmp_path / "out")
    assert result["ncnn"]["parity"]["max_abs"] < 1e-5
    assert any(line.startswith("WARNING onnxscript") for line in result["stages"][0]["exporter_output"])


@pytest.mark.slow
def test_torchs_multihead_attention_exports_with_gradients_on(tmp_path, capfd):
    # Under torch.no_grad() nn.MultiheadAttention takes a fused path with no ONNX export at any
    # opset; the export runs with gradients on, and at the opset its attention needs (14).
    code, out, err = run_torch_layer(tmp_path, capfd, "build_torch_attention")
    assert code == 0, err
    assert out.startswith("verified on ncnn") and out.count("\n") == 1  # torch's graph, printed by the failed
    # attempt at opset 13, went to the report
    result = report(tmp_path / "out")
    assert result["stages"][0]["opset"] == 14
    assert result["ncnn"]["parity"]["max_abs"] < 1e-5
    layers = [line.split()[0] for line in (tmp_path / "out" / "model.ncnn.param").read_text().splitlines()[2:]]
    assert layers.count("MultiHeadAttention") == 1


def test_pnnx_converts_a_file_already_in_its_folder_and_again_over_an_earlier_conversion(tmp_path, tiny_onnx):
    from passkit import pnnx_convert

    model = onnx.load(str(tiny_onnx))
    x = np.ones((1, 3, 8), np.float32)
    first = pnnx_convert(model, {"x": x}, tmp_path, "model.onnx")  # the input is pnnx's own file name
    param = first.param.read_text()
    again = pnnx_convert(model, {"x": x}, tmp_path, "model.onnx")
    assert again.param.read_text() == param and onnx.load(str(tmp_path / "model.onnx")) == model
