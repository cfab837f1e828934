"""glibc's malloc, told to reuse the memory of large freed buffers.

A model's weights pass through many buffers of their full size in one run: the exported file
read back, the serialized model for the checker, onnxruntime's copy, the graph a pass exports,
and inside the converter as many again. glibc serves every buffer above 32 MiB with a fresh
mmap and returns it to the kernel when it is freed, so each new buffer faults in every 4 KiB page
once more: on a 137 MB model that is two million page faults and half of the run's time spent
in the kernel (scripts/README.md). With mmap off and up to TRIM_THRESHOLD of freed memory kept,
large buffers come from the heap and reuse what the last one freed. The cost is a higher
resident size between stages, by at most that threshold; it is given back before the converter
runs, which needs memory of its own while deploykit waits.

deploykit sets this for its own process (the `deploykit` command) and for the tools it starts
(the converter, onnxsim, the ncnn runtime). DEPLOYKIT_MALLOC=default leaves glibc as it is.
Other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from typing import Optional
from collections.abc import Mapping

TRIM_THRESHOLD = 1 << 30
TUNABLES = f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameter numbers in glibc's malloc.h
OPT_OUT = "DEPLOYKIT_MALLOC"


def _wanted() -> bool:
    return sys.platform.startswith("linux") and os.environ.get(OPT_OUT, "") != "default"


def reuse_freed_memory() -> bool:
    """Apply the setting to this process; whether it took effect."""
    if not _wanted():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc's mallopt returns 1 on success; musl's is a stub that returns 0.
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def release_freed_memory() -> None:
    """Give the freed memory this process keeps back to the kernel, before a long child process
    (the converter) that needs memory of its own while this one waits."""
    if not _wanted():
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


def tool_environment(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for a child process: this one's, with TMPDIR where this process keeps its
    temporary files, plus `extra`, plus the setting (added to any GLIBC_TUNABLES already set, which
    keep their own values)."""
    # A run keeps its temporary files in its own folder (deploykit/core/artifacts.py); so do its tools.
    env = {**os.environ, "TMPDIR": tempfile.gettempdir(), **(extra or {})}
    if _wanted():
        env["GLIBC_TUNABLES"] = ":".join(part for part in (TUNABLES, env.get("GLIBC_TUNABLES")) if part)
    return env
