import hashlib
import sys
from pathlib import Path

import onnx
import onnxsim
import pytest

from deploykit.core.config import load_config
from deploykit.core.errors import ConfigError, StageError
from deploykit.onnx.onnx_io import nonstandard_nodes
from deploykit.pipeline import run
from deploykit.stages import export as export_stage
from deploykit.stages import simplify as simplify_stage

CONFIG = """
model: {factory: "models_for_tests:build_plain_attention"}
inputs: [{name: x, shape: [1, 4, 8]}]
export: {output_names: [y]}
"""


def config(tmp_path, *overrides):
    path = tmp_path / "attention.yaml"
    path.write_text(CONFIG)
    return load_config(path, [f"output={tmp_path / 'out'}", *overrides])


@pytest.mark.slow
def test_onnxsim_would_emit_com_microsoft_attention_for_this_model(tmp_path):
    # The hazard the simplify stage guards against, shown on the same model.
    with pytest.raises(StageError):  # stops at convert or later; the export is what we need
        run(*config(tmp_path, "simplify.enabled=false", "converter.path=/bin/false"))
    exported = onnx.load(str(tmp_path / "out" / "00_export.onnx"))
    fused, _ = onnxsim.simplify(exported)
    assert [(n.domain, n.op_type) for n in nonstandard_nodes(fused)] == [("com.microsoft", "Attention")]


@pytest.mark.slow
def test_simplify_leaves_only_standard_ops_and_the_model_verifies_on_ncnn(tmp_path):
    code, report = run(*config(tmp_path))
    assert code == 0 and report["status"] == "verified"
    simplified = onnx.load(str(tmp_path / "out" / "01_simplify.onnx"))
    assert nonstandard_nodes(simplified) == []
    stage = report["stages"][1]
    assert stage["name"] == "simplify" and {"fuse_attention", "fuse_gqa"} <= set(stage["skipped_optimizers"])
    assert "com.microsoft" not in stage["graph"]["opset"]


@pytest.mark.slow
def test_a_fusion_into_a_non_standard_domain_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(simplify_stage, "ALWAYS_SKIPPED", ())
    with pytest.raises(StageError) as caught:  # the run as configured (a variation without the fusions verifies)
        run(*config(tmp_path, "variations=[]"))
    message = str(caught.value)
    assert message.startswith("[simplify] onnxsim fused parts of the graph into ops of a non-standard domain")
    assert "com.microsoft::Attention" in message and "simplify.skip_optimizers" in message
    assert not (tmp_path / "out" / "01_simplify.onnx").exists()


@pytest.mark.slow
def test_a_misspelt_optimizer_name_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="onnxsim has no optimizer named 'fuse_atention'"):
        run(*config(tmp_path, "simplify.skip_optimizers=[fuse_atention]"))
    with pytest.raises(ConfigError, match="onnxsim has no optimizer named 'fuse_atention_\\*'"):
        run(*config(tmp_path, "simplify.skip_optimizers=[fuse_atention_*]"))


@pytest.mark.slow
def test_a_pattern_skips_every_optimizer_it_matches(tmp_path):
    path = tmp_path / "conv.yaml"
    path.write_text('model: {factory: "models_for_tests:build_conv_plus_bias"}\ninputs: [{name: x, shape: [1, 3, 8, 8]}]\n')
    for skipped, ops in (("[]", ["Conv"]), ("[fuse_*]", ["Conv", "Add"])):  # fuse_add_bias_into_conv, or not
        out = tmp_path / f"out{len(ops)}"
        code, report = run(*load_config(path, [f"output={out}", f"simplify.skip_optimizers={skipped}"]))
        assert code == 0 and [n.op_type for n in onnx.load(str(out / "01_simplify.onnx")).graph.node] == ops


def test_simplify_can_be_switched_off(tmp_path):
    code, report = run(*config(tmp_path, "simplify.enabled=false", "passes=[]"))
    assert code == 0
    assert report["stages"][1]["status"] == "skipped"
    assert not (tmp_path / "out" / "01_simplify.onnx").exists()


VIT = """
model: {factory: "zoo:build_vit_block", kwargs: {seed: 0, dim: 32, image: 32, focus: false, fused_qkv: false}}
inputs: [{name: image, shape: [1, 3, 32, 32]}]
export: {output_names: [logits]}
"""


