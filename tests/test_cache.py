"""A re-run with nothing changed reuses every stage; a change re-runs from the first stage it affects."""

import sys
import textwrap

import pytest

from deploykit.core.config import load_config
from deploykit.pipeline import run

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(8, 4)

        def forward(self, x):
            return torch.relu(self.linear(x))

    def build():
        torch.manual_seed(0)
        return Small().eval()
""")


@pytest.fixture
def small(tmp_path, monkeypatch):
    (tmp_path / "cached_model.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cached_model", raising=False)  # each test imports its own copy
    config = tmp_path / "small.yaml"
    config.write_text(f'model: {{factory: "cached_model:build"}}\ninputs: [{{name: x, shape: [1, 3, 8]}}]\n'
                      f"passes: [id_mask_lookup]\noutput: {tmp_path / 'out'}\n")
    return config


def cached(report) -> dict[str, bool]:
    return {stage["name"]: stage["cached"] for stage in report["stages"] if stage["name"] != "check"}


def convert_files(report) -> dict[str, str]:
    """sha256 of the .param/.bin the converter wrote."""
    written = next(stage for stage in report["stages"] if stage["name"] == "convert")["outputs_sha256"]
    return {name: digest for name, digest in written.items() if name.endswith((".param", ".bin"))}


@pytest.mark.slow
def test_a_rerun_reuses_every_stage_and_force_reruns_them(small, converter):
    overrides = [f"converter.name={converter}"]
    _, first = run(*load_config(small, overrides))
    assert not any(cached(first).values())
    _, second = run(*load_config(small, overrides))
    assert all(cached(second).values()), cached(second)
    assert second["ncnn"]["parity"] == first["ncnn"]["parity"]
    assert second["stages"][-2]["files"] == first["stages"][-2]["files"]  # the same .param/.bin hashes
    _, forced = run(*load_config(small, overrides), force=True)
    assert not any(cached(forced).values())


@pytest.mark.slow
def test_changes_rerun_from_the_first_stage_they_affect(small, tmp_path):
    run(*load_config(small))
    _, before = run(*load_config(small, ["converter.timeout=100"]))
    # The converter runs again and writes the same .param/.bin, so their check on ncnn is reused.
    assert cached(before) == {"export": True, "simplify": True, "pass:id_mask_lookup": True,
                              "convert": False, "verify": True}
    _, report = run(*load_config(small, ["converter.timeout=100", "simplify.enabled=false"]))
    # Without onnxsim the graph differs; ncnn is checked again only if pnnx writes other files.
    ncnn_files_changed = convert_files(report) != convert_files(before)
    assert cached(report) == {"export": True, "simplify": False, "pass:id_mask_lookup": False,
                              "convert": False, "verify": not ncnn_files_changed}
    _, report = run(*load_config(small, ["converter.timeout=100", "simplify.enabled=false", "converter.fp16=true"]))
    assert convert_files(report) != convert_files(before)
    assert cached(report) == {"export": True, "simplify": True, "pass:id_mask_lookup": True,
                              "convert": False, "verify": False}
    source = tmp_path / "cached_model.py"
    source.write_text(source.read_text() + "\n# an edit to the model's code\n")
    _, report = run(*load_config(small, ["converter.timeout=100", "simplify.enabled=false"]))
    assert cached(report)["export"] is False


@pytest.mark.slow
def test_an_artifact_changed_on_disk_is_not_reused(small, tmp_path):
    run(*load_config(small))
    param = tmp_path / "out" / "model.ncnn.param"
    param.write_text(param.read_text().replace("7767517", "7767517", 1) + "\n")
    _, report = run(*load_config(small))
    assert cached(report)["convert"] is False
    assert cached(report)["export"] is True


@pytest.mark.slow
def test_a_converter_rebuilt_at_the_same_path_converts_again(small, tmp_path):
    import os
    import shutil

    from conftest import need_onnx2ncnn

    binary = tmp_path / "bin" / "onnx2ncnn"
    binary.parent.mkdir()
    shutil.copy2(need_onnx2ncnn(), binary)
    overrides = ["converter.name=onnx2ncnn", f"converter.path={binary}"]
    run(*load_config(small, overrides))
    _, again = run(*load_config(small, overrides))
    assert cached(again)["convert"] is True
    shutil.copy(need_onnx2ncnn(), binary)  # a rebuild: the same path and version, another file
    stat = binary.stat()
    os.utime(binary, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _, rebuilt = run(*load_config(small, overrides))
    assert cached(rebuilt)["convert"] is False
    assert cached(rebuilt)["pass:id_mask_lookup"] is True


def test_a_pass_key_follows_the_helpers_it_imports(tmp_path, monkeypatch):
    import importlib

    from deploykit.core.cache import source_digest

    package = tmp_path / "house_passes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("SCALE = 2\n")
    (package / "unrelated.py").write_text("X = 1\n")
    (package / "scaled.py").write_text("from house_passes.helpers import SCALE\n\n\nclass Scaled:\n"
                                       "    factor = SCALE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("house_passes")]:
        monkeypatch.delitem(sys.modules, name)
    scaled = importlib.import_module("house_passes.scaled").Scaled
    before = source_digest(scaled)
    (package / "unrelated.py").write_text("X = 2\n")
    assert source_digest(scaled) == before  # a file it does not import
    (package / "helpers.py").write_text("SCALE = 3\n")
    assert source_digest(scaled) != before
    assert source_digest(len) == "unknown"  # no source file
