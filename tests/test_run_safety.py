"""What a run must never do to the user's files and to the last verified artifacts, and the bad
inputs that must end in one clear paragraph with the right exit code (never a traceback, never
exit 0 for a run that did not verify)."""

import errno
import hashlib
import json
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.cli import main
from deploykit.core.errors import EXIT_CONFIG, EXIT_STAGE
from passkit import model_from_text

WEIGHTS = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)


def hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys, *args) -> tuple[int, str]:
    code = main([*map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, " ".join(err.split())


def tiny_model(path: Path) -> Path:
    onnx.save(model_from_text("""
        g (float[1,3,8] x) => (float[1,3,4] y) {
            m = MatMul(x, w)
            y = Relu(m)
        }""", {"w": WEIGHTS}), str(path))
    return path


def config(folder: Path, model: Path, extra: str = "", output: str = "out") -> Path:
    path = folder / "tiny.yaml"
    path.write_text(f"model: {{onnx: {model}}}\ninputs: [{{name: x, shape: [1, 3, 8]}}]\n"
                    f"output: {folder / output}\n{extra}")
    return path


def fake_converter(folder: Path, body: str, name: str = "fake-pnnx") -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory):
    """A verified run of the tiny model, to copy: (its folder, the model, the config)."""
    folder = tmp_path_factory.mktemp("verified")
    model = tiny_model(folder / "tiny.onnx")
    path = config(folder, model)
    assert main(["run", str(path), "-q"]) == 0
    return folder


@pytest.fixture
def rerun(verified_run, tmp_path):
    """A copy of the verified run (its config, model and artifact folder) in tmp_path."""
    for name in ("tiny.onnx", "out"):
        (shutil.copytree if name == "out" else shutil.copy)(verified_run / name, tmp_path / name)
    return config(tmp_path, tmp_path / "tiny.onnx")


# --- the user's files ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["02_mine.onnx", "01_simplify.onnx"])
def test_a_folder_holding_the_input_model_is_refused_and_the_model_untouched(tmp_path, capsys, name):
    out = tmp_path / "out"
    out.mkdir()
    model = tiny_model(out / name)
    before = hashes(out)
    code, err = cli(capsys, "run", config(tmp_path, model))
    assert code == EXIT_CONFIG
    assert f"[output] the artifact folder {out} holds {model}, which this run reads" in err
    assert hashes(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.yaml"]


def test_a_folder_of_the_users_own_files_is_refused_and_left_as_it_was(tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    for name, text in {"notes.md": "mine", "report.json": "{}", "model.ncnn.param": "7767517", "model.ncnn.bin": "w",
                       "05_old.onnx": "old"}.items():
        (project / name).write_text(text)
    model = tiny_model(tmp_path / "tiny.onnx")
    before = hashes(project)
    code, err = cli(capsys, "run", config(tmp_path, model), "-o", project)
    assert code == EXIT_CONFIG
    assert "already holds files deploykit did not write (05_old.onnx, model.ncnn.bin, model.ncnn.param, " in err
    assert "Try: give a new folder for the artifacts with" in err
    assert hashes(project) == before


@pytest.mark.parametrize("output, expected", [
    ("", "-o/--output is empty"),
    ("/", "the artifact folder / is the root of the file system"),
    ("..", "holds the working directory"),
    (".", "is the working directory"),
])
def test_outputs_that_are_never_an_artifact_folder(tmp_path, capsys, monkeypatch, output, expected):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, err = cli(capsys, "run", config(tmp_path, tiny_model(tmp_path / "tiny.onnx")), "-o", output)
    assert code == EXIT_CONFIG and expected in err
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("setting", ["output: \n", None])
def test_a_blank_output_is_a_config_error(tmp_path, capsys, setting):
    path = tmp_path / "blank.yaml"
    path.write_text(f"model: {{onnx: {tiny_model(tmp_path / 'tiny.onnx')}}}\ninputs: [{{name: x, shape: [1, 3, 8]}}]\n"
                    + (setting or ""))
    code, err = cli(capsys, "run", path, *([] if setting else ["--set", "output="]))
    assert code == EXIT_CONFIG and "output: is empty" in err and "artifacts/blank" in err


# --- failed and concurrent re-runs ---------------------------------------------------------------

CRASH = "kill -SEGV $$"


@pytest.mark.slow
@pytest.mark.parametrize("overrides, code, expected", [
    (["passes=[auto, id_mask_lookpu]"], EXIT_CONFIG, "unknown pass 'id_mask_lookpu'"),
    (["converter.path=/nonexistent/pnnx"], EXIT_CONFIG, "does not exist: /nonexistent/pnnx"),
    (["converter.path=CRASHING"], EXIT_STAGE, "pnnx crashed (SIGSEGV)"),
    (["seed=3", "converter.timeout=0.3", "converter.path=SLEEPING"], EXIT_STAGE, "did not finish within 0.3s"),
])
def test_a_failed_rerun_keeps_the_verified_artifacts_and_reports_beside_them(rerun, tmp_path, capsys, overrides,
                                                                            code, expected):
    out = tmp_path / "out"
    before = hashes(out)
    paths = {"CRASHING": fake_converter(tmp_path, CRASH), "SLEEPING": fake_converter(tmp_path, "sleep 30", "slow")}
    args = [arg for item in overrides for arg in ("--set", next((item.replace(k, str(v)) for k, v in paths.items()
                                                                 if k in item), item))]
    got, err = cli(capsys, "run", rerun, *args)
    assert got == code and expected in err
    assert hashes(out) == before
    failed = tmp_path / "out.failed"
    assert f"report: {failed / 'report.json'} (the verified artifacts of the run before are unchanged in {out})" in err
    report = json.loads((failed / "report.json").read_text())
    assert report["status"] == "failed" and expected in report["error"]["message"]
    assert main(["verify", str(out)]) == 0  # the verified model is still whole
    got, _ = cli(capsys, "run", rerun)
    assert got == 0 and not failed.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("where, expected", [
    ("/nonexistent/pnnx", "the pnnx binary named by converter.path does not exist: /nonexistent/pnnx."),
    ("FOLDER", "the pnnx binary named by converter.path is a folder, not the pnnx executable: FOLDER."),
])
def test_a_converter_that_is_not_there_fails_before_the_export(tmp_path, capsys, where, expected):
    from conftest import REPO

    where, expected = (text.replace("FOLDER", str(tmp_path)) for text in (where, expected))
    code, err = cli(capsys, "run", REPO / "configs" / "mobile.yaml", "-o", tmp_path / "out",
                    "--set", f"converter.path={where}")
    assert code == EXIT_CONFIG and f"[convert] {expected}" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"] == [] and report["error"]["stage"] == "convert"


@pytest.mark.slow
def test_a_crash_of_onnxsim_keeps_the_verified_artifacts(rerun, tmp_path, monkeypatch):
    from deploykit.core.config import load_config
    from deploykit.core.errors import StageError
    from deploykit.pipeline import run
    from deploykit.stages import simplify

    monkeypatch.setattr(simplify, "CHILD", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 11)"])
    before = hashes(tmp_path / "out")
    with pytest.raises(StageError, match="onnxsim crashed") as caught:  # and so does every variation with it
        run(*load_config(rerun, ["variations=[no_fusions]"]), force=True)
    assert hashes(tmp_path / "out") == before
    assert caught.value.report_file == tmp_path / "out.failed" / "report.json"


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused(rerun, tmp_path, capsys):
    from deploykit.core.artifacts import OutputFolder

    before = hashes(tmp_path / "out")
    with OutputFolder(tmp_path / "out").staging():
        code, err = cli(capsys, "run", rerun)
    assert code == EXIT_CONFIG and "another deploykit run (process" in err and "is writing to the artifact folder" in err
    assert hashes(tmp_path / "out") == before


@pytest.mark.slow
def test_a_full_disk_while_writing_the_report_leaves_the_folder_as_it_was(rerun, tmp_path, capsys, monkeypatch):
    from deploykit.core.artifacts import ArtifactDir

    written = ArtifactDir.write_json

    def full(self, name, data):
        if name == "report.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self.file(name)))
        return written(self, name, data)

    monkeypatch.setattr(ArtifactDir, "write_json", full)
    before = hashes(tmp_path / "out")
    code, err = cli(capsys, "run", rerun, "--set", "seed=4")
    assert code == EXIT_STAGE
    assert "[report] cannot write report.json of the run: No space left on device; the artifact folder" in err
    assert hashes(tmp_path / "out") == before and not (tmp_path / "out.failed").exists()


@pytest.mark.slow
def test_a_full_disk_during_a_stage_is_said_so(rerun, tmp_path, capsys, monkeypatch):
    from deploykit.core.artifacts import ArtifactDir

    def full(self, name, arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.file(name)))

    monkeypatch.setattr(ArtifactDir, "write_arrays", full)
    before = hashes(tmp_path / "out")
    code, err = cli(capsys, "run", rerun, "--set", "seed=4")
    assert code == EXIT_STAGE and "inputs.npz: No space left on device. Try: free some space on that disk" in err
    assert "bug" not in err and hashes(tmp_path / "out") == before


@pytest.mark.slow
def test_the_converters_timeout_ends_the_processes_it_started(tmp_path, capsys):
    import os
    import time

    pids = tmp_path / "pids"
    slow = fake_converter(tmp_path, f"sleep 1000 &\necho $! > {pids}\nwait")
    path = config(tmp_path, tiny_model(tmp_path / "tiny.onnx"), f"converter: {{path: {slow}, timeout: 1}}\n")
    code, err = cli(capsys, "run", path)
    assert code == EXIT_STAGE and "did not finish within 1s" in err
    child = int(pids.read_text())
    for _ in range(100):  # killed at once; a zombie until its new parent reaps it
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child), f"the converter's child {child} still runs"
    assert os.getpid() != child


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_a_relative_converter_path_is_relative_to_the_yaml(tmp_path, capsys, monkeypatch):
    configs = tmp_path / "configs"
    (configs / "tools").mkdir(parents=True)
    fake_converter(configs / "tools", "echo 'the fake converter ran'; exit 3")
    path = configs / "tiny.yaml"
    path.write_text(f"model: {{onnx: {tiny_model(tmp_path / 'tiny.onnx')}}}\ninputs: [{{name: x, shape: [1, 3, 8]}}]\n"
                    f"output: {tmp_path / 'out'}\nconverter: {{path: tools/fake-pnnx}}\n")
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "run", "configs/tiny.yaml")
    assert code == EXIT_STAGE and "pnnx failed with exit code 3: the fake converter ran" in err


