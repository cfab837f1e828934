"""The shipped encoder (configs/mobile.yaml) through `passes: auto` for each converter: the graph that
reaches the converter is one the pre-flight check calls clean, every pass kept onnxruntime's outputs,
and the real converter's model verifies on ncnn (onnx2ncnn: skipped without the binary, failed in CI
without it). What onnx2ncnn writes for the MatMuls left in that graph is run on the ncnn runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.core.config import load_config
from deploykit.ncnn.converters.base import Blob
from deploykit.ncnn.runtime import run_ncnn
from deploykit.pipeline import run
from deploykit.stages.simplify import SKIPPED_FOR_CONVERTER
from deploykit.tools.preflight import check_model
from passkit import assert_clean_for, rand

REPO = Path(__file__).resolve().parent.parent


def run_encoder(output: Path, *overrides: str, config_file: str = "mobile.yaml") -> dict:
    """Run a config in-process; returns report.json."""
    config, path = load_config(REPO / "configs" / config_file, [*overrides, f"output={output}"])
    run(config, path)
    return json.loads((output / "report.json").read_text())


def last_graph(report: dict, output: Path) -> onnx.ModelProto:
    """The graph the converter got: the last NN_*.onnx the run wrote."""
    return onnx.load(str(output / [name for name in report["artifacts"] if name.endswith(".onnx")][-1]))


def assert_every_pass_kept_the_outputs(report: dict) -> None:
    changed = [stage for stage in report["stages"] if stage["name"].startswith("pass:") and stage["status"] == "ok"]
    assert changed, "no pass changed the graph"
    for stage in changed:
        assert stage["parity"]["passed"], stage["name"]


@pytest.fixture(scope="module")
def onnx2ncnn_run(tmp_path_factory) -> tuple[dict, Path]:
    from conftest import need_onnx2ncnn

    output = tmp_path_factory.mktemp("onnx2ncnn") / "out"
    return run_encoder(output, "converter.name=onnx2ncnn", f"converter.path={need_onnx2ncnn()}"), output


@pytest.mark.slow
def test_after_auto_passes_onnx2ncnn_gets_a_graph_the_check_calls_clean_and_it_verifies(onnx2ncnn_run):
    report, output = onnx2ncnn_run
    assert report["status"] == "verified"
    assert report["preflight"]["before_passes"]  # the encoder needed the passes
    assert report["preflight"]["after_passes"] == []
    assert_clean_for(last_graph(report, output), "onnx2ncnn")
    assert_every_pass_kept_the_outputs(report)


@pytest.mark.slow
def test_onnxsim_keeps_linear_layers_as_matmul_for_onnx2ncnn(onnx2ncnn_run):
    report, output = onnx2ncnn_run
    simplify = next(stage for stage in report["stages"] if stage["name"] == "simplify")
    assert set(SKIPPED_FOR_CONVERTER["onnx2ncnn"]) <= set(simplify["skipped_optimizers"])
    assert "Gemm" not in {node.op_type for node in last_graph(report, output).graph.node}


@pytest.mark.slow
def test_with_the_lookups_on_the_host_onnx2ncnn_gets_float_rows_and_no_gather(tmp_path):
    # configs/mobile_on_host.yaml: `auto` runs embedding_gather for onnx2ncnn, and the entry after it
    # configures that run (on_host) instead of adding a second one; embed_layer is switched off.
    from conftest import need_onnx2ncnn

    report = run_encoder(tmp_path / "out", "converter.name=onnx2ncnn", f"converter.path={need_onnx2ncnn()}",
                         config_file="mobile_on_host.yaml")
    assert [s["name"] for s in report["stages"]].count("pass:embedding_gather") == 1
    assert "pass:embed_layer" not in [s["name"] for s in report["stages"]]
    assert report["status"] == "verified" and report["preflight"]["after_passes"] == []
    graph = last_graph(report, tmp_path / "out")
    assert_clean_for(graph, "onnx2ncnn")
    assert "Gather" not in {node.op_type for node in graph.graph.node}
    assert [(i.name, i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in graph.graph.input] == [("/Equal/id_mask_lookup/hit", onnx.TensorProto.FLOAT, [1, 16, 1]),
                                           ("/embedding/Gather_output_0", onnx.TensorProto.FLOAT, [1, 16, 64])]
    moved = next(stage for stage in report["stages"] if stage["name"] == "pass:embedding_gather")
    assert [(lookup["table"], lookup["table_shape"]) for lookup in moved["host_lookups"]] == [
        ("host_table_0.npy", [1000, 1]), ("host_table_1.npy", [1000, 64])]
    assert_every_pass_kept_the_outputs(report)


@pytest.mark.slow
def test_for_pnnx_the_same_encoder_ends_clean_and_verified(tmp_path):
    report = run_encoder(tmp_path)
    assert report["status"] == "verified"
    assert report["preflight"]["after_passes"] == []
    assert_clean_for(last_graph(report, tmp_path), "pnnx")
    assert_every_pass_kept_the_outputs(report)
    simplify = next(stage for stage in report["stages"] if stage["name"] == "simplify")
    assert set(SKIPPED_FOR_CONVERTER["pnnx"]) <= set(simplify["skipped_optimizers"])


# ---------------------------------------------------------------------------------------------
# The ncnn layers onnx2ncnn writes for a MatMul (tools/onnx/onnx2ncnn.cpp, the version MMDeploy
# carries: InnerProduct when input 1 is a 2-D weight, else a Gemm with default parameters), run on
# the ncnn runtime. This is what settles which MatMuls the pre-flight check lets through.

M, K, N = 5, 6, 3


def run_layers(tmp_path: Path, layers: list[str], weights: list[np.ndarray],
               feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run a hand-written .param of `layers` after one Input per feed; returns blob y."""
    inputs = [f"Input {name} 0 1 {name}" for name in feeds]
    (tmp_path / "m.param").write_text(f"7767517\n{len(inputs) + len(layers)} {len(inputs) + len(layers)}\n"
                                      + "\n".join(inputs + layers) + "\n")
    with open(tmp_path / "m.bin", "wb") as weight_file:
        for array in weights:
            array.tofile(weight_file)
    feeds_by_blob = [(Blob(name, name), value) for name, value in feeds.items()]
    return run_ncnn(tmp_path / "m.param", tmp_path / "m.bin", feeds_by_blob, [Blob("y", "y")])["y"]


