"""glibc's malloc, told to reuse large freed buffers (deploykit/core/malloc.py)."""

import os
import subprocess
import sys

import pytest

from deploykit.core import malloc

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")

# Allocates, fills and frees a 64 MiB buffer ten times, as protobuf or onnxruntime would with
# malloc (numpy asks for huge pages, which hides the effect); prints the minor page faults.
CHURN = """
import ctypes, resource, sys
from deploykit.core.malloc import reuse_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
applied = reuse_freed_memory() if sys.argv[1] == "on" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    buffer = libc.malloc(64 << 20)
    ctypes.memset(buffer, 1, 64 << 20)
    libc.free(buffer)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(mode: str, **env: str) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; other C libraries are left alone")
def test_large_freed_buffers_are_reused_instead_of_faulted_in_again():
    applied, faults_on = churn("on")
    _, faults_off = churn("off")
    pages = (64 << 20) // 4096
    assert applied
    assert faults_off >= 9 * pages  # every buffer faults in all of its pages
    assert faults_on <= 2 * pages  # the first one does; the others reuse it
    assert churn("on", DEPLOYKIT_MALLOC="default")[0] is False


def test_tools_get_the_setting_after_the_users_own_tunables(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DEPLOYKIT_MALLOC", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    env = malloc.tool_environment({"OMP_NUM_THREADS": "1"})
    # glibc takes the last value of a tunable given twice, so the user's own wins.
    assert env["GLIBC_TUNABLES"] == malloc.TUNABLES + ":glibc.malloc.trim_threshold=0"
    assert env["OMP_NUM_THREADS"] == "1" and env["PATH"] == os.environ["PATH"]
    monkeypatch.setenv("DEPLOYKIT_MALLOC", "default")
    assert malloc.tool_environment()["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=0"
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv("DEPLOYKIT_MALLOC")
    assert malloc.tool_environment()["GLIBC_TUNABLES"] == "glibc.malloc.trim_threshold=0"


# Keeps a freed 256 MiB buffer, then gives it back; prints the resident MiB at each point.
RELEASE = """
import ctypes, resource
from deploykit.core.malloc import release_freed_memory, reuse_freed_memory
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() >> 20
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
assert reuse_freed_memory()
start = resident()
buffer = libc.malloc(256 << 20)
ctypes.memset(buffer, 1, 256 << 20)
libc.free(buffer)
kept = resident()
release_freed_memory()
print(kept - start, resident() - start)
"""


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's; other C libraries are left alone")
def test_the_kept_memory_is_given_back_before_a_converter_runs():
    done = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True)
    kept, after = map(int, done.stdout.split())
    assert kept >= 250 and after <= 16
