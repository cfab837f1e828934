"""The artifact folder: files land whole, and the digests of files a run wrote or read are
remembered instead of reading the weights again."""

import hashlib
import os

import pytest

from deploykit.core import artifacts
from deploykit.core.artifacts import ArtifactDir, sha256


def test_a_remembered_digest_follows_the_file_not_its_name(tmp_path):
    folder = ArtifactDir(tmp_path)
    path = folder.write_bytes("model.bin", b"a" * 4096)
    assert sha256(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    stat = path.stat()
    with open(path, "r+b") as handle:  # the same size, written in place, the old times put back
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert sha256(path) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()
    folder.write_bytes("model.bin", b"c" * 4096)  # replaced by rename
    assert sha256(path) == hashlib.sha256(b"c" * 4096).hexdigest()


def test_a_digest_taken_from_memory_is_not_read_from_the_file_again(tmp_path, monkeypatch):
    path = ArtifactDir(tmp_path).write_bytes("model.bin", b"weights")
    monkeypatch.setattr(artifacts, "open", lambda *a, **k: pytest.fail("read the file again"), raising=False)
    assert sha256(path) == hashlib.sha256(b"weights").hexdigest()


def test_a_pending_file_lands_only_when_committed(tmp_path):
    folder = ArtifactDir(tmp_path)
    folder.write_bytes("01_simplify.onnx", b"old")
    pending = folder.pending("01_simplify.onnx")
    pending.write_bytes(b"new")
    assert (tmp_path / "01_simplify.onnx").read_bytes() == b"old"
    assert folder.commit(pending, "01_simplify.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_simplify.onnx"]


def test_a_model_saved_with_a_check_is_refused_whole_and_nothing_is_written(tmp_path):
    from onnx import TensorProto, helper

    from deploykit.core.errors import StageError
    from deploykit.onnx.onnx_io import load_onnx, save_onnx

    def model(reads: str):
        graph = helper.make_graph([helper.make_node("Relu", [reads], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    folder = ArtifactDir(tmp_path)
    with pytest.raises(StageError, match=r"^\[pass:bad\] the graph after pass 'bad' fails onnx.checker: .*nowhere"):
        save_onnx(folder, "02_bad.onnx", model("nowhere"), check="the graph after pass 'bad'", stage="pass:bad")
    assert list(tmp_path.iterdir()) == []
    path = save_onnx(folder, "02_good.onnx", model("x"), check="the graph after pass 'good'", stage="pass:good")
    assert sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_onnx(path, stage="convert").graph.node[0].input == ["x"]
