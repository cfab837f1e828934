"""The artifact folder deploykit owns, and the one way a run writes into it.

Folder rules (README, "Artifacts"):
- deploykit writes only into a folder that is new, empty, or marked as its own by the file
  `.deploykit`, which records every file deploykit put there. It refuses `/`, the home folder,
  the working directory and the folders above them, a mount point, any other non-empty folder,
  and a folder that holds a file the run reads (the config, the model, the checkpoint, an input).
- A run writes into a staging folder beside the output (`.<name>.deploykit-run-XXXX/artifacts`,
  its temporary files in `.../tmp`), and only at the end takes the output's place, in one
  rename. A verified run replaces the output; a failed run replaces it only if it holds no
  verified run, and otherwise goes to `<name>.failed` beside it, which a verified run removes.
- Of the folder it replaces, deploykit deletes only the files its marker lists; anything else
  (a file the user put there) is moved into the new folder.
- A lock beside the folder keeps a second run out while one runs. What a killed run leaves
  beside the folder is removed by the next run into it.

Every file a stage writes goes through `ArtifactDir` (the staging folder of the run):
`write_bytes/text/json/arrays/npy` or `write_with` for a file written whole, `pending` + `commit`
for one another process writes, `move_in` for one a tool wrote in a `scratch()` folder, and
`take` for one an earlier run wrote (the stage cache). Whatever is in the staging folder at the
end is the run's, subfolders included, so a new stage needs no registration of its files.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional
from collections.abc import Callable, Iterable, Iterator

from deploykit.core.errors import ConfigError
from deploykit.core.processes import signals_deferred


def _file_mode(kind: int) -> int:
    # mkstemp and mkdtemp create files and folders for the owner only; artifacts get the usual
    # umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return kind & ~mask


_FILE_MODE = _file_mode(0o666)
_FOLDER_MODE = _file_mode(0o777)

MARKER = ".deploykit"  # in a folder deploykit owns: the files it wrote there
MARKER_FORMAT = "deploykit-folder/1"
FAILED_SUFFIX = ".failed"  # beside a verified run's folder: the run that failed after it
REPORT = "report.json"


class ArtifactDir:
    """Where a run writes: every file lands by rename, replacing any earlier one whole, and
    temporary work goes to `scratch()` folders outside it."""

    def __init__(self, path: Path, scratch_root: Optional[Path] = None) -> None:
        self.path = Path(path)
        self._scratch_root = scratch_root

    def file(self, name: str) -> Path:
        return self.path / name

    def write_with(self, name: str, writer: Callable[[Path], object]) -> Path:
        """Call `writer(tmp_path)` and move its result to `name` only when it succeeded."""
        tmp_path = self.pending(name)
        try:
            writer(tmp_path)
            return self.commit(tmp_path, name)
        finally:
            tmp_path.unlink(missing_ok=True)

    def pending(self, name: str) -> Path:
        """A new empty file beside `name` (which may name a subfolder) for its next version, to
        `commit` when complete."""
        target = self.file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
        return Path(tmp)

    def commit(self, tmp_path: Path, name: str) -> Path:
        """Put a complete file written beside the folder's files in place as `name`."""
        target = self.file(name)
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, target)
        return target

    def write_bytes(self, name: str, data: bytes) -> Path:
        """`data` as the file `name`; its SHA-256 is taken from the bytes in memory, so that
        `sha256(path)` need not read the file back."""
        target = self.write_with(name, lambda p: p.write_bytes(data))
        remember_sha256(target, data)
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_with(name, lambda p: p.write_text(text, encoding="utf-8"))

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")

    def write_arrays(self, name: str, arrays: dict[str, Any]) -> Path:
        """Named numpy arrays as one .npz (read back with `read_arrays`)."""
        import numpy as np

        return self._write_file(name, lambda handle: np.savez(handle, **arrays))

    def write_npy(self, name: str, array: Any) -> Path:
        """One numpy array as a .npy (read back with numpy.load)."""
        import numpy as np

        return self._write_file(name, lambda handle: np.save(handle, array, allow_pickle=False))

    def _write_file(self, name: str, dump: Callable[[Any], None]) -> Path:
        """write_with for a writer of an open binary file (numpy adds a suffix to a bare path)."""

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                dump(handle)

        return self.write_with(name, write)

    def move_in(self, source: Path, name: str) -> Path:
        """Move a finished file (e.g. written by a converter in a scratch folder) into place."""
        target = self.file(name)
        try:
            os.replace(source, target)
        except OSError:  # another file system: copy beside the target, then rename
            self.write_with(name, lambda p: shutil.copyfile(source, p))
        return target

    def take(self, source: Path, name: str, digest: str) -> Path:
        """A file an earlier run wrote, whose SHA-256 is `digest`, as this run's `name` (the stage
        cache): a hard link where the file system allows one, else a copy. Nothing writes a file
        in place, so the earlier run's file stays as it was."""
        target = self.file(name)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            self.write_with(name, lambda p: shutil.copyfile(source, p))
        _DIGESTS[_version(target)] = digest  # a new link changes the file's change time
        return target

    def scratch(self) -> tempfile.TemporaryDirectory:
        """A private working folder, removed afterwards; in a run, beside its staging folder, so
        that a run killed meanwhile leaves it where the next run removes it."""
        return tempfile.TemporaryDirectory(dir=self._scratch_root or self.path, prefix=".work-")


