import json

import numpy as np
import onnx
import pytest

from deploykit.core.config import load_config
from deploykit.core.errors import ConfigError, StageError
from deploykit.core.parity import run_onnx
from deploykit.pipeline import run
from passkit import model_from_text

pytestmark = pytest.mark.slow  # end to end: runs the converters and ncnn

WEIGHTS = np.random.default_rng(3).standard_normal((8, 5)).astype(np.float32)


@pytest.fixture
def classifier(tmp_path):
    """Scores, then an ArgMax over classes: post-processing ncnn has no layer for."""
    model = model_from_text("""
        g (float[1,4,8] x) => (int64[1,4] label) {
            logits = MatMul(x, w)
            scores = Relu(logits)
            label = ArgMax<axis=-1, keepdims=0>(scores)
        }""", {"w": WEIGHTS})
    path = tmp_path / "classifier.onnx"
    onnx.save(model, str(path))
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{onnx: {path}}}\ninputs: [{{name: x, shape: [1, 4, 8]}}]\n"
                      f"output: {tmp_path / 'out'}\n")
    return config


LEFT_ARGMAX = {"pnnx": "the ncnn runtime does not have: ArgMax .* from ONNX ArgMax",
               "onnx2ncnn": "ArgMax not supported yet!"}


def test_without_a_cut_argmax_arithmetic_gives_the_labels_on_ncnn_as_floats(classifier, tmp_path, converter):
    code, report = run(*load_config(classifier, [f"converter.name={converter}"]))
    assert code == 0 and report["status"] == "verified"
    assert next(s for s in report["stages"] if s["name"] == "pass:argmax_arithmetic")["changed"] == 1
    [label] = report["ncnn"]["parity"]["outputs"]
    assert label["name"] == "label" and label["max_abs"] == 0.0
    manifest = json.loads((tmp_path / "out" / "deploykit.json").read_text())
    assert [(o["onnx_name"], o["dtype"]) for o in manifest["outputs"]] == [("label", "float32")]
    with pytest.raises(StageError, match=LEFT_ARGMAX[converter]):
        run(*load_config(classifier, [f"converter.name={converter}",
                                      "passes=[auto, {name: argmax_arithmetic, enabled: false}]"]))


def test_cut_converts_the_head_and_writes_the_tail_for_the_host(classifier, tmp_path, converter):
    code, report = run(*load_config(classifier, ["cut_at=[scores]", f"converter.name={converter}"]))
    assert code == 0 and report["status"] == "verified"
    cut = next(s for s in report["stages"] if s["name"] == "cut")
    assert cut["cut"] == {"at": ["scores"], "tail": "host_tail.onnx", "tail_inputs": ["scores"], "tail_ops": ["ArgMax"]}
    assert cut["parity"]["passed"]
    assert [o["name"] for o in report["ncnn"]["parity"]["outputs"]] == ["scores"]
    out = tmp_path / "out"
    head, tail = onnx.load(str(out / "02_cut.onnx")), onnx.load(str(out / "host_tail.onnx"))
    assert [n.op_type for n in head.graph.node] == ["MatMul", "Relu"]
    # The app's view: ncnn's scores through the host tail give the model's labels.
    x = np.load(out / "inputs.npz")["x"]
    scores = np.load(out / "reference.npz")["scores"]
    labels = run_onnx(tail, {"scores": scores}, stage="test")["label"]
    np.testing.assert_array_equal(labels, np.maximum(x @ WEIGHTS, 0).argmax(-1))
    # and the manifest tells the app what the tail takes and gives
    tail_entry = json.loads((out / "deploykit.json").read_text())["host_tail"]
    assert (tail_entry["inputs"], tail_entry["outputs"]) == ([{"name": "scores", "dtype": "float32", "shape": [1, 4, 5]}],
                                                             [{"name": "label", "dtype": "int64", "shape": [1, 4]}])


def test_an_unknown_cut_tensor_suggests_near_names(classifier):
    with pytest.raises(ConfigError, match=r"no node of 01_simplify.onnx produces 'score' \(did you mean 'scores'"):
        run(*load_config(classifier, ["cut_at=[score]"]))