@pytest.mark.slow
def test_a_param_whose_counts_are_not_numbers_is_a_convert_error(tmp_path, capsys):
    writes = fake_converter(tmp_path, "printf '7767517\\n2 2\\nInput in0 0 one in0\\nReLU r 1 1 in0 out0\\n' "
                                      "> model.ncnn.param; : > model.ncnn.bin")
    code, err = cli(capsys, "run", config(tmp_path, tiny_model(tmp_path / "tiny.onnx"),
                                          f"converter: {{path: {writes}}}\n"))
    assert code == EXIT_STAGE
    assert "model.ncnn.param line 3 is not an ncnn layer line: its input and output counts ('0', 'one')" in err
    assert "bug" not in err


# --- user code that tries to end deploykit -------------------------------------------------------

FACTORIES = {
    "exits": "import sys\ndef build():\n    sys.exit(0)\n",
    "parses": "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--size', required=True)\n"
              "args = parser.parse_args()\ndef build():\n    pass\n",
    "interrupts": "def build():\n    raise KeyboardInterrupt\n",
}


@pytest.mark.parametrize("kind, expected", [
    ("exits", "model.factory user_model_exits:build called sys.exit(0), which would have ended deploykit"),
    ("parses", "importing 'user_model_parses' (model.factory) called sys.exit(2)"),
    ("interrupts", "model.factory user_model_interrupts:build raised KeyboardInterrupt itself"),
])
def test_user_code_cannot_end_deploykit(tmp_path, capsys, monkeypatch, kind, expected):
    (tmp_path / f"user_model_{kind}.py").write_text(FACTORIES[kind])
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "user.yaml"
    path.write_text(f'model: {{factory: "user_model_{kind}:build"}}\ninputs: [{{name: x, shape: [1, 4]}}]\n'
                    f"output: {tmp_path / 'out'}\n")
    code, err = cli(capsys, "run", path)
    assert code == EXIT_CONFIG and f"[export] {expected}" in err
    assert ('if __name__ == "__main__":' in err) == (kind != "interrupts")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["exit_code"] == EXIT_CONFIG


