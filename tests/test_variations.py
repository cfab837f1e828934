"""When the run as configured fails at convert or verify, the variations a user would try by hand
(deploykit/variations.py): the attempt logic with a stand-in for the pipeline (fast), then two
models that really need a variation, through the real pnnx and ncnn."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from conftest import run_yaml
from deploykit.core.artifacts import ArtifactDir
from deploykit.core.cache import StageCache
from deploykit.core.config import Config, load_config
from deploykit.core.errors import (ConfigError, DeployError, Interrupted, MachineError, ParityError, RepeatedFailure,
                                   StageError, StoppedError)
from deploykit.core.report import Reporter, StageRecord
from deploykit.stages.export import ExportResult
from deploykit.variations import AS_CONFIGURED, run_attempts

BUILT_IN = ["no_fusions", "no_simplify", "opset_17", "other_exporter", "bare", "torchscript"]


def make_config(**sections) -> Config:
    return Config.model_validate({"model": {"factory": "somewhere:build"}, "inputs": [{"name": "x", "shape": [1, 4]}],
                                  "output": "unused", **sections})


def label(config: Config) -> str:
    """What tells the stand-in's attempts apart: the keys the built-in variations change."""
    return (f"opset={config.export.opset} exporter={config.export.exporter} simplify={config.simplify.enabled} "
            f"skip={config.simplify.skip_optimizers} passes={config.passes} source={config.converter.source}")


class StandIn:
    """Stands for one attempt of the pipeline: writes the files of a run into the top of the staging
    folder and ends as `ends(config)` says (None: verified). A failed verify leaves its diagnosis
    for later when asked to, as the verify stage does."""

    def __init__(self, artifacts: ArtifactDir, ends):
        self.artifacts, self.ends = artifacts, ends
        self.calls: list[tuple[Config, str]] = []
        self.diagnosed: list[int] = []  # how many attempts had run when the diagnosis ran
        self.failures: dict = {}

    def __call__(self, config: Config, reporter: Reporter, diagnosis: str):
        self.calls.append((config, diagnosis))
        (self.artifacts.path / "model.ncnn.param").write_text(label(config))
        (self.artifacts.path / "shape_1x4").mkdir()
        (self.artifacts.path / "shape_1x4" / "report.json").write_text("{}")
        error = self.ends(config)
        record = StageRecord(error.stage if error else "verify", status="failed" if error else "ok",
                             key=f"{error.stage if error else 'verify'}:{label(config)}")
        reporter.stages.append(record)
        ctx = SimpleNamespace(reporter=reporter, known_failures=self.failures, deferred_diagnosis=None)
        if isinstance(error, ParityError) and diagnosis == "later":
            def diagnose():
                self.diagnosed.append(len(self.calls))
                raise ParityError(error.message + " First divergence: here.", stage="verify")
            ctx.deferred_diagnosis = diagnose
        return ctx, error


def finish(ctx):
    try:
        ctx.deferred_diagnosis()
    except DeployError as exc:
        return exc


def attempts(tmp_path, config: Config, ends):
    artifacts = ArtifactDir(tmp_path / "staged")
    artifacts.path.mkdir(parents=True)
    stand_in = StandIn(artifacts, ends)
    shown = io.StringIO()
    reporter = Reporter(Console(file=shown, width=200))
    outcome = run_attempts(config, stand_in, finish, artifacts, StageCache([], enabled=True), reporter,
                           quiet=lambda: Reporter(Console(quiet=True)))
    return outcome, stand_in, artifacts.path, shown.getvalue()


def fails_at(stage, kind=StageError):
    return lambda config: kind(f"it failed at {stage}", stage=stage)


def test_a_run_that_verifies_is_tried_once(tmp_path):
    outcome, stand_in, top, shown = attempts(tmp_path, make_config(), lambda config: None)
    assert len(stand_in.calls) == 1 and outcome.top.name == AS_CONFIGURED and outcome.top.status == "verified"
    assert [a.name for a in outcome.attempts] == [AS_CONFIGURED] and outcome.shipped_variation is None
    assert not (top / "attempts").exists() and shown == ""


