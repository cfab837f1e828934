"""What a run says: warnings counted and the ones that lose parameters stopping it, the exporter's
first cause, --verbose, output for CI logs (not cut to 80 columns, the result on stdout, -q with
several configs), --version, and strings from the graph shown as text, never as rich markup."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from deploykit.cli import main
from deploykit.core.errors import EXIT_CONFIG, EXIT_STAGE
from passkit import model_from_text

MODELS = {
    "relu_model": "self.linear = nn.Linear(8, 8)", "norm_model": "self.linear = nn.Linear(8, 8)",
    "linear_model": "pass",
}
FORWARD = {
    "relu_model": "return nn.ReLU()(self.linear(x))  # harmless: no parameters",
    "norm_model": "return nn.LayerNorm(8)(self.linear(x))  # its weights are never trained",
    "linear_model": "return nn.Linear(8, 8)(x)  # built, and initialised, on every call",
}


def user_model(folder, name: str, extra: str = "") -> str:
    """A config and, beside it, the module of its factory (found there, without PYTHONPATH)."""
    (folder / f"{name}.py").write_text(f"""\
import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        {MODELS[name]}

    def forward(self, x):
        {FORWARD[name]}


def build():
    torch.manual_seed(0)  # the same weights each time: a re-run reuses the stages
    return Model()
