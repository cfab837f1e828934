"""deploykit lint on a config, and lint as the first step of deploykit run."""

import pytest
import json

from conftest import REPO
from deploykit.cli import main
from deploykit.core.errors import EXIT_CONFIG

MODELS = REPO / "tests" / "models_for_tests.py"
FLAGGED = [number for number, line in enumerate(MODELS.read_text().splitlines(), 1)
           if line.endswith("# lint: layer-in-forward")]


def article_config(tmp_path, extra=""):
    path = tmp_path / "ffn.yaml"
    path.write_text('model: {factory: "models_for_tests:build_article_ffn"}\n'
                    f"inputs: [{{name: x, shape: [1, 5, 8]}}]\noutput: {tmp_path / 'out'}\n{extra}")
    return path


def test_lint_command_names_each_layer_built_in_forward(tmp_path, capsys):
    assert main(["lint", str(article_config(tmp_path))]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "layer-in-forward" in line]
    assert len(FLAGGED) == 2 and len(lines) == 2
    for line, number in zip(lines, FLAGGED):
        assert f"models_for_tests.py:{number}: layer-in-forward" in line


def test_the_shipped_encoder_is_clean(capsys):
    assert main(["lint", str(REPO / "configs" / "mobile.yaml")]) == 0
    assert "0 finding(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_run_warns_and_records_findings_then_converts(tmp_path, capsys):
    # the LayerNorm built in forward loses its parameters: a warning only where downgraded
    assert main(["run", str(article_config(tmp_path, "lint: {lost_parameters: warning}")), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    lint = report["stages"][0]["lint"]
    assert [(f["rule"], f["line"]) for f in lint] == [("layer-in-forward", n) for n in FLAGGED]


def test_lint_as_errors_stops_the_run_before_export(tmp_path, capsys):
    code = main(["run", str(article_config(tmp_path, "lint: {as_errors: true}"))])
    err = " ".join(capsys.readouterr().err.split())
    assert code == EXIT_CONFIG
    assert "[lint] lint found 2 model-writing pitfall(s)" in err and "lint.as_errors: false" in err
    assert not (tmp_path / "out" / "00_export.onnx").exists()


def test_run_lints_on_its_own_forward_and_the_exporters_trace(tmp_path, capsys):
    """The loop over a tensor only shows when traced: the run finds it in the exporter's own trace,
    with the model run once eagerly (the reference forward) and traced once."""
    import lint_models
    from test_lint import pitfall_line

    lint_models.LoopCountingForwards.calls = 0
    config = tmp_path / "loop.yaml"
    config.write_text('model: {factory: "lint_models:LoopCountingForwards"}\n'
                      f"inputs: [{{name: x, shape: [3, 4]}}]\nlint: {{as_errors: true}}\noutput: {tmp_path / 'out'}\n")
    assert main(["run", str(config)]) == EXIT_CONFIG
    err = " ".join(capsys.readouterr().err.split())
    assert f"lint_models.py:{pitfall_line(lint_models.LoopCountingForwards)}: traced-control-flow" in err
    assert lint_models.LoopCountingForwards.calls == 2
    assert not (tmp_path / "out" / "00_export.onnx").exists()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [f["rule"] for f in report["stages"][0]["lint"]] == ["traced-control-flow"]


@pytest.mark.slow
def test_the_export_traces_the_model_as_its_reference_forward_left_it(tmp_path):
    """What the model caches in its first eval forward is exported as a constant, as after a plain
    forward: lint's forward, which is the reference forward, does not undo it."""
    import onnx

    config = tmp_path / "cache.yaml"
    config.write_text('model: {factory: "lint_models:CachesInEval"}\n'
                      f"inputs: [{{name: x, shape: [2, 4]}}]\noutput: {tmp_path / 'out'}\n")
    assert main(["run", str(config), "-q"]) == 0
    exported = onnx.load(str(tmp_path / "out" / "00_export.onnx"))
    assert [node.op_type for node in exported.graph.node] == ["Constant", "Add"]


@pytest.mark.slow
def test_a_parameter_the_exporter_traces_as_a_tensor_is_not_a_finding(tmp_path, capsys):
    config = tmp_path / "default.yaml"
    config.write_text('model: {factory: "lint_models:BranchOnADefault"}\n'
                      f"inputs: [{{name: x, shape: [3, 3]}}]\noutput: {tmp_path / 'out'}\nlint: {{as_errors: true}}\n")
    assert main(["run", str(config), "-q"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"][0]["lint"] == []


def test_the_exports_own_check_of_the_ids_is_not_a_finding_of_the_model():
    """The export checks the ids fed to each embedding in a hook that runs inside forward, with a
    Python `if` on tensors: that is deploykit's code, not the model's traced control flow."""
    import torch

    from deploykit.tools.lint import ModelLint
    from deploykit.stages.export import _ids_checked

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    args = (torch.tensor([[1, 2, 3]]),)
    linter = ModelLint(model, args)
    with _ids_checked(model, args, ["ids"]):
        linter.forward(keep_state=True)
        linter.trace()
    assert linter.findings() == []