def test_the_first_variation_that_verifies_ships_and_none_after_it_runs(tmp_path):
    outcome, stand_in, top, shown = attempts(
        tmp_path, make_config(), lambda config: None if not config.simplify.enabled else fails_at("convert")(config))
    assert [label(c) for c, _ in stand_in.calls] == [
        "opset=13 exporter=torchscript simplify=True skip=[] passes=None source=onnx",
        "opset=13 exporter=torchscript simplify=True skip=['fuse_*'] passes=None source=onnx",  # no_fusions
        "opset=13 exporter=torchscript simplify=False skip=[] passes=None source=onnx"]  # no_simplify
    assert [d for _, d in stand_in.calls] == ["later", "off", "off"]  # a variation is not diagnosed
    assert outcome.shipped_variation is outcome.top and outcome.top.name == "no_simplify"
    # The shipped attempt's files are at the top, each other attempt's in attempts/<name>/, subfolders too.
    assert (top / "model.ncnn.param").read_text() == label(stand_in.calls[2][0])
    assert (top / "attempts" / AS_CONFIGURED / "model.ncnn.param").read_text() == label(stand_in.calls[0][0])
    assert (top / "attempts" / "no_fusions" / "model.ncnn.param").read_text() == label(stand_in.calls[1][0])
    assert (top / "attempts" / "no_fusions" / "shape_1x4" / "report.json").is_file()
    assert sorted(p.name for p in (top / "attempts").iterdir()) == [AS_CONFIGURED, "no_fusions"]
    assert [a.summary()["report"] for a in outcome.attempts] == [
        f"attempts/{AS_CONFIGURED}/report.json", "attempts/no_fusions/report.json", "report.json"]
    lines = shown.splitlines()
    assert "the run as configured failed at convert; trying 6 variation(s)" in lines[0]
    assert "FAILED  no_fusions: onnxsim with its fusions off; failed at convert: it failed at convert" in lines[1]
    assert "ok  no_simplify: without onnxsim; verified on ncnn" in lines[2]
    assert "warning shipping variation no_simplify (without onnxsim): the run as configured failed at convert " \
           "(it failed at convert). To get this model without the retries: --set simplify.enabled=false" in shown


def test_when_no_variation_verifies_the_run_as_configured_is_the_error_diagnosed_once_at_the_end(tmp_path):
    outcome, stand_in, top, shown = attempts(tmp_path, make_config(), fails_at("verify", ParityError))
    ran = [a for a in outcome.attempts[1:] if a.status != "skipped"]
    assert [a.name for a in outcome.attempts[1:]] == BUILT_IN
    assert {a.name for a in outcome.attempts[1:]} - {a.name for a in ran} <= {"other_exporter"}  # without onnxscript
    assert len(stand_in.calls) == 1 + len(ran) and all(a.status == "failed" for a in ran)
    assert stand_in.diagnosed == [len(stand_in.calls)]  # once, after the last variation
    top_attempt = outcome.top
    assert top_attempt.name == AS_CONFIGURED and outcome.shipped_variation is None
    assert top_attempt.error.message.startswith("it failed at verify First divergence: here. No variation verified "
                                                "either (no_fusions failed at verify; no_simplify failed at verify;")
    assert (top / "model.ncnn.param").read_text() == label(stand_in.calls[0][0])  # back at the top
    assert not (top / "attempts" / AS_CONFIGURED).exists()
    for attempt in ran:
        assert (top / "attempts" / attempt.name / "model.ncnn.param").read_text() == label(attempt.config)
    assert outcome.top.summary()["report"] == "report.json"


