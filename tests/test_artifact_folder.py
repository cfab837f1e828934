"""The artifact folder deploykit owns: what it refuses, what a run replaces whole, what it never
touches, and what a killed run leaves for the next one to remove."""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest

from deploykit.core import artifacts
from deploykit.core.artifacts import MARKER, OutputFolder, last_report
from deploykit.core.errors import ConfigError


def hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (the marker included) and its SHA-256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_run(folder: OutputFolder, files: dict[str, str], *, verified: bool = True) -> Path:
    with folder.staging() as staged:
        for name, text in files.items():
            staged.file(name).parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(name, text)
        return folder.commit(staged, verified=verified)


def beside(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_a_run_replaces_the_folder_whole_and_records_what_it_wrote(tmp_path):
    out = tmp_path / "out"
    assert write_run(OutputFolder(out), {"a.onnx": "1", "report.json": "{}", "int8/table.txt": "t"}) == out
    marker = json.loads((out / MARKER).read_text())
    assert marker["files"] == ["a.onnx", "int8/table.txt", "report.json"] and marker["status"] == "verified"
    write_run(OutputFolder(out), {"b.onnx": "2", "report.json": "{}"})
    assert sorted(hashes(out)) == [MARKER, "b.onnx", "report.json"]  # nothing of the first run is left
    assert beside(out) == ["out"]  # no staging folder, lock or leftover beside it
    assert (out.stat().st_mode & 0o777) == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_the_user_put_in_the_folder_are_moved_into_the_next_run(tmp_path):
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"a.onnx": "1", "report.json": "{}"})
    (out / "notes.txt").write_text("mine")
    (out / "drafts").mkdir()
    (out / "drafts" / "edited.param").write_text("mine too")
    write_run(OutputFolder(out), {"report.json": "{}"})
    assert (out / "notes.txt").read_text() == "mine" and (out / "drafts" / "edited.param").read_text() == "mine too"
    assert not (out / "a.onnx").exists()
    assert "notes.txt" not in json.loads((out / MARKER).read_text())["files"]


def test_a_run_that_would_replace_a_file_the_user_put_there_is_refused(tmp_path):
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"report.json": "{}"})
    (out / "host_tail.onnx").write_text("the user's")
    before = hashes(out)
    with pytest.raises(ConfigError, match=r"host_tail.onnx is not a file deploykit wrote, and this run writes one"):
        write_run(OutputFolder(out), {"host_tail.onnx": "ours", "report.json": "{}"})
    assert hashes(out) == before and beside(out) == ["out"]


def test_a_failed_run_keeps_the_verified_one_and_goes_beside_it(tmp_path):
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"model.ncnn.bin": "verified", "report.json": '{"status": "verified"}'})
    verified = hashes(out)
    failed = write_run(OutputFolder(out), {"report.json": '{"status": "failed"}'}, verified=False)
    assert failed == tmp_path / "out.failed" and hashes(out) == verified
    assert last_report(out) == failed / "report.json"
    write_run(OutputFolder(out), {"report.json": '{"status": "failed", "again": 1}'}, verified=False)
    assert hashes(out) == verified and json.loads(last_report(out).read_text())["again"] == 1
    write_run(OutputFolder(out), {"report.json": '{"status": "verified"}'})
    assert beside(out) == ["out"] and last_report(out) == out / "report.json"  # the failed run is gone


def test_a_failed_run_with_no_verified_run_before_it_takes_the_folder(tmp_path):
    out = tmp_path / "out"
    assert write_run(OutputFolder(out), {"report.json": "1"}, verified=False) == out
    assert write_run(OutputFolder(out), {"report.json": "2"}, verified=False) == out
    assert (out / "report.json").read_text() == "2" and beside(out) == ["out"]


def test_a_run_that_ends_without_commit_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"report.json": "old"})
    before = hashes(out)
    with pytest.raises(RuntimeError), OutputFolder(out).staging() as staged:
        staged.write_text("report.json", "new")
        with staged.scratch() as scratch:
            (Path(scratch) / "convert.log").write_text("half")
            raise RuntimeError("a stage failed")
    assert hashes(out) == before and beside(out) == ["out"]


def test_while_a_run_holds_the_folder_another_is_refused(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out).staging():
        with pytest.raises(ConfigError, match=rf"another deploykit run \(process {os.getpid()}\) is writing to"):
            with OutputFolder(out).staging():
                pass
    with OutputFolder(out).staging():  # released at the end
        pass