def test_a_matmul_of_two_computed_1_m_k_operands_is_a_right_ncnn_gemm(tmp_path):
    a, b = rand(1, M, K), rand(1, K, N)
    got = run_layers(tmp_path, ["Gemm matmul 2 1 a b y"], [], {"a": a, "b": b})
    np.testing.assert_allclose(got.reshape(1, M, N), a @ b, atol=1e-5)
    check = onnx.helper.make_model(onnx.parser.parse_graph(
        f"g (float[1,{M},{K}] a, float[1,{K},{N}] b) => (float[1,{M},{N}] y) {{ y = MatMul(a, b) }}"))
    assert check_model(check, "onnx2ncnn") == []


def test_a_matmul_by_a_2d_weight_is_an_inner_product_row_by_row(tmp_path):
    x, w = rand(1, M, K), rand(K, N)
    quantize_tag = np.zeros(1, np.int32)  # float weights follow, stored output by output
    got = run_layers(tmp_path, [f"InnerProduct matmul 1 1 x y 0={N} 1=0 2={K * N}"],
                     [quantize_tag, np.ascontiguousarray(w.T)], {"x": x})
    np.testing.assert_allclose(got.reshape(1, M, N), x @ w, atol=1e-5)


def test_a_4d_matmul_is_not_what_ncnn_gemm_computes_but_what_its_matmul_does(tmp_path):
    a, b = rand(1, 2, M, K), rand(1, 2, K, N)  # two heads, as in attention
    got = run_layers(tmp_path, ["Gemm matmul 2 1 a b y"], [], {"a": a, "b": b})
    assert got.size != (a @ b).size  # what onnx2ncnn writes
    got = run_layers(tmp_path, ["MatMul matmul 2 1 a b y 0=0"], [], {"a": a, "b": b})
    np.testing.assert_allclose(got.reshape(1, 2, M, N), a @ b, atol=1e-5)  # what deploykit makes of it
    check = onnx.helper.make_model(onnx.parser.parse_graph(
        f"g (float[1,2,{M},{K}] a, float[1,2,{K},{N}] b) => (float[1,2,{M},{N}] y) {{ y = MatMul(a, b) }}"))
    assert check_model(check, "onnx2ncnn") == []


@pytest.mark.slow
@pytest.mark.parametrize("b_shape", [(1, 2, K, N), (1, 1, K, N), (1, K, N)], ids=["heads", "broadcast", "3-d"])
def test_the_real_onnx2ncnn_gemm_of_a_batched_matmul_becomes_ncnns_matmul(b_shape, tmp_path):
    from conftest import need_onnx2ncnn
    from deploykit.ncnn.param import NcnnParam
    from passkit import onnx2ncnn_outcome

    need_onnx2ncnn()
    b_type = "float[" + ",".join(map(str, b_shape)) + "]"
    model = onnx.helper.make_model(onnx.parser.parse_graph(
        f"g (float[1,2,{M},{K}] a, {b_type} b) => (float[1,2,{M},{N}] y) {{ y = MatMul(a, b) }}"))
    assert onnx2ncnn_outcome(model, {"a": rand(1, 2, M, K), "b": rand(*b_shape)}, tmp_path) == "ok"
    assert [layer.kind for layer in NcnnParam.read(tmp_path / "model.ncnn.param").layers] == ["Input", "Input", "MatMul"]