def move_entries(source: Path, target: Path, *, keep: Iterable[str] = ()) -> None:
    """Move what `source` holds (but the entries named in `keep`) into the folder `target`, by
    rename, keeping the SHA-256 this process knows of each file; `source` goes when it is left empty."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.name in keep or entry == target:
            continue
        files = [entry] if not entry.is_dir() else [p for p in entry.rglob("*") if p.is_file()]
        known = {p.relative_to(source): _DIGESTS.get(_version(p)) for p in files}
        os.replace(entry, target / entry.name)
        for rel, digest in known.items():
            if digest is not None:  # a rename is a new change time of the same content
                _DIGESTS[_version(target / rel)] = digest
    if source != target and not any(source.iterdir()):
        source.rmdir()


def read_arrays(path: Path, *, stage: str = "verify") -> dict[str, Any]:
    """The named numpy arrays of an .npz that `ArtifactDir.write_arrays` wrote; a file that is
    missing or damaged is a ConfigError naming it."""
    import zipfile

    import numpy as np

    if not Path(path).is_file():
        raise ConfigError(f"{path} does not exist.", stage=stage,
                          hint="give the artifact folder of a run that got past the export (its inputs.npz).")
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, AttributeError) as exc:
        raise ConfigError(f"{path} is not a readable .npz of named arrays ({type(exc).__name__}: {exc}).",
                          stage=stage, hint="re-run `deploykit run` to write it again.") from None


def last_report(output: Path) -> Path:
    """Where the report of the last run into `output` is: beside it when that run failed after a
    verified one, else inside it."""
    failed = failed_folder(Path(output)) / REPORT
    return failed if failed.is_file() else Path(output) / REPORT


def failed_folder(output: Path) -> Path:
    return output.parent / (output.name + FAILED_SUFFIX)


class OutputFolder:
    """The folder a run's artifacts end in, and what deploykit may do there (module docstring).

    `with folder.staging() as artifacts:` locks the folder, refuses an unsafe one, removes what a
    killed run left, and gives the staging folder; `folder.commit(artifacts, verified=...)` puts
    it in place. Left without a commit (an error, a signal), the staging folder is removed and the
    folder stays as it was.
    """

    def __init__(self, path: Path, *, reads: Iterable[Optional[Path]] = (), option: str = "output") -> None:
        self.shown = Path(path)
        self.path = Path(os.path.realpath(path))
        self.failed = failed_folder(self.path)
        self.reads = [Path(os.path.realpath(p)) for p in reads if p is not None]
        self.option = option  # how the user names the folder, for messages
        self.notes: list[str] = []  # what the user should know: files kept where they were, and why

    def previous(self) -> list[Path]:
        """The folders that hold earlier runs, newest first (a failed run beside the folder is newer)."""
        return [folder for folder in (self.failed, self.path) if _read_marker(folder) is not None]

    @contextmanager
    def staging(self) -> Iterator[ArtifactDir]:
        self._refuse_unsafe()  # before anything is written beside it; and again once it is locked
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from None
        with self._locked():
            self._refuse_unsafe()
            self._remove_leftovers()
            try:
                run_dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}{RUN_DIR}", dir=self.path.parent))
                (run_dir / "artifacts").mkdir(mode=_FOLDER_MODE)
                (run_dir / "tmp").mkdir()
            except OSError as exc:
                raise self._unwritable(exc) from None
            # Whatever a stage or a tool puts in a temporary file lives in the run's folder: a
            # killed run leaves it there, where the next run removes it.
            saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(run_dir / "tmp")
            try:
                yield ArtifactDir(run_dir / "artifacts", scratch_root=run_dir / "tmp")
            finally:
                tempfile.tempdir = saved_tempdir
                self._clear_run_dir(run_dir)

    def destination(self, *, verified: bool) -> Path:
        """Where `commit` puts a run's folder: in place of the folder, or, for a failed run after a
        verified one, beside it."""
        return self.path if verified or _status(self.path) != "verified" else self.failed

    def commit(self, artifacts: ArtifactDir, *, verified: bool) -> Path:
        """Put the staging folder in place of the folder, or for a failed run after a verified
        one, of the failed run's folder beside it; returns where it went."""
        target = self.destination(verified=verified)
        staged = artifacts.path
        for stray in staged.rglob(".*.part"):  # a pending file no one committed
            stray.unlink()
        files = _listing(staged)
        self._refuse_clashes(target, files)
        _write_marker(staged, {"format": MARKER_FORMAT, "folder": target.name,
                               "status": "verified" if verified else "failed",
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files})
        os.chmod(staged, _FOLDER_MODE)
        with signals_deferred():  # a signal now would end a run that has ended
            old = self._swap_in(staged, target)
            if old is not None:
                self._dispose(old, home=target)
            if target == self.path and self.failed.is_dir() and _read_marker(self.failed) is not None:
                self._dispose(self.failed, home=None)  # an older failed run: this one is newer
        return target

    # -- refusing ---------------------------------------------------------------------------

    def _refuse_unsafe(self) -> None:
        for folder in (self.path, self.failed):
            why = self._why_unsafe(folder)
            if why:
                raise ConfigError(f"the artifact folder {folder} {why}. deploykit replaces its artifact folder whole "
                                  f"at the end of a run, so it writes only into a new or empty folder, or one it "
                                  f"made itself (marked by a {MARKER} file).", stage="output",
                                  hint=f"give a new folder for the artifacts with {self._option_hint()}, e.g. "
                                       "artifacts/<config name> (the default).")

    def _option_hint(self) -> str:
        return "-o DIR" if self.option == "-o" else f"`{self.option}:` in the config or --set {self.option}=DIR"

    def _why_unsafe(self, folder: Path) -> str:
        if folder.parent == folder:
            return "is the root of the file system"
        around = [("your home folder", _home()), ("the working directory", Path.cwd().resolve())]
        for name, place in around:
            if place is not None and folder == place:
                return f"is {name}"
            if place is not None and folder in place.parents:
                return f"holds {name} ({place})"
        for read in self.reads:
            if folder == read or folder in read.parents:
                return f"holds {read}, which this run reads"
        if folder.exists() and not folder.is_dir():
            return "is a file, not a folder"
        if os.path.ismount(folder):
            return ("is a mount point, which cannot be renamed, and a run takes the folder's place by a rename "
                    "(a folder inside it can be the artifact folder)")
        if not folder.is_dir():
            return ""
        entries = sorted(p.name for p in folder.iterdir())
        if not entries:
            return ""
        marker = _read_marker(folder)
        if MARKER in entries and marker is None:
            return f"has a damaged {MARKER} marker, so which of its files deploykit wrote is unknown"
        if marker is None:
            shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
            older = (" (it looks like the folder of an older deploykit, which did not mark its folders: delete it "
                     "if nothing of yours is in it)" if _older_artifact_folder(folder) else "")
            return f"already holds files deploykit did not write ({shown}){older}"
        return ""

    def _refuse_clashes(self, target: Path, files: list[str]) -> None:
        """A file the user put in the folder may not be replaced by one of this run."""
        marker = _read_marker(target)
        foreign = _foreign(target, set(marker["files"]) if marker else set()) if target.is_dir() else []
        written = set(files) | {str(Path(f).parent) for f in files}
        clashes = [f for f in foreign if f in written or any(str(p) in files for p in Path(f).parents)]
        if clashes:
            raise ConfigError(f"{target / clashes[0]} is not a file deploykit wrote, and this run writes one of "
                              "that name.", stage="output",
                              hint="move that file out of the artifact folder and run again.")

    def _unwritable(self, exc: OSError) -> ConfigError:
        return ConfigError(f"cannot write to the artifact folder {self.shown}: {exc.strerror or exc}.", stage="output",
                           hint=f"choose another folder with {self._option_hint()}.")

    # -- replacing --------------------------------------------------------------------------

    def _swap_in(self, staged: Path, target: Path) -> Optional[Path]:
        """Put `staged` at `target` in one step; returns where the folder that was there went."""
        if not target.exists():
            os.rename(staged, target)
            return None
        if _read_marker(target) is None:  # empty when the run began (_why_unsafe)
            try:
                target.rmdir()
            except OSError:
                raise ConfigError(f"the artifact folder {target} was empty when the run began and now holds "
                                  "files deploykit did not write.", stage="output",
                                  hint="move them elsewhere and run again.") from None
            os.rename(staged, target)
            return None
        if _exchange(staged, target):
            return staged
        previous = staged.with_name("previous")  # without an atomic exchange: two renames
        os.rename(target, previous)
        os.rename(staged, target)
        return previous

    def _dispose(self, folder: Path, *, home: Optional[Path]) -> None:
        """Delete the files the marker of `folder` lists; move the rest into `home` (the folder
        that replaced it); remove `folder` once nothing is left in it."""
        marker = _read_marker(folder) or {"files": []}
        recorded = set(marker["files"])
        for rel in _recorded_folders(recorded, bottom_up=False):
            for entry in _entries(folder / rel):
                if _rel(rel, entry.name) in recorded and not entry.is_dir():
                    entry.unlink()
        kept = [rel for rel in _foreign(folder, recorded) if not _move(folder / rel, home, rel)]
        for rel in _recorded_folders(recorded, bottom_up=True):
            _rmdir_if_empty(folder / rel)
        if kept:
            _write_marker(folder, {**marker, "files": []})
            self.notes.append(f"{folder} still holds {', '.join(kept[:5])}: files deploykit did not write, which "
                              f"it did not move{f' into {home}, where those names are taken' if home else ''}.")
            return
        (folder / MARKER).unlink(missing_ok=True)
        _rmdir_if_empty(folder)

    def _clear_run_dir(self, run_dir: Path) -> None:
        """Remove a run's folder: a staging folder never put in place is the run's own; a folder
        that was replaced is disposed of."""
        for part in ("previous", "artifacts"):
            folder = run_dir / part
            if not folder.is_dir():
                continue
            marker = _read_marker(folder)
            if marker is None:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                self._dispose(folder, home=self.path.parent / marker["folder"])
        if not any((run_dir / part).exists() for part in ("previous", "artifacts")):
            shutil.rmtree(run_dir, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """What runs killed before their end left beside the folder."""
        pattern = re.compile(rf"^\.{re.escape(self.path.name)}{re.escape(RUN_DIR)}[a-z0-9_]+$")
        for entry in sorted(self.path.parent.iterdir()):
            if not (pattern.match(entry.name) and entry.is_dir() and not entry.is_symlink()):
                continue
            previous = entry / "previous"  # killed between the two renames of `_swap_in`
            marker = _read_marker(previous)
            if marker is not None and not (self.path.parent / marker["folder"]).exists():
                os.rename(previous, self.path.parent / marker["folder"])
            self._clear_run_dir(entry)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's lock (a file beside it) for the duration; another run holding it is
        an error. The kernel releases the lock of a process that dies, however it dies."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        lock = self.path.parent / f".{self.path.name}.deploykit-lock"
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise self._unwritable(exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise ConfigError(f"another deploykit run{f' (process {holder})' if holder else ''} is writing to "
                                  f"the artifact folder {self.shown} now.", stage="output",
                                  hint=f"wait for it to end, or give this run another folder with "
                                       f"{self._option_hint()}.") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the run that held it removed it meanwhile: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            yield
        finally:
            lock.unlink(missing_ok=True)
            os.close(fd)


RUN_DIR = ".deploykit-run-"  # .<name>.deploykit-run-XXXX: a run's staging and temporary files


def _home() -> Optional[Path]:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError):
        return None


def _older_artifact_folder(folder: Path) -> bool:
    try:
        report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "deploykit" in (report.get("versions") or {})


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT
            and isinstance(marker.get("files"), list) and isinstance(marker.get("folder"), str)):
        return None
    return marker