def test_temporary_files_of_a_run_live_beside_the_folder_and_go_with_the_run(tmp_path):
    out = tmp_path / "out"
    system = tempfile.gettempdir()
    with OutputFolder(out).staging():
        inside = Path(tempfile.mkdtemp(prefix="deploykit-ncnn-"))
        assert inside.parent.parent.name.startswith(".out.deploykit-run-")
    assert not inside.exists() and tempfile.gettempdir() == system


@pytest.mark.parametrize("between_renames", [False, True])
def test_what_a_killed_run_left_is_removed_by_the_next(tmp_path, between_renames):
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"report.json": "old"})
    (out / "notes.txt").write_text("mine")
    before = hashes(out)
    # A run killed before its end: its staging folder, a pending file and temporary folders.
    run_dir = tmp_path / ".out.deploykit-run-abc123_x"
    (run_dir / "artifacts").mkdir(parents=True)
    (run_dir / "artifacts" / "00_export.onnx").write_text("new")
    (run_dir / "artifacts" / ".01_simplify.onnx.k2j3.part").write_text("half")
    (run_dir / "tmp" / "deploykit-onnxsim-1").mkdir(parents=True)
    (run_dir / "tmp" / ".work-x").mkdir()
    if between_renames:  # where no atomic exchange exists, killed between the two renames
        os.rename(out, run_dir / "previous")
    with OutputFolder(out).staging():
        assert not run_dir.exists() and hashes(out) == before
    assert beside(out) == ["out"] and hashes(out) == before


@pytest.mark.parametrize("exchange", [True, False])
def test_the_folder_is_swapped_the_same_way_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"a": "1", "report.json": "{}"})
    (out / "notes.txt").write_text("mine")
    write_run(OutputFolder(out), {"b": "2", "report.json": "{}"})
    assert sorted(hashes(out)) == [MARKER, "b", "notes.txt", "report.json"] and beside(out) == ["out"]


def refused(tmp_path: Path, folder: Path, *, reads=(), option: str = "output") -> str:
    before = hashes(folder) if folder.is_dir() and folder != Path("/") else None
    with pytest.raises(ConfigError) as caught, OutputFolder(folder, reads=reads, option=option).staging():
        pass
    if before is not None:
        assert hashes(folder) == before
    return " ".join(str(caught.value).split())


def test_folders_that_are_not_deploykits_are_refused_with_the_reason(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "mobile.yaml").write_text("model: ...")
    (project / "notes.txt").write_text("mine")
    (project / "model.ncnn.param").write_text("my own conversion")
    assert "the root of the file system" in refused(tmp_path, Path("/"))
    with pytest.raises(ConfigError, match=r"/proc is a mount point, which cannot be renamed"):
        with OutputFolder(Path("/proc")).staging():
            pass
    assert not [p for p in Path("/").iterdir() if "deploykit" in p.name]  # no lock or staging folder in /
    monkeypatch.setenv("HOME", str(tmp_path))
    assert f"holds your home folder ({tmp_path})" in refused(tmp_path, tmp_path.parent)
    assert "is your home folder" in refused(tmp_path, tmp_path)
    monkeypatch.chdir(project)
    message = refused(tmp_path, project, option="-o")
    assert "is the working directory" in message and "Try: give a new folder for the artifacts with -o DIR" in message
    monkeypatch.chdir(tmp_path.parent)
    message = refused(tmp_path, project, reads=[project / "mobile.yaml"])
    assert f"holds {project / 'mobile.yaml'}, which this run reads" in message
    message = refused(tmp_path, project)
    assert "already holds files deploykit did not write (mobile.yaml, model.ncnn.param, notes.txt)" in message
    assert "--set output=DIR" in message
    (project / "report.json").write_text('{"status": "verified", "versions": {"deploykit": "0.1"}}')
    assert "it looks like the folder of an older deploykit, which did not mark its folders" in refused(tmp_path,
                                                                                                     project)
    (project / "report.json").unlink()
    (project / "notes.txt").unlink()
    (project / "mobile.yaml").unlink()
    (project / "model.ncnn.param").unlink()
    (project / MARKER).write_text("{not json")
    assert f"has a damaged {MARKER} marker" in refused(tmp_path, project)
    assert "is a file, not a folder" in refused(tmp_path, tmp_path / "project" / MARKER)
    assert beside(project) == ["project"]


def test_a_folder_holding_a_file_the_run_reads_is_refused_even_if_deploykit_wrote_it(tmp_path):
    out = tmp_path / "out"
    write_run(OutputFolder(out), {"01_simplify.onnx": "x", "report.json": "{}"})
    assert "which this run reads" in refused(tmp_path, out, reads=[out / "01_simplify.onnx"])