""")
    config = folder / f"{name}.yaml"
    config.write_text(f'model: {{factory: "{name}:build"}}\ninputs: [{{name: x, shape: [1, 8]}}]\n'
                      f"output: {folder / ('out_' + name)}\n{extra}")
    return str(config)


@pytest.mark.slow
def test_a_harmless_finding_is_a_warning_counted_on_the_result_line_also_with_q(tmp_path, capsys):
    config = user_model(tmp_path, "relu_model")
    assert main(["run", config, "-q"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # -q: nothing but the result line, which is on stdout
    assert re.fullmatch(r"verified on ncnn: max abs error \S+ over 1 output\(s\); 1 warning\(s\) \(in report.json "
                        r"under `warnings`\): read them before shipping; artifacts in \S+, report in \S+\n", out), out
    report = json.loads((tmp_path / "out_relu_model" / "report.json").read_text())
    [warning] = report["warnings"]
    assert "relu_model.py:11: layer-in-forward: nn.ReLU is built inside forward" in warning
    # --verbose, on the same run (every stage reused): what each stage ran; the tables are whole in a log
    assert main(["run", config, "-v"]) == 0
    out, err = capsys.readouterr()
    assert "torch.onnx.export with the torchscript exporter at opset 13" in err
    assert re.search(r"^\s+\$ \S*pnnx \S+\.onnx inputshape=\[1,8\]", err, re.M), err
    assert err.count("(reused from the last run)") >= 4
    assert "00_export.onnx" in err and "…" not in err and out.startswith("verified on ncnn")
    assert max(len(line) for line in err.splitlines()) > 80  # not cut to an 80-column terminal


def test_a_layer_with_parameters_built_in_forward_stops_the_run_before_export(tmp_path, capsys):
    code = main(["run", user_model(tmp_path, "norm_model")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_CONFIG
    assert ("[lint] lint found 1 model-writing pitfall(s), where trained weights would be missing from the export, "
            "so the model verified would be one nobody trained:") in err
    assert "norm_model.py:11: layer-in-forward: nn.LayerNorm is built inside forward, so its 16 parameter(s)" in err
    assert "set lint.lost_parameters: warning to convert anyway" in err
    assert not (tmp_path / "out_norm_model" / "00_export.onnx").exists()


@pytest.mark.slow
def test_a_failed_export_says_its_first_cause_without_colour_codes_and_names_the_lint_finding(tmp_path, capsys):
    code = main(["run", user_model(tmp_path, "linear_model", "lint: {lost_parameters: warning}\n")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_STAGE
    message = err.split("deploykit: error [export] ", 1)[1]
    assert message.startswith("torch.onnx.export failed: UnsupportedOperatorError: Exporting the operator "
                              "'aten::uniform' to ONNX opset version 13 is not supported")
    assert "(and the retry with export.exporter dynamo, export.opset 13 failed too:" in message
    assert "\x1b" not in err and "[96m" not in err
    assert f"The likely cause is what lint found at {tmp_path / 'linear_model.py'}:11 (layer-in-forward)" in message


@pytest.mark.slow
def test_q_with_several_configs_prints_only_the_final_line_on_stdout(tmp_path, capsys):
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        user_model(folder, "norm_model")
    code = main(["run", str(tmp_path / "*" / "norm_model.yaml"), "-q"])
    out, err = capsys.readouterr()
    assert code == EXIT_CONFIG and err == ""
    assert out == (f"0 of 2 model(s) verified on ncnn; failed: {tmp_path / 'a' / 'norm_model.yaml'}, "
                   f"{tmp_path / 'b' / 'norm_model.yaml'}\n")


def test_check_prints_node_names_and_fixes_as_text_not_markup(tmp_path, capsys):
    model = model_from_text("""
        g (float[1,8] x) => (float[1,3] values, int64[1,3] indices) {
            logits = MatMul(x, w)
            values, indices = TopK<axis=-1>(logits, k)
        }""", {"w": np.ones((8, 10), np.float32), "k": np.array([3], np.int64)})
    model.graph.node[0].name = "/head/Gemm"
    model.graph.node[0].output[0] = "/head/Gemm_output_0"
    model.graph.node[1].input[0] = "/head/Gemm_output_0"
    path = tmp_path / "topk.onnx"
    onnx.save(model, str(path))
    assert main(["check", str(path)]) == 1  # findings, not a crash (a MarkupError also exited 1)
    out, err = capsys.readouterr()
    assert "cut_at: [/head/Gemm_output_0]" in " ".join(out.split()) and "Traceback" not in err
    assert "1 finding(s) for pnnx" in err


def test_after_the_passes_a_node_a_selected_pass_refused_shows_the_refusal():
    from deploykit.stages.check import _remedy
    from deploykit.stages.rewrite import PassResult

    finding = SimpleNamespace(op="Where", node="/Where", fix="where_to_arithmetic")
    refused = SimpleNamespace(name="pass:where_to_arithmetic",
                              result=PassResult(refusals=["Where '/Where': it selects int64 values"]))
    ctx = SimpleNamespace(reporter=SimpleNamespace(stages=[refused]))
    assert _remedy(ctx, finding) == "The pass where_to_arithmetic ran and refused it: it selects int64 values"
    refused.result.refusals = []
    assert "ran and did not match it" in _remedy(ctx, finding)
    assert _remedy(SimpleNamespace(reporter=SimpleNamespace(stages=[])), finding) == "Fix: where_to_arithmetic"


def test_version_names_every_tool(capsys, monkeypatch, tmp_path):
    binary = tmp_path / "onnx2ncnn"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("ONNX2NCNN", str(binary))
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert {"deploykit", "torch", "onnx", "onnxruntime", "onnxsim", "pnnx", "ncnn"} <= set(lines)
    assert lines["onnx2ncnn"] == str(binary) and lines["deploykit"] == __import__("deploykit").__version__


def test_the_spinner_shows_how_long_the_stage_has_run(monkeypatch):
    from deploykit.core import report

    clock = iter([100.0, 163.4])
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(clock))
    assert report._Elapsed("converting with pnnx").__rich__().plain == "converting with pnnx ... 63s"


def test_lint_says_which_findings_lose_trained_parameters():
    import torch

    import lint_models
    from deploykit.tools.lint import lint_module

    def lost(model) -> list[bool]:
        return [f.loses_parameters for f in lint_module(model, (torch.ones(1, 4),))]

    assert lost(lint_models.ReluBuiltInForward()) == [False]
    assert lost(lint_models.LayerNormBuiltInForward()) == [True]
    assert lost(lint_models.BlockBuiltInForward()) == [True]  # a block whose Linear is built with it


@pytest.mark.slow
def test_the_warning_after_the_passes_quotes_the_refusal_of_the_pass_it_would_name(tmp_path, capsys):
    model = model_from_text("""
        g (int64[1,4] ids, float[1,4] x) => (float[1,4] y) {
            positive = Greater(x, zero)
            chosen = Where(positive, ids, none)
            as_float = Cast<to=1>(chosen)
            y = Add(as_float, x)
        }""", {"zero": np.zeros((1, 4), np.float32), "none": np.zeros((1, 4), np.int64)})
    path = tmp_path / "where.onnx"
    onnx.save(model, str(path))
    main(["run", str(path), "--input-range", "ids=0:5", "-o", str(tmp_path / "out")])
    err = " ".join(capsys.readouterr().err.split())
    assert ("Where 'Where_1': pnnx leaves Where as torch.where, which ncnn does not have. The pass "
            "where_to_arithmetic ran and refused it: it selects int64 values; ncnn computes in float") in err
    assert "Fix: where_to_arithmetic" not in err
