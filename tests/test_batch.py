"""Several configs in one command: each in its own process and folder, one summary."""

import json

import pytest

from conftest import REPO
from deploykit.cli import main
from deploykit.core.errors import EXIT_CONFIG, EXIT_STAGE

MOBILE = REPO / "configs" / "mobile.yaml"


def write(tmp_path, name, extra):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"_base_: {MOBILE}\noutput: {tmp_path / name}\n{extra}")
    return path


@pytest.mark.slow
def test_one_failing_config_does_not_stop_the_others_and_sets_the_exit_code(tmp_path, capsys):
    write(tmp_path, "good", "")
    write(tmp_path, "unconverted", "passes: []\nvariations: []\n")  # the run as configured, failing at convert
    code = main(["run", str(tmp_path / "*.yaml"), "--jobs", "2"])
    out, err = (" ".join(text.split()) for text in capsys.readouterr())
    assert code == EXIT_STAGE
    assert out.startswith(f"1 of 2 model(s) verified on ncnn; failed: {tmp_path / 'unconverted.yaml'}")  # on stdout
    assert "[convert]" in err and "FAILED" in err
    assert json.loads((tmp_path / "good" / "report.json").read_text())["status"] == "verified"
    assert json.loads((tmp_path / "unconverted" / "report.json").read_text())["error"]["stage"] == "convert"


@pytest.mark.parametrize("args, expected", [
    (["-o", "somewhere"], "-o/--output names one folder"),
    ([], "both write to"),
])
def test_configs_that_would_share_a_folder_are_refused_before_running(tmp_path, capsys, args, expected):
    first, second = write(tmp_path, "a", ""), write(tmp_path, "b", "")
    if not args:
        second.write_text(f"_base_: {MOBILE}\noutput: {tmp_path / 'a'}\n")
    assert main(["run", str(first), str(second), *args]) == EXIT_CONFIG
    assert expected in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "a").exists()


def test_a_glob_that_matches_nothing(tmp_path, capsys):
    assert main(["run", str(tmp_path / "none-*.yaml")]) == EXIT_CONFIG
    assert "no config matches" in capsys.readouterr().err