@pytest.mark.slow
def test_for_pnnx_onnxsim_leaves_attention_for_pnnx_to_fuse(tmp_path, monkeypatch):
    # fuse_qkv and the batched Gemm fusion hide q/k/v from pnnx; without them it writes ncnn's
    # MultiHeadAttention layer (scripts/README.md measured the other form 1.09x slower).
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "scripts"))
    path = tmp_path / "vit.yaml"
    path.write_text(VIT)
    code, report = run(*load_config(path, [f"output={tmp_path / 'out'}"]))
    assert code == 0 and report["status"] == "verified"
    layers = [line.split()[0] for line in (tmp_path / "out" / "model.ncnn.param").read_text().splitlines()[2:]]
    assert layers.count("MultiHeadAttention") == 1
    simplify = next(stage for stage in report["stages"] if stage["name"] == "simplify")
    assert {"fuse_qkv", "fuse_matmul_add_bias_into_gemm_batched"} <= set(simplify["skipped_optimizers"])


@pytest.mark.slow
def test_for_pnnx_onnxsim_leaves_gelu_whole(tmp_path):
    # fuse_preceding_mul_into_conv would fold GELU's `* 0.5` into the next Conv, and pnnx would
    # then write Div/Erf/Add/Mul instead of one GELU layer.
    path = tmp_path / "gelu.yaml"
    path.write_text('model: {factory: "models_for_tests:build_conv_gelu_conv"}\n'
                    "inputs: [{name: x, shape: [1, 4, 10]}]\nexport: {output_names: [y]}\n")
    code, report = run(*load_config(path, [f"output={tmp_path / 'out'}"]))
    assert code == 0 and report["ncnn"]["parity"]["max_abs"] < 1e-5
    layers = [line.split()[0] for line in (tmp_path / "out" / "model.ncnn.param").read_text().splitlines()[2:]]
    assert layers.count("GELU") == 1 and "Erf" not in layers


CRASHING_CHILD = [sys.executable, "-c",
                  "import os, signal; print('reading the model', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"]


def test_a_crash_of_onnxsim_ends_as_an_error_naming_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(simplify_stage, "CHILD", CRASHING_CHILD)
    with pytest.raises(StageError) as caught:  # the run as configured (a variation without onnxsim verifies)
        run(*config(tmp_path, "variations=[]"))
    message = str(caught.value)
    assert message.startswith("[simplify] onnxsim crashed (SIGSEGV) on 00_export.onnx: reading the model"), message
    assert "simplify.enabled: false" in message
    out = tmp_path / "out"
    assert (out / "00_export.onnx").is_file() and not (out / "01_simplify.onnx").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".deploykit"]  # the folder's marker


def test_a_run_that_stops_before_simplify_ends_onnxsim_and_removes_its_file(tmp_path, monkeypatch):
    started = []

    class Recorded(simplify_stage.Simplifier):
        def __init__(self, artifacts):
            super().__init__(artifacts)
            started.append(self)

    def refuse(*args, **kwargs):
        assert started and started[0].source is not None  # onnxsim already had the export
        raise StageError("onnxruntime refused the export", stage="export")

    monkeypatch.setattr(simplify_stage, "Simplifier", Recorded)
    monkeypatch.setattr(export_stage, "run_onnx", refuse)
    with pytest.raises(StageError, match="onnxruntime refused the export"):
        run(*config(tmp_path))
    assert started[0]._process.poll() is not None
    assert not started[0]._scratch.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".deploykit", "00_export.onnx", "report.html",
                                                                     "report.json"]


@pytest.mark.slow
def test_onnxsim_gets_the_export_as_soon_as_it_is_written_and_the_result_matches_onnxsim_in_process(tmp_path):
    code, report = run(*config(tmp_path))
    assert code == 0
    out = tmp_path / "out"
    skipped = report["stages"][1]["skipped_optimizers"]
    expected, _ = onnxsim.simplify(onnx.load(str(out / "00_export.onnx")), skipped_optimizers=skipped)
    assert (out / "01_simplify.onnx").read_bytes() == expected.SerializeToString()
    assert report["stages"][1]["outputs_sha256"]["01_simplify.onnx"] == hashlib.sha256(
        (out / "01_simplify.onnx").read_bytes()).hexdigest()


def test_onnxsim_that_cannot_be_started_is_a_stage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(simplify_stage, "CHILD", [str(tmp_path / "no-python-here")])
    with pytest.raises(StageError, match=r"^\[simplify\] onnxsim's process could not be started .*no-python-here"):
        run(*config(tmp_path))