# --- deploykit verify and reduce --inputs on damaged or wrong files ------------------------------

@pytest.mark.parametrize("damage, expected", [
    ("report.json", "report.json is not a report `deploykit run` wrote, or it is damaged (JSONDecodeError"),
    ("inputs.npz", "inputs.npz does not exist"),
    ("reference.npz", "reference.npz is not a readable .npz of named arrays"),
])
def test_verify_on_a_damaged_folder_is_a_config_error(verified_run, tmp_path, capsys, damage, expected):
    folder = tmp_path / "out"
    shutil.copytree(verified_run / "out", folder)
    target = folder / damage
    if damage == "inputs.npz":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    code, err = cli(capsys, "verify", folder)
    assert code == EXIT_CONFIG and "[verify]" in err and expected in err


@pytest.mark.parametrize("arrays, expected", [
    ({"z": np.zeros((1, 3, 8), np.float32)}, "graph input 'x' is missing"),
    ({"x": np.zeros((1, 4, 8), np.float32)}, "input 'x' has shape [1, 4, 8] but the graph takes [1, 3, 8]"),
])
def test_reduce_with_inputs_that_do_not_fit_the_model_is_an_error(tmp_path, capsys, arrays, expected):
    np.savez(tmp_path / "inputs.npz", **arrays)
    code, err = cli(capsys, "reduce", tiny_model(tmp_path / "m.onnx"), "--inputs", tmp_path / "inputs.npz",
                    "-o", tmp_path / "reduced")
    assert code == EXIT_CONFIG and f"[reduce] the inputs do not fit {tmp_path / 'inputs.npz'}: {expected}" in err
    assert not (tmp_path / "reduced").exists()