def test_only_failures_a_variation_can_change_are_retried(tmp_path):
    retried = {"simplify": StageError, "convert": StageError, "verify": ParityError}
    for stage, kind in retried.items():
        _, stand_in, _, _ = attempts(tmp_path / stage, make_config(), fails_at(stage, kind))
        assert len(stand_in.calls) > 1, stage
    kept = [("export", StageError), ("pass:id_mask_lookup", ParityError), ("convert", ConfigError),
            ("verify", MachineError)]
    for stage, kind in kept:
        folder = tmp_path / f"kept-{stage}-{kind.__name__}"
        outcome, stand_in, top, shown = attempts(folder, make_config(), fails_at(stage, kind))
        assert len(stand_in.calls) == 1 and not (top / "attempts").exists() and shown == "", (stage, kind)
    bug = StageError("unexpected KeyError: 'x'", stage="convert")
    bug.traceback = "Traceback ..."
    _, stand_in, _, _ = attempts(tmp_path / "bug", make_config(), lambda config: bug)
    assert len(stand_in.calls) == 1


def test_variations_off_is_one_attempt_diagnosed_at_once(tmp_path):
    outcome, stand_in, top, shown = attempts(tmp_path, make_config(variations=[]), fails_at("verify", ParityError))
    assert [d for _, d in stand_in.calls] == ["now"] and outcome.top.error.message == "it failed at verify"
    assert shown == "" and not (top / "attempts").exists()


def test_a_config_lists_its_own_variations_in_its_order(tmp_path):
    config = make_config(variations=[{"name": "opset_16", "set": {"export": {"opset": 16}}}, "torchscript"])
    outcome, stand_in, _, shown = attempts(tmp_path, config, fails_at("convert"))
    assert [label(c) for c, _ in stand_in.calls[1:]] == [
        "opset=16 exporter=torchscript simplify=True skip=[] passes=None source=onnx",
        "opset=13 exporter=torchscript simplify=True skip=[] passes=None source=torchscript"]
    assert all(c.variations == [] for c, _ in stand_in.calls[1:])  # a variation does not retry further
    assert outcome.attempts[1].summary()["set"] == ["export.opset=16"]
    assert "opset_16: your variation: export.opset=16; failed at convert" in shown
    with_auto = make_config(variations=["torchscript", "auto"])
    outcome, _, _, _ = attempts(tmp_path / "auto", with_auto, fails_at("convert"))
    assert [a.name for a in outcome.attempts] == [AS_CONFIGURED, "torchscript", *BUILT_IN[:-1]]


@pytest.mark.parametrize("entry, said", [
    ("opset_18", "variations[0] ('opset_18'): no built-in variation has that name"),
    ({"name": "bare", "set": {"passes": []}}, "variations[0] ('bare'): that is a built-in variation"),
    ({"name": "mine", "set": {"export": {"opset": 99}}}, "variations[0] ('mine'): its `set:` makes an invalid config: "
                                                          "export.opset"),
    ({"name": "mine", "set": {"exprot": {"opset": 17}}}, "exprot"),
    ({"name": AS_CONFIGURED, "set": {"export": {"opset": 17}}}, "is the name of the run as configured"),
])
def test_a_wrong_variation_is_a_config_error_naming_it(tmp_path, entry, said):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"model": {"factory": "m:f"}, "inputs": [{"name": "x", "shape": [1]}],
                                "variations": [entry, "no_simplify"]}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert said in raised.value.message


def test_a_variation_listed_twice_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('model: {factory: "m:f"}\ninputs: [{name: x, shape: [1]}]\nvariations: [bare, bare]\n')
    with pytest.raises(ConfigError, match=r"variations\[1\] \('bare'\): a variation of that name is listed already"):
        load_config(path)


