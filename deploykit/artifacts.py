"""The artifact folder: numbered files written atomically, so no reader sees half a file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from deploykit.errors import ConfigError


def _file_mode() -> int:
    # mkstemp creates files readable by the owner only; artifacts get the usual umask-based mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


class ArtifactDir:
    """One run's output folder. Every file lands by rename, replacing any earlier one whole."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def prepare(self) -> None:
        """Create the folder and prove it is writable before any stage spends time."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as exc:
            raise ConfigError(
                f"cannot write to the artifact folder {self.path}: {exc.strerror or exc}.",
                stage="output", hint="choose another folder with `output:` or --set output=DIR.",
            ) from None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_with(self, name: str, writer: Callable[[Path], None]) -> Path:
        """Call `writer(tmp_path)` and move its result to `name` only when it succeeded."""
        tmp_path = self.pending(name)
        try:
            writer(tmp_path)
            return self.commit(tmp_path, name)
        finally:
            tmp_path.unlink(missing_ok=True)

    def pending(self, name: str) -> Path:
        """A new empty file beside `name` for its next version, to `commit` when complete."""
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{name}.", suffix=".part")
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
        """Named numpy arrays as one .npz (read back with numpy.load)."""
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

    def remove_stale(self, keep: set[str]) -> list[str]:
        """Remove what an earlier run into this folder wrote and this one did not, so the folder
        never mixes two runs (an old model.ncnn.param beside a failed report). Only files of the
        names deploykit writes are touched; anything else in the folder is left alone."""
        removed = []
        for path in self.path.iterdir():
            if path.name not in keep and path.is_file() and _written_by_deploykit(path.name):
                path.unlink()
                removed.append(path.name)
        return sorted(removed)

    def move_in(self, source: Path, name: str) -> Path:
        """Move a finished file (e.g. written by a converter in a scratch folder) into place."""
        target = self.file(name)
        try:
            os.replace(source, target)
        except OSError:  # another file system: copy beside the target, then rename
            self.write_with(name, lambda p: shutil.copyfile(source, p))
        return target

    def scratch(self) -> tempfile.TemporaryDirectory:
        """A private working folder inside the artifact folder, removed afterwards."""
        return tempfile.TemporaryDirectory(dir=self.path, prefix=".work-")


_STAGE_FILE = re.compile(r"^\d\d_[\w.-]+\.onnx$")
_HOST_TABLE = re.compile(r"^host_table_\d+\.npy$")
_RUN_FILES = {"convert.log", "model.ncnn.param", "model.ncnn.bin", "model_ncnn.py", "model.pnnx.param",
              "host_tail.onnx", "inputs.npz", "reference.npz", "deploykit.json",
              "optimize.log", "model.opt.param", "model.opt.bin",  # converter.optimize
              "calibrate.log", "model.int8.table", "model.int8.param", "model.int8.bin"}  # quantize.int8


def read_arrays(path: Path) -> dict[str, Any]:
    """The named numpy arrays of an .npz that `ArtifactDir.write_arrays` wrote."""
    import numpy as np

    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def _written_by_deploykit(name: str) -> bool:
    return name in _RUN_FILES or bool(_STAGE_FILE.match(name) or _HOST_TABLE.match(name))


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