# --- inputs and messages -------------------------------------------------------------------------

def test_nan_inputs_are_refused_with_where_they_are(tmp_path, capsys):
    values = np.ones((1, 3, 8), np.float32)
    values[0, 1, 2] = np.nan
    np.save(tmp_path / "x.npy", values)
    path = tmp_path / "nan.yaml"
    path.write_text(f"model: {{onnx: {tiny_model(tmp_path / 'tiny.onnx')}}}\ninputs: [{{name: x, file: x.npy}}]\n"
                    f"output: {tmp_path / 'out'}\n")
    code, err = cli(capsys, "run", path)
    assert code == EXIT_CONFIG and "[inputs] inputs[0] (x): 1 of the values are NaN (the first at [0, 1, 2])" in err


def test_token_ids_outside_the_table_name_the_id_and_the_vocabulary_onnx(tmp_path, capsys):
    table = np.ones((10, 4), np.float32)
    model = tmp_path / "lookup.onnx"
    onnx.save(model_from_text("""
        g (int64[1,3] ids) => (float[1,3,4] y) {
            y = Gather(table, ids)
        }""", {"table": table}), str(model))
    path = tmp_path / "ids.yaml"
    path.write_text(f"model: {{onnx: {model}}}\ninputs: [{{name: ids, dtype: int64, data: [[1, 12, 3]]}}]\n"
                    f"output: {tmp_path / 'out'}\n")
    code, err = cli(capsys, "run", path)
    assert code == EXIT_CONFIG
    assert "token id 12 is outside the table of Gather node" in err and "which has 10 rows (ids 0 to 9)" in err
    assert "range: [0, 10]" in err and "onnxruntime" not in err