def test_built_in_variations_that_do_not_apply_are_skipped_with_the_reason(tmp_path):
    onnx_file = make_config(model={"onnx": str(tmp_path / "m.onnx")})
    outcome, stand_in, _, shown = attempts(tmp_path / "onnx", onnx_file, fails_at("convert"))
    why = {a.name: a.skipped_because for a in outcome.attempts if a.status == "skipped"}
    assert why == {"opset_17": "the model is an ONNX file, exported already",
                   "other_exporter": "the model is an ONNX file, exported already",
                   "torchscript": "the model is an ONNX file, with no PyTorch model to trace"}
    assert "skipped  opset_17: exported at opset 17, the newest pnnx reads right; the model is an ONNX file" in shown
    legacy = make_config(converter={"name": "onnx2ncnn"}, simplify={"enabled": False}, export={"opset": 17})
    outcome, _, _, _ = attempts(tmp_path / "legacy", legacy, fails_at("convert"))
    why = {a.name: a.skipped_because for a in outcome.attempts if a.status == "skipped"}
    assert why == {"no_fusions": "onnxsim does not run", "no_simplify": "onnxsim does not run",
                   "opset_17": "the export is at opset 17 already", "torchscript": "onnx2ncnn reads ONNX only"}
    bare_already = make_config(simplify={"enabled": False}, passes=[])
    outcome, _, _, _ = attempts(tmp_path / "bare", bare_already, fails_at("convert"))
    assert {a.name: a.skipped_because for a in outcome.attempts}["bare"] == f"it is the config of {AS_CONFIGURED}"


def test_the_other_exporter_is_not_tried_again_after_the_export_fell_back_to_it(tmp_path):
    def ends(config):  # the export stage falls back to dynamo on its own, as on an operator torchscript lacks
        return StageError("wrong", stage="verify")

    artifacts = ArtifactDir(tmp_path / "staged")
    artifacts.path.mkdir()
    stand_in = StandIn(artifacts, ends)

    def with_export_record(config, reporter, diagnosis):
        reporter.stages.append(StageRecord("export", status="ok", result=ExportResult(exporter="dynamo", opset=18)))
        return stand_in(config, reporter, diagnosis)

    outcome = run_attempts(make_config(), with_export_record, finish, artifacts, None, Reporter(Console(quiet=True)),
                           quiet=lambda: Reporter(Console(quiet=True)))
    why = {a.name: a.skipped_because for a in outcome.attempts if a.status == "skipped"}
    assert why == {"other_exporter": "the export fell back to the dynamo exporter already"}


def test_a_signal_during_a_variation_ends_the_attempts(tmp_path):
    stopped = StoppedError(Interrupted(2), stage="convert")
    ends = iter([StageError("no", stage="convert"), StageError("no", stage="convert"), stopped])
    outcome, stand_in, top, _ = attempts(tmp_path, make_config(), lambda config: next(ends))
    assert len(stand_in.calls) == 3 and outcome.top.name == AS_CONFIGURED and outcome.top.error is stopped
    assert (top / "model.ncnn.param").read_text() == label(stand_in.calls[0][0])


def test_a_stage_an_earlier_attempt_failed_with_the_same_key_fails_the_same_way_at_once():
    from deploykit.stages.context import RunContext

    earlier = ParityError("outputs differ", stage="verify", hint="look")
    ctx = RunContext(config=make_config(), config_path=Path("c.yaml"), artifacts=ArtifactDir(Path("unused")),
                     inputs={}, reporter=Reporter(Console(quiet=True)), known_failures={"k": ("no_fusions", earlier)})
    ctx.record = StageRecord("verify")
    with pytest.raises(RepeatedFailure) as raised:
        ctx.reuse("k")
    assert raised.value.message == "given the same input as in attempt no_fusions, which failed here: outputs differ"
    assert raised.value.stage == "verify" and raised.value.exit_code == earlier.exit_code
    assert raised.value.hint == "look"
    ctx.record = StageRecord("verify")
    assert ctx.reuse("other") is None


