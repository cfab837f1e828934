"""The legacy onnx2ncnn converter: reading its output, running it, and every way running it fails.

The messages below are the ones tools/onnx/onnx2ncnn.cpp (Tencent/ncnn, and the build MMDeploy
ships) prints to stderr; the binaries are small fake scripts written into tmp_path. The pipeline
tests at the end run the real onnx2ncnn (skipped without it; in CI a missing binary fails).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from deploykit.core.errors import ConfigError, StageError
from deploykit.ncnn.converters.onnx2ncnn import (MESSAGE_FAMILIES, Onnx2NcnnConverter, classify, find_problems,
                                                 problem_hints)

REPO = Path(__file__).resolve().parent.parent
PARAM = "7767517\n2 2\nInput            ids                      0 1 ids\nReLU             relu0                    1 1 ids hidden\n"

# ---------------------------------------------------------------------------------------------
# find_problems on output in the form onnx2ncnn prints it

FAMILY_CASES = [
    ("unsupported_op", "Gather not supported yet!\n  # axis=0\n", ["Gather not supported yet! (axis=0)"]),
    ("unsupported_op", "NonZero not supported yet!\n", ["NonZero not supported yet!"]),
    ("unsupported_axis", "Unsupported reduction axes !\n", ["Unsupported reduction axes !"]),
    ("unsupported_axis", "Unsupported slice axes !\n", ["Unsupported slice axes !"]),
    ("unsupported_axis", "Unsupported split axis !\n", ["Unsupported split axis !"]),
    ("unsupported_axis", "Unsupported squeeze axes !\n", ["Unsupported squeeze axes !"]),
    ("unsupported_axis", "Unsupported unsqueeze axes !: 0, Unsqueeze_7\n", ["Unsupported unsqueeze axes !: 0, Unsqueeze_7"]),
    ("unsupported_gather_axis", "Unsupported Gather axis: 0\n", ["Unsupported Gather axis: 0"]),
    # printed without a newline, so the next message runs into it
    ("unsupported_gather_indices", "Unsupported indice dims > 1Unsupported Gather axis: 0\n",
     ["Unsupported indice dims > 1", "Unsupported Gather axis: 0"]),
    ("unsupported_slice_step", "Unsupported slice step !\n", ["Unsupported slice step !"]),
    ("unsupported_slice_step", "Unsupported slice step ! Use custom TensorSlice\n",
     ["Unsupported slice step ! Use custom TensorSlice"]),
    ("unsupported_resize", "Unsupported Resize scales and sizes are all empty!\n",
     ["Unsupported Resize scales and sizes are all empty!"]),
    ("unsupported_resize", "Unsupported Resize scales !\n", ["Unsupported Resize scales !"]),
    ("unsupported_resize", "Unsupported Upsample mode !\n", ["Unsupported Upsample mode !"]),
    ("unsupported_resize", "Unsupported Upsample scales !\n", ["Unsupported Upsample scales !"]),
    ("unsupported_layout", "Unsupported transpose type !\n", ["Unsupported transpose type !"]),
    ("unsupported_layout", "Unsupported Flatten axis 2!\n", ["Unsupported Flatten axis 2!"]),
    ("unsupported_layout", "Unsupported DepthToSpace mode DCR!\n", ["Unsupported DepthToSpace mode DCR!"]),
    ("dynamic_shape", "Unsupported reshape weight ! \n", ["Unsupported reshape weight !"]),
    ("dynamic_shape", "Unsupported type Gather in query_shape !\n", ["Unsupported type Gather in query_shape !"]),
    ("dynamic_shape", "Not support axes=1 !\n", ["Not support axes=1 !"]),
    ("dynamic_shape", "cannot find onnx::Shape_12 from graph !\n", ["cannot find onnx::Shape_12 from graph !"]),
    ("unknown_dtype", "Unknown data type 1\n", ["Unknown data type 1"]),
    ("usage", "Usage: /opt/ncnn/bin/onnx2ncnn [onnxpb] [ncnnparam] [ncnnbin]\n",
     ["Usage: /opt/ncnn/bin/onnx2ncnn [onnxpb] [ncnnparam] [ncnnbin]"]),
    ("open_failed", "open failed /tmp/x/model.onnx\nread_proto_from_binary failed\n",
     ["open failed /tmp/x/model.onnx", "read_proto_from_binary failed"]),
    ("unreadable_model",
     "[libprotobuf ERROR google/protobuf/message_lite.cc:133] Can't parse message of type \"onnx.ModelProto\" "
     "because it is missing required fields: graph\nread_proto_from_binary failed\n",
     ["[libprotobuf ERROR google/protobuf/message_lite.cc:133] Can't parse message of type \"onnx.ModelProto\" "
      "because it is missing required fields: graph", "read_proto_from_binary failed"]),
    ("broken_graph", "cannot find node produces onnx::Mul_5 but node 3 requires it\n",
     ["cannot find node produces onnx::Mul_5 but node 3 requires it"]),
    ("unsupported_other", "Unsupported Pad mode wrap!\n", ["Unsupported Pad mode wrap!"]),
]


@pytest.mark.parametrize("family,text,expected", FAMILY_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(FAMILY_CASES)])
def test_find_problems_recognises_each_message_family(family, text, expected):
    assert find_problems(text) == expected
    assert classify(expected[0].removesuffix(" (axis=0)")).name == family


def test_every_family_has_a_case_and_a_hint():
    assert {f.name for f in MESSAGE_FAMILIES} == {case[0] for case in FAMILY_CASES}
    assert all(len(f.hint) > 20 for f in MESSAGE_FAMILIES)


def test_clean_and_harmless_output_gives_no_problems():
    harmless = ("\n\n[libprotobuf WARNING google/protobuf/io/coded_stream.cc:604] Reading dangerously large "
                "protocol message.  If the message turns out to be larger than 2147483647 bytes, parsing will be "
                "halted for security reasons.\n  # axis=0\nonnx2ncnn finish\n"
                "Supported: Gather is now Embed\n")
    assert find_problems("") == []
    assert find_problems(harmless) == []
    assert problem_hints(harmless) == []
    assert classify("onnx2ncnn finish") is None
    assert classify("  # axis=0") is None


def test_repeated_problems_are_counted_and_order_is_kept():
    text = ("Gather not supported yet!\n  # axis=0\nUnsupported slice step !\n"
            "Gather not supported yet!\n  # axis=0\nGather not supported yet!\n  # axis=1\n")
    assert find_problems(text) == ["Gather not supported yet! (axis=0) [x2]", "Unsupported slice step !",
                                   "Gather not supported yet! (axis=1)"]
    hints = problem_hints(text)
    assert [h.split(":")[0] for h in hints] == ["unsupported_op", "unsupported_slice_step"]
    assert "converter.name: pnnx" in hints[0]


def test_attribute_lines_fold_into_the_unsupported_op_only():
    text = "Unsupported slice step !\n  # steps=2\nErf not supported yet!\n  # approximate=none\n  # x 7\n"
    assert find_problems(text) == ["Unsupported slice step !", "Erf not supported yet! (approximate=none, x 7)"]


# ---------------------------------------------------------------------------------------------
# Running fake binaries


def fake_tool(folder: Path, body: str, name: str = "onnx2ncnn", mode: int = 0o755) -> Path:
    """An executable /bin/sh script; called as `onnx2ncnn model.onnx out.param out.bin`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(mode)
    return path


