"""Child processes that end with deploykit, and signals that end deploykit through its cleanup.

A signal deploykit can catch (SIGINT, SIGTERM, SIGHUP) becomes an `Interrupted` exception in the
main thread, so every `finally` on the way out runs: the converter's process group is killed,
onnxsim's and the ncnn runtime's processes are ended, and the run's staging folder is dealt with.
Against SIGKILL, which nothing can catch, every child is started with the kernel's
parent-death signal (Linux), so it is killed the moment deploykit dies; what the killed run left
on disk, the next run into the same folder removes (deploykit/core/artifacts.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator

from deploykit.core.errors import Interrupted

CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # prctl's option number in linux/prctl.h


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """For the duration, SIGINT, SIGTERM and SIGHUP raise `Interrupted` where the main thread is.
    A handler someone else installed is left alone; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for signum in CAUGHT:
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler, _raise_interrupted):
            saved[signum] = current
            signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the caught signals back for the duration (a few renames that must not stop halfway);
    the first that arrived meanwhile is raised again at the end, to the handler before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    saved = {signum: signal.getsignal(signum) for signum in CAUGHT}
    for signum in CAUGHT:
        signal.signal(signum, lambda number, _frame: arrived.append(number))
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if arrived:
            signal.raise_signal(arrived[0])


def _parent_death_signal() -> Any:
    """A function for `preexec_fn` that makes the child die with this process (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return die_with_parent


def child_options(*, own_group: bool = False) -> dict[str, Any]:
    """Keyword arguments for `subprocess.Popen`/`run`: the child dies with deploykit; with
    `own_group`, it leads a process group of its own, which `end_group` ends with its children."""
    options: dict[str, Any] = {}
    die_with_parent = _parent_death_signal()
    if die_with_parent is not None:
        options["preexec_fn"] = die_with_parent
    if own_group and os.name == "posix":
        options["start_new_session"] = True
    return options


def end_group(process: subprocess.Popen) -> None:
    """Kill a child started with `own_group`, and every process it started, and reap it."""
    if os.name == "posix":
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone
    if process.poll() is None:
        process.kill()
    process.wait()