def test_the_stage_cache_lends_the_files_of_an_earlier_runs_attempts(tmp_path):
    from deploykit.core.artifacts import sha256

    previous = tmp_path / "out"
    kept = previous / "attempts" / "no_fusions"
    kept.mkdir(parents=True)
    (kept / "01_simplify.onnx").write_bytes(b"graph")
    record = {"name": "simplify", "status": "ok", "key": "k", "outputs_sha256": {"01_simplify.onnx":
                                                                                 sha256(kept / "01_simplify.onnx")}}
    (kept / "report.json").write_text(json.dumps({"stages": [record]}))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "report.json").write_text(json.dumps({"stages": [{**record, "key": "k2"}]}))
    (previous / "report.json").write_text(json.dumps({"stages": [], "attempts": [
        {"name": "no_fusions", "report": "attempts/no_fusions/report.json"},
        {"name": "sneaky", "report": "../elsewhere/report.json"}]}))
    cache = StageCache([previous], enabled=True)
    found = cache.lookup("simplify", "k")
    assert found is not None and found[1] == kept
    assert cache.lookup("simplify", "k2") is None  # a report outside the folder's attempts is not read
    forced = StageCache([previous], enabled=False)  # --force: nothing of an earlier run ...
    assert forced.lookup("simplify", "k") is None
    forced.remember(kept, [record])  # ... but what an earlier attempt of this run made
    assert forced.lookup("simplify", "k") == (record, kept)


# --- through the real pnnx and ncnn ----------------------------------------------------------

RMS_NORM = 'model: {factory: "models_for_tests:build_rms_norm_linear"}\ninputs: [{name: x, shape: [1, 8, 16]}]\n'


# The pass reduce_axes_input fixes what pnnx does to this ReduceMean; without it, only a variation does.
WITHOUT_THE_PASS = "passes: [auto, {name: reduce_axes_input, enabled: false}]\n"


@pytest.mark.slow
def test_the_reduction_pnnx_misreads_at_opset_18_verifies_as_configured_with_the_passes(tmp_path, capsys):
    code, err, report = run_yaml(capsys, tmp_path, RMS_NORM + "export: {opset: 18}\n")
    assert code == 0 and report["variation"] is None and report["config"]["export"]["opset"] == 18
    assert next(s for s in report["stages"] if s["name"] == "pass:reduce_axes_input")["status"] == "ok"


@pytest.mark.slow
def test_an_opset_pnnx_misreads_is_retried_at_opset_17_which_ships(tmp_path, capsys):
    from deploykit.cli import main

    code, err, report = run_yaml(capsys, tmp_path, RMS_NORM + "export: {opset: 18}\n" + WITHOUT_THE_PASS)
    out = tmp_path / "out"
    assert code == 0 and report["status"] == "verified"
    assert report["variation"]["name"] == "opset_17" and report["config"]["export"]["opset"] == 17
    assert [(a["name"], a["status"], a.get("stage")) for a in report["attempts"]] == [
        (AS_CONFIGURED, "failed", "verify"), ("no_fusions", "failed", "verify"), ("no_simplify", "failed", "verify"),
        ("opset_17", "verified", None)]
    # At opset 18 pnnx writes the ReduceMean without its axes: ncnn's numbers differ. Onnxsim changes
    # nothing ncnn gets, so the two variations without it fail at once, on the same .param/.bin.
    assert "max abs error" in report["attempts"][0]["error"]
    assert report["attempts"][1]["error"].startswith(f"given the same input as in attempt {AS_CONFIGURED}")
    assert "warning shipping variation opset_17" in err and "--set export.opset=17" in err
    assert "verified on ncnn" in err
    first = json.loads((out / "attempts" / AS_CONFIGURED / "report.json").read_text())
    assert first["status"] == "failed" and first["config"]["export"]["opset"] == 18
    assert "divergence" not in next(s for s in first["stages"] if s["name"] == "verify")  # not diagnosed
    assert (out / "deploykit.json").is_file() and not (out / "attempts" / "opset_17").exists()
    assert main(["verify", str(out)]) == 0  # the shipped model against its own goldens
    # The export of the run as configured is lent to the variations that do not change it.
    no_simplify = json.loads((out / "attempts" / "no_simplify" / "report.json").read_text())
    assert next(s for s in no_simplify["stages"] if s["name"] == "export")["cached"] is True
    # A re-run with nothing changed: the shipped attempt's stages all come from the last run.
    capsys.readouterr()
    code, err, again = run_yaml(capsys, tmp_path, RMS_NORM + "export: {opset: 18}\n" + WITHOUT_THE_PASS)
    assert code == 0 and again["variation"]["name"] == "opset_17"
    assert all(s["cached"] for s in again["stages"] if s["name"] != "check"), again["stages"]