PARAM_ESCAPED = PARAM.replace("\n", "\\n")
SUCCESS = ("printf '%s\\n' \"$@\" > argv.txt\n"
           f"printf '{PARAM_ESCAPED}' > \"$2\"\n"
           "printf 'wxyz' > \"$3\"\n")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read by the fake tools")
    return path


@pytest.fixture(autouse=True)
def no_real_onnx2ncnn(monkeypatch, tmp_path):
    """Tests see only the fakes they make: no $ONNX2NCNN and no onnx2ncnn on PATH."""
    monkeypatch.delenv("ONNX2NCNN", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}{os.pathsep}/usr/bin{os.pathsep}/bin")
    assert shutil.which("onnx2ncnn") is None


def convert(converter: Onnx2NcnnConverter, model: Path, workdir: Path, *, timeout: float = 10.0,
            args: tuple[str, ...] = (), fp16: bool = False):
    workdir.mkdir(parents=True, exist_ok=True)
    return converter.convert(model, {"ids": np.zeros((1, 16), np.int64)}, ["hidden"], workdir,
                             fp16=fp16, args=list(args), timeout=timeout)


def test_success_keeps_onnx_names_and_batch_axis(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", SUCCESS)
    work = tmp_path / "work"
    result = convert(Onnx2NcnnConverter(exe), model, work)
    assert (work / "argv.txt").read_text().splitlines() == [str(model.resolve()), "model.ncnn.param",
                                                            "model.ncnn.bin"]
    assert result.param == work / "model.ncnn.param" and result.param.read_text() == PARAM
    assert result.bin.read_bytes() == b"wxyz"
    assert result.log == work / "convert.log" and result.log.read_text().startswith(f"$ {exe} ")
    assert [b.to_dict() for b in result.inputs] == [{"onnx_name": "ids", "blob": "ids", "batch_index": 0}]
    assert [b.to_dict() for b in result.outputs] == [{"onnx_name": "hidden", "blob": "hidden", "batch_index": 0}]
    assert result.problems == [] and result.messages == []


def test_fp16_is_reported_as_ignored(tmp_path, model):
    result = convert(Onnx2NcnnConverter(fake_tool(tmp_path / "bin", SUCCESS)), model, tmp_path / "w", fp16=True)
    assert result.messages == ["onnx2ncnn writes fp32 weights and has no fp16 option: converter.fp16 is ignored."]


def test_exit_0_after_refusing_gather_reports_the_problem(tmp_path, model):
    body = ("printf '7767517\\n3 3\\nInput ids 0 1 ids\\nGather Gather_3 1 1 ids emb\\nReLU r 1 1 emb hidden\\n' > \"$2\"\n"
            ": > \"$3\"\necho 'Gather not supported yet!' >&2\necho '  # axis=0' >&2\nexit 0\n")
    result = convert(Onnx2NcnnConverter(fake_tool(tmp_path / "bin", body)), model, tmp_path / "w")
    assert result.problems == ["Gather not supported yet! (axis=0)"]
    assert len(result.messages) == 1 and result.messages[0].startswith("unsupported_op: ")
    assert "Gather not supported yet!" in result.log.read_text()


def test_crash_is_a_stage_error(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", "echo 'Unknown data type 0' >&2\nkill -SEGV $$\n")
    with pytest.raises(StageError) as caught:
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w")
    error = caught.value
    assert error.stage == "convert"
    assert error.message.startswith("onnx2ncnn crashed (SIGSEGV)")
    assert "onnx2ncnn said: Unknown data type 0." in error.message
    assert "int64" in error.hint and "converter.name: pnnx" in error.hint


def test_hang_is_stopped_at_the_timeout(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", "exec sleep 30\n")
    start = time.monotonic()
    with pytest.raises(StageError) as caught:
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w", timeout=0.5)
    assert time.monotonic() - start < 5
    assert caught.value.message.startswith("onnx2ncnn did not finish within 0.5s and was stopped")
    assert "raise converter.timeout" in caught.value.hint and "converter.name: pnnx" in caught.value.hint


def test_nonzero_exit_names_the_tool_the_message_and_a_fix(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", "echo 'read_proto_from_binary failed' >&2\nexit 255\n")
    with pytest.raises(StageError) as caught:
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w")
    error = caught.value
    assert error.message == "onnx2ncnn failed with exit code 255: read_proto_from_binary failed"
    assert error.hint.startswith("check that onnx.load() reads the file without external data")
    assert error.hint.endswith("convert.log in the artifact folder.")  # run_tool's hint is kept after ours
    assert str(error).startswith("[convert] onnx2ncnn failed") and " Try: " in str(error)


def test_exit_0_without_files_is_a_stage_error(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", "echo 'Unsupported transpose type !' >&2\nexit 0\n")
    with pytest.raises(StageError) as caught:
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w")
    assert caught.value.message == (f"onnx2ncnn ({exe}) exited 0 without writing model.ncnn.param and "
                                    "model.ncnn.bin; it said: Unsupported transpose type !.")
    assert "convert.log" in caught.value.hint and "converter.name: pnnx" in caught.value.hint


def test_a_param_without_the_ncnn_magic_is_a_stage_error(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", "echo 'name: \"graph\"' > \"$2\"\n: > \"$3\"\n")
    with pytest.raises(StageError, match=r"not an ncnn \.param \(its first line is 'name: \"graph\"', not 7767517\)"):
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w")


def test_a_renamed_blob_is_a_stage_error(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", "printf '7767517\\n2 2\\nInput in0 0 1 in0\\nReLU r 1 1 in0 hidden\\n' > \"$2\"\n"
                                      ": > \"$3\"\n")
    with pytest.raises(StageError, match=r"^\[convert\] onnx2ncnn wrote no blob named 'ids' in model\.ncnn\.param"):
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w")


def test_missing_binary_is_a_config_error(tmp_path, model):
    missing = tmp_path / "nowhere" / "onnx2ncnn"
    with pytest.raises(ConfigError) as caught:
        convert(Onnx2NcnnConverter(missing), model, tmp_path / "w")
    assert caught.value.message == f"the onnx2ncnn binary named by converter.path does not exist: {missing}."
    assert caught.value.hint == "point converter.path at the onnx2ncnn executable."


def test_no_binary_anywhere_is_a_config_error(tmp_path, model):
    with pytest.raises(ConfigError) as caught:
        convert(Onnx2NcnnConverter(), model, tmp_path / "w")
    assert caught.value.message == "the onnx2ncnn binary was not found (looked at converter.path, $ONNX2NCNN, PATH)."
    assert "set converter.path" in caught.value.hint and "converter.name: pnnx" in caught.value.hint
    assert Onnx2NcnnConverter().version() == "not found"


def test_non_executable_file_is_a_config_error(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", SUCCESS, mode=0o644)
    with pytest.raises(ConfigError) as caught:
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w")
    assert caught.value.message == f"the onnx2ncnn binary named by converter.path is not executable: {exe}."
    assert caught.value.hint == f"chmod +x {exe}"


def test_converter_args_are_refused(tmp_path, model):
    exe = fake_tool(tmp_path / "bin", SUCCESS)
    with pytest.raises(ConfigError, match=r"^\[convert\] onnx2ncnn takes no options, but converter.args is \['--fp16'\]\. Try: remove"):
        convert(Onnx2NcnnConverter(exe), model, tmp_path / "w", args=("--fp16",))
    assert not (tmp_path / "w" / "argv.txt").exists()


def test_env_var_selects_the_binary_and_converter_path_wins(tmp_path, model, monkeypatch):
    from_env = fake_tool(tmp_path / "env", SUCCESS)
    monkeypatch.setenv("ONNX2NCNN", str(from_env))
    assert Onnx2NcnnConverter().executable() == from_env
    result = convert(Onnx2NcnnConverter(), model, tmp_path / "w1")
    assert result.problems == [] and (tmp_path / "w1" / "argv.txt").is_file()

    configured = fake_tool(tmp_path / "cfg", SUCCESS)
    assert Onnx2NcnnConverter(configured).executable() == configured
    monkeypatch.setenv("ONNX2NCNN", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"named by \$ONNX2NCNN does not exist"):
        Onnx2NcnnConverter().executable()


def test_path_is_searched_last(tmp_path, monkeypatch):
    on_path = fake_tool(tmp_path / "onpath", SUCCESS)
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}{os.environ['PATH']}")
    assert Onnx2NcnnConverter().executable() == on_path
    from_env = fake_tool(tmp_path / "env", SUCCESS)
    monkeypatch.setenv("ONNX2NCNN", str(from_env))
    assert Onnx2NcnnConverter().executable() == from_env


def test_version_never_runs_the_binary(tmp_path):
    marker = tmp_path / "was-run"
    exe = fake_tool(tmp_path / "bin", f"touch '{marker}'\n")
    assert Onnx2NcnnConverter(exe).version() == f"unknown ({exe})"
    assert not marker.exists()
    assert stat.S_IMODE(exe.stat().st_mode) == 0o755


# ---------------------------------------------------------------------------------------------
# The whole pipeline with the real onnx2ncnn (skipped without it; in CI a missing binary fails)


def run_config(name: str, out: Path, *overrides: str):
    from deploykit.core.config import load_config
    from deploykit.pipeline import run

    config, path = load_config(REPO / "configs" / name, [*overrides, f"output={out}"])
    return config, run(config, path)


@pytest.mark.slow
def test_mobile_onnx2ncnn_config_verifies_with_embed_layers_reading_the_ids(onnx2ncnn, tmp_path):
    import json

    from deploykit.ncnn.param import NcnnParam

    config, (code, report) = run_config("mobile_onnx2ncnn.yaml", tmp_path / "out")
    assert config.converter.name == "onnx2ncnn" and code == 0 and report["status"] == "verified"
    assert report["ncnn"]["parity"]["max_abs"] < 1e-5
    changed = [s["name"] for s in report["stages"] if s.get("changed")]
    assert {"pass:id_mask_lookup", "pass:embed_layer"} <= set(changed)
    assert [s["name"] for s in report["stages"]][-3:] == ["convert", "embed", "verify"]
    manifest = json.loads((tmp_path / "out" / "deploykit.json").read_text())
    assert (manifest["param"]["file"], manifest["bin"]["file"]) == ("model.embed.param", "model.embed.bin")
    param = NcnnParam.read(tmp_path / "out" / "model.embed.param")
    embeds = [(layer.bottoms, layer.params[:2]) for layer in param.layers if layer.kind == "Embed"]
    assert embeds == [(["ids_splitncnn_embed_0"], ["0=1", "1=1000"]), (["ids_splitncnn_embed_1"], ["0=64", "1=1000"])]
    assert [layer.kind for layer in param.layers[:4]] == ["Input", "Split", "Embed", "Embed"]
    # the converter's own files stay as it wrote them, so that a second run reuses every stage
    assert "Embed" not in {layer.kind for layer in NcnnParam.read(tmp_path / "out" / "model.ncnn.param").layers}
    _, (_, again) = run_config("mobile_onnx2ncnn.yaml", tmp_path / "out")
    assert [s["name"] for s in again["stages"] if not s["cached"]] == ["check"]  # the one stage never reused
    assert again["ncnn"]["parity"] == report["ncnn"]["parity"]
    assert [(i["blob"], i["dtype"]) for i in manifest["inputs"]] == [("ids", "int32")]
    assert manifest["host_lookups"] == [] and manifest["converter"] == "onnx2ncnn"
    # the attention output, which a layer also reads, has the Split that keeps it in light mode
    assert param.producer("attention").kind == "Split"


@pytest.mark.slow
@pytest.mark.parametrize("disabled, refused", [
    (["embed_layer", "embedding_gather"], "Gather not supported yet!"),  # the lookups
    (["id_mask_lookup"], "Equal not supported yet!"),  # the padding mask `ids == 0`
])
def test_without_its_passes_the_encoder_is_what_onnx2ncnn_refuses(onnx2ncnn, tmp_path, disabled, refused):
    off = ", ".join(f"{{name: {name}, enabled: false}}" for name in disabled)
    with pytest.raises(StageError) as caught:
        run_config("mobile_onnx2ncnn.yaml", tmp_path / "out", f"passes=[auto, {off}]")
    assert caught.value.stage == "convert" and refused in caught.value.message


@pytest.mark.slow
def test_positions_counted_from_the_padding_mask_verify_on_onnx2ncnn_for_any_padding(onnx2ncnn, tmp_path):
    """RoBERTa's positions, `cumsum(ids != pad) * mask + pad`: index_arithmetic counts the mask while
    its 0/1 table is still in the graph, then embed_layer takes that table and the tokens' out as
    Embed layers; the shipped model is right for paddings the conversion never saw."""
    import torch

    import deploykit
    from deploykit.ncnn.converters.base import Blob
    from deploykit.ncnn.runtime import run_ncnn

    class Positions(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.tokens, self.positions = torch.nn.Embedding(100, 8), torch.nn.Embedding(16, 8)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            mask = (ids != 1).int()
            return self.tokens(ids) + self.positions(torch.cumsum(mask, dim=1) * mask + 1)

    model = Positions().eval()
    ids = torch.tensor([[5, 7, 9, 11, 13, 15, 17, 19, 1, 1, 1, 1]])
    result = deploykit.convert(model, ids, converter={"name": "onnx2ncnn", "path": str(onnx2ncnn)},
                               output=str(tmp_path / "out"), quiet=True)
    assert result.verified and result.parity["max_abs"] < 1e-5
    changed = [s["name"] for s in result.report["stages"] if s.get("changed")]
    assert changed.index("pass:index_arithmetic") < changed.index("pass:embed_layer")
    assert result.param.name == "model.embed.param"
    for pads in ([], [11], [2, 5, 6], list(range(1, 12))):
        other = torch.tensor([[23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71]])
        other[0, pads] = 1
        with torch.no_grad():
            expected = model(other).numpy()
        blobs_in, blobs_out = ([Blob(**b) for b in result.report["ncnn"][k]] for k in ("inputs", "outputs"))
        got = run_ncnn(result.param, result.bin, [(blobs_in[0], other.numpy())], blobs_out)
        np.testing.assert_allclose(got[blobs_out[0].onnx_name], expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# What deploykit mends in onnx2ncnn's .param, on the real binary


def test_an_output_a_layer_also_reads_gets_a_split_and_both_outputs_can_be_extracted(onnx2ncnn, tmp_path):
    from deploykit.ncnn.param import NcnnParam
    from passkit import model_from_text, onnx2ncnn_outcome, rand

    # `a` is an output and the input of the layer computing `b`; ncnn extracts b first, then a
    model = model_from_text("g (float[1,3,4] x) => (float[1,3,4] b, float[1,3,4] a) { a = Relu(x)\n b = Exp(a) }")
    assert onnx2ncnn_outcome(model, {"x": rand(1, 3, 4)}, tmp_path) == "ok"
    param = NcnnParam.read(tmp_path / "model.ncnn.param")
    split = param.producer("a")
    assert split.kind == "Split" and split.tops == ["a", "a_splitncnn_read"]
    assert param.readers("a_splitncnn_read")[0].kind == "UnaryOp" and param.readers("a") == []


def test_a_layernorm_onnx2ncnn_writes_without_its_size_gets_it(onnx2ncnn, tmp_path):
    from deploykit.ncnn.param import NcnnParam
    from passkit import model_from_text, onnx2ncnn_outcome, rand

    # nn.LayerNorm(6) as initialised, on a [1,4,5,6] tensor, as torch exports it at opset 13
    model = model_from_text("""g (float[1,4,5,6] x) => (float[1,4,5,6] y) {
        m = ReduceMean<axes=[-1]>(x)\n d = Sub(x, m)\n p = Pow(d, two)\n v = ReduceMean<axes=[-1]>(p)
        e = Add(v, eps)\n s = Sqrt(e)\n n = Div(d, s)\n w = Mul(n, one)\n y = Add(w, zero)
    }""", {"two": np.array(2, np.float32), "eps": np.array(1e-5, np.float32), "one": np.ones(6, np.float32),
           "zero": np.zeros(6, np.float32)})
    assert onnx2ncnn_outcome(model, {"x": rand(1, 4, 5, 6)}, tmp_path) == "ok"
    [norm] = [layer for layer in NcnnParam.read(tmp_path / "model.ncnn.param").layers if layer.kind == "LayerNorm"]
    assert norm.param(0) == "6" and norm.param(2) == "0"  # onnx2ncnn dropped the identity affine and the size


def test_an_embed_whose_ids_a_later_pass_made_float_is_a_clear_embed_error(onnx2ncnn, tmp_path):
    import onnx

    from deploykit.core.config import load_config
    from deploykit.pipeline import run
    from passkit import model_from_text

    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    # the first lookup reads the ids directly (embed_layer), the second through a Reshape (the one-hot)
    model = model_from_text("""g (int64[1,6] ids) => (float[1,6,4] a, float[1,6,4] b) {
        e = Gather(t, ids)\n a = Relu(e)\n r = Reshape(ids, s)\n b = Gather(t, r)
    }""", {"t": table, "s": np.array([1, 6], np.int64)})
    onnx.save(model, str(tmp_path / "m.onnx"))
    (tmp_path / "c.yaml").write_text(f"model: {{onnx: {tmp_path / 'm.onnx'}}}\n"
                                     "inputs: [{name: ids, dtype: int64, shape: [1, 6], range: [0, 10]}]\n"
                                     "simplify: {enabled: false}  # keeps the Reshape onnxsim would drop\n"
                                     f"converter: {{name: onnx2ncnn}}\noutput: {tmp_path / 'out'}\n")
    with pytest.raises(StageError) as caught:
        run(*load_config(tmp_path / "c.yaml"))
    assert caught.value.stage == "embed" and "a later pass made it float" in caught.value.message
    assert "embedding_gather" in caught.value.hint


def test_a_linear_over_many_rows_is_written_as_gemm_with_the_same_weights(onnx2ncnn, tmp_path):
    from deploykit.ncnn.param import NcnnParam
    from passkit import model_from_text, onnx2ncnn_outcome, rand

    weight = rand(8, 5)
    model = model_from_text("g (float[1,6,8] x, float[1,8] v) => (float[1,6,5] y, float[1,5] u) "
                            "{ y = MatMul(x, w)\n u = MatMul(v, w) }", {"w": weight})
    assert onnx2ncnn_outcome(model, {"x": rand(1, 6, 8), "v": rand(1, 8)}, tmp_path) == "ok"
    kinds = {layer.tops[0]: (layer.kind, layer.params) for layer in NcnnParam.read(tmp_path / "model.ncnn.param").layers}
    assert kinds["y"] == ("Gemm", ["2=0", "3=1", "4=0", "5=1", "6=0", "7=0", "8=5", "9=8"])
    assert kinds["u"][0] == "InnerProduct"  # one row ([1,8] is a 1-D Mat): left as onnx2ncnn wrote it
