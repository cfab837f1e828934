"""deploykit reduce as a user runs it: a failing model in, the smallest failing piece written out."""

import pytest
import numpy as np
import onnx

from deploykit.cli import main
from passkit import model_from_text

W = np.random.default_rng(5).standard_normal((8, 8)).astype(np.float32)


def save(tmp_path, graph_text, initializers):
    path = tmp_path / "model.onnx"
    onnx.save(model_from_text(graph_text, initializers), str(path))
    return path


@pytest.mark.slow
def test_reduce_writes_the_smallest_failing_subgraph(tmp_path, capsys):
    path = save(tmp_path, """
        g (float[1,4,8] x) => (float[1,4,4] y) {
            a = MatMul(x, w)
            b = Relu(a)
            c = MatMul(b, w)
            s = Slice(c, starts, ends, axes, steps)
            y = Relu(s)
        }""", {"w": W, "starts": np.array([0], np.int64), "ends": np.array([8], np.int64),
               "axes": np.array([2], np.int64), "steps": np.array([2], np.int64)})
    assert main(["reduce", str(path), "-o", str(tmp_path / "out")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "reduced 5 -> 1 node(s) (Slice)" in err and "Tensor.slice" in err
    reduced = onnx.load(str(tmp_path / "out" / "reduced.onnx"))
    onnx.checker.check_model(reduced, full_check=True)
    assert [n.op_type for n in reduced.graph.node] == ["Slice"]
    assert set(np.load(tmp_path / "out" / "reduced_inputs.npz").files) == {i.name for i in reduced.graph.input}


def test_a_model_that_converts_has_nothing_to_reduce(tmp_path, capsys):
    path = save(tmp_path, """
        g (float[1,4,8] x) => (float[1,4,8] y) {
            a = MatMul(x, w)
            y = Relu(a)
        }""", {"w": W})
    assert main(["reduce", str(path), "-o", str(tmp_path / "out")]) == 0
    assert "nothing to reduce" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out" / "reduced.onnx").exists()