@pytest.mark.slow
def test_an_op_only_pnnxs_torchscript_front_end_maps_ships_from_a_trace(tmp_path, capsys):
    code, err, report = run_yaml(capsys, tmp_path, 'model: {factory: "models_for_tests:build_running_sum"}\n'
                                                   "inputs: [{name: x, shape: [1, 8, 16]}]\n")
    out = tmp_path / "out"
    assert code == 0 and report["variation"]["name"] == "torchscript"
    assert report["config"]["converter"]["source"] == "torchscript" and report["passes"] == []
    assert [s["name"] for s in report["stages"]] == ["export", "trace", "convert", "verify"]
    trace = report["stages"][1]
    assert trace["artifact"] == "01_trace.pt" and trace["parity"]["against"] == "the export"
    assert report["ncnn"]["parity"]["max_abs"] < 1e-5
    layers = [line.split()[0] for line in (out / "model.ncnn.param").read_text().splitlines()[2:]]
    assert "CumulativeSum" in layers
    # Every ONNX variation leaves CumSum, which ncnn has no layer for.
    failed = [a for a in report["attempts"] if a["status"] == "failed"]
    assert failed and all(a["stage"] == "convert" and "CumSum" in a["error"] for a in failed)
    assert report["error"] is None and "No variation verified" not in report["attempts"][0]["error"]


@pytest.mark.slow
def test_converter_source_torchscript_is_a_route_of_its_own(tmp_path, capsys):
    code, err, report = run_yaml(capsys, tmp_path, 'model: {factory: "models_for_tests:build_running_sum"}\n'
                                                   "inputs: [{name: x, shape: [1, 8, 16]}]\n"
                                                   "converter: {source: torchscript}\n")
    assert code == 0 and report["variation"] is None and [a["name"] for a in report["attempts"]] == [AS_CONFIGURED]
    assert "simplify and passes skipped: pnnx reads a TorchScript trace" in err
    with pytest.raises(ConfigError, match="onnx2ncnn reads ONNX only"):
        load_config(tmp_path / "config.yaml", ["converter.name=onnx2ncnn"])


def test_the_readme_example_lists_variations_in_its_order(tmp_path):
    from conftest import REPO
    from deploykit.variations import planned

    section = (REPO / "README.md").read_text().split("### When the run as configured fails: variations", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "mine.yaml"
    path.write_text(example.replace("_base_: mobile.yaml", f"_base_: {REPO / 'configs' / 'mobile.yaml'}"))
    config, _ = load_config(path)
    assert [v.name for v in planned(config)] == ["no_simplify", "opset_16", "torchscript"]
    assert config.varied(config.variations[1].set).export.opset == 16
    table = section.split("| variation |", 1)[1].split("\n\n", 1)[0]
    assert [row.split("`")[1] for row in table.splitlines()[2:]] == BUILT_IN  # the README's table is the list


def test_a_built_in_variation_that_makes_an_invalid_config_is_skipped_with_the_reason(tmp_path, monkeypatch):
    from deploykit import variations

    opset_99 = variations.Variation("opset_99", "exported at opset 99",
                                    lambda config, tried: ({"export": {"opset": 99}}, ""))
    monkeypatch.setattr(variations, "BUILTIN", (opset_99,))
    outcome, stand_in, _, shown = attempts(tmp_path, make_config(), fails_at("convert"))
    assert len(stand_in.calls) == 1 and outcome.attempts[1].status == "skipped"
    assert outcome.attempts[1].skipped_because.startswith("it makes an invalid config: export.opset:")