def _status(folder: Path) -> Optional[str]:
    marker = _read_marker(folder)
    return marker.get("status") if marker else None


def _write_marker(folder: Path, marker: dict) -> None:
    ArtifactDir(folder).write_json(MARKER, marker)


def _listing(folder: Path) -> list[str]:
    """The files under `folder`, as paths relative to it with `/`, the marker left out."""
    found = []
    for root, _, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        found += [(rel / name).as_posix() for name in files if (rel / name).as_posix() != MARKER]
    return sorted(found)


def _rel(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _entries(path: Path) -> list[Path]:
    return sorted(path.iterdir()) if path.is_dir() and not path.is_symlink() else []


def _recorded_folders(recorded: set[str], *, bottom_up: bool) -> list[str]:
    """The folders ("" for the top) that hold recorded files, deepest last (or first)."""
    folders = {""} | {str(parent.as_posix()) for f in recorded for parent in Path(f).parents if str(parent) != "."}
    return sorted(folders, key=lambda f: (f.count("/") + bool(f), f), reverse=bottom_up)


def _foreign(folder: Path, recorded: set[str]) -> list[str]:
    """What `folder` holds that deploykit did not write there: entries outside the record (a
    folder of them once, as a whole), the marker left out."""
    ours = set(_recorded_folders(recorded, bottom_up=False))
    found = []
    for rel in sorted(ours):
        for entry in _entries(folder / rel):
            path = _rel(rel, entry.name)
            if path == MARKER or path in recorded or (path in ours and entry.is_dir() and not entry.is_symlink()):
                continue
            found.append(path)
    return found


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _move(path: Path, home: Optional[Path], rel: str) -> bool:
    """Move a file the user put in a replaced folder into the folder that replaced it."""
    if home is None:
        return False
    destination = home / rel
    if destination.exists() or destination.is_symlink():
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.rename(path, destination)
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not
    available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# SHA-256 of the files this process has hashed or written, by the file's identity and version
# (device, inode, size, modification and change times): a run hashes a stage file or the .bin
# for its record, its manifest and its cache key, and the weights make each read cost as much as
# a pass. A file replaced by rename is a new inode; one written in place has a new change time.
_DIGESTS: dict[tuple[int, ...], str] = {}


def _version(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def remember_sha256(path: Path, data: bytes) -> None:
    """Record the digest of a file whose whole content, `data`, is in memory (just written or read)."""
    _DIGESTS[_version(path)] = hashlib.sha256(data).hexdigest()


def sha256(path: Path) -> str:
    version = _version(path)
    if version in _DIGESTS:
        return _DIGESTS[version]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _DIGESTS[version] = digest.hexdigest()
    return _DIGESTS[version]