def test_a_node_that_fails_the_checker_is_named(tmp_path, capsys):
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name="/block/Relu", alpha=1.0)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8])]),
        opset_imports=[onnx.helper.make_opsetid("", 13)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    code, err = cli(capsys, "run", config(tmp_path, tmp_path / "bad.onnx"))
    assert code == EXIT_CONFIG
    assert "fails onnx.checker: Unrecognized attribute: alpha for operator Relu ==> Context: Bad node spec for node. " \
           "Name: /block/Relu OpType: Relu" in err


BREAKING_PLUGIN = '''
from deploykit.onnx.graph_pass import GraphPass, register_pass

@register_pass
class Breaks(GraphPass):
    """Test-only: gives a Relu an attribute Relu does not have."""
    name = "test_breaks_the_graph"

    def match(self, node):
        return node if node.op == "Relu" and "alpha" not in node.attrs else None

    def rewrite(self, graph, node):
        node.attrs["alpha"] = 1.0
'''


@pytest.mark.slow
def test_a_pass_that_breaks_the_graph_is_blamed_not_the_export(tmp_path, capsys):
    (tmp_path / "breaking.py").write_text(BREAKING_PLUGIN)
    code, err = cli(capsys, "run", config(tmp_path, tiny_model(tmp_path / "tiny.onnx"),
                                          f"plugins: [{tmp_path / 'breaking.py'}]\npasses: [test_breaks_the_graph]\n"))
    assert code == EXIT_STAGE and "[pass:test_breaks_the_graph]" in err and "Unrecognized attribute: alpha" in err
    assert "the pass 'test_breaks_the_graph' wrote a broken graph: turn it off with" in err
    assert "re-export" not in err


ALIASES = """model: {factory: "pkg.mod:build", kwargs: {a: &a [x, x, x, x, x, x, x, x, x, x],
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b],
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d],
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e], g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]}}
inputs: [{name: x, shape: [1, 3]}]
"""


def test_a_config_of_aliases_that_stands_for_a_billion_values_is_refused(tmp_path):
    from deploykit.core.config import load_config
    from deploykit.core.errors import ConfigError

    path = tmp_path / "aliases.yaml"
    path.write_text(ALIASES)
    assert path.stat().st_size < 600
    with pytest.raises(ConfigError, match=r"stands for more than 1000000 values once its YAML aliases"):
        load_config(path)


def test_what_a_report_repeats_of_a_config_is_bounded():
    from deploykit.core.report import ECHOED_VALUES, bounded

    echoed = bounded({"kwargs": {"table": list(range(50_000)), "name": "n" * 10_000}})
    assert len(json.dumps(echoed)) < 100_000
    table = echoed["kwargs"]["table"]
    assert table[:-1] == list(range(len(table) - 1)) and ECHOED_VALUES - 10 < len(table) <= ECHOED_VALUES
    assert table[-1] == f"... {50_000 - (len(table) - 1)} more left out of the report"
    assert echoed["kwargs"]["..."] == "1 more left out of the report"
    assert bounded({"name": "n" * 10_000})["name"].endswith("... [8000 more characters]")


def test_token_ids_outside_the_vocabulary_name_the_id_and_its_size_torch(tmp_path, capsys):
    from conftest import REPO

    code, err = cli(capsys, "run", REPO / "configs" / "mobile.yaml", "-o", tmp_path / "out",
                    "--set", "inputs.0.data=[[101, 7, 1500, 0]]", "--set", "inputs.0.shape=[1, 4]")
    assert code == EXIT_CONFIG
    assert ("[export] token id 1500 at [0, 2] of input 'ids' is outside the vocabulary of Embedding 'embedding', "
            "which has 1000 entries (ids 0 to 999)") in err
    assert "range: [0, 1000]" in err


@pytest.mark.parametrize("data", [None, "[[101, 7, 352, 0]]"])
def test_float_ids_fed_to_an_embedding_ask_for_an_integer_type_torch(tmp_path, capsys, data):
    from conftest import REPO

    sets = ["--set", "inputs.0.dtype=float32", "--set", "inputs.0.shape=[1, 4]"]
    sets += ["--set", f"inputs.0.data={data}"] if data else ["--set", "inputs.0.data=null"]
    code, err = cli(capsys, "run", REPO / "configs" / "mobile.yaml", "-o", tmp_path / "out", *sets)
    assert code == EXIT_CONFIG
    assert ("[export] input 'ids' is float32, but it feeds Embedding 'embedding', which takes integer token ids"
            in err), err
    assert "`dtype: int64` for 'ids'" in err and "outside the vocabulary" not in err


@pytest.mark.parametrize("override, expected", [
    ("seed=-1", "seed: Input should be greater than or equal to 0, got -1"),
    ("export.output_names=[hidden, hidden]", "export.output_names: output names must be unique; repeated: hidden"),
])
def test_config_values_no_run_can_use(tmp_path, capsys, override, expected):
    from conftest import REPO

    code, err = cli(capsys, "run", REPO / "configs" / "mobile.yaml", "-o", tmp_path / "out", "--set", override)
    assert code == EXIT_CONFIG and expected in err and "bug" not in err
    assert not (tmp_path / "out").exists()


def test_the_default_tolerances_let_a_one_percent_bias_change_through():
    """The README's parity section says so, with these numbers."""
    import copy

    import torch

    from deploykit.core.config import ParitySection
    from deploykit.models.encoder import build_encoder
    from deploykit.core.parity import compare_outputs

    model = build_encoder(seed=0, vocab=1000, d_model=64, heads=4, d_ff=256, layers=2).eval()
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.layers[0].attention.query.bias.mul_(1.01)
        ids = torch.tensor([[101, 7, 352, 18, 999, 64, 5, 230, 871, 42, 13, 102, 0, 0, 0, 0]])
        before, after = ({name: t.numpy() for name, t in zip(("hidden", "attention"), m(ids))} for m in (model, changed))
    defaults = compare_outputs(before, after, ParitySection(), against="the unchanged model")
    assert defaults.passed and 1.0e-4 < defaults.max_abs < 1.05e-4
    assert not compare_outputs(before, after, ParitySection(metric="max_abs"), against="the unchanged model").passed


@pytest.mark.slow
def test_a_run_after_a_failed_one_reuses_the_stages_the_failed_run_got_through(rerun, tmp_path, capsys):
    crashing = fake_converter(tmp_path, CRASH)  # the run fails at convert, after simplify
    code, _ = cli(capsys, "run", rerun, "--set", "seed=5", "--set", f"converter.path={crashing}")
    assert code == EXIT_STAGE and (tmp_path / "out.failed" / "01_simplify.onnx").is_file()
    code, _ = cli(capsys, "run", rerun, "--set", "seed=5")
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {s["name"]: s["cached"] for s in report["stages"]}["simplify"] is True
    assert report["seed"] == 5 and not (tmp_path / "out.failed").exists()
    assert hashes(tmp_path / "out")["01_simplify.onnx"] == report["stages"][1]["outputs_sha256"]["01_simplify.onnx"]
