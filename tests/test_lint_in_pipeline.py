"""deploykit lint on a config, and lint as the first step of deploykit run."""

import json

from conftest import REPO
from deploykit.cli import main
from deploykit.errors import EXIT_CONFIG

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
