"""onnxsim, kept from emitting ops of a non-standard domain that no NCNN converter reads.

onnxsim runs in a child process of its own (`Simplifier`), started as soon as the run knows the
export must be made: importing onnxsim takes about half a second, which then passes while torch
exports, and onnxsim can simplify the exported file while onnxruntime checks it. A
crash in onnxsim's C++ core ends as a message naming the file, not as the death of `deploykit`.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import onnx

from deploykit import __version__
from deploykit.core.artifacts import ArtifactDir, remember_sha256
from deploykit.core.cache import digest
from deploykit.core.errors import ConfigError, StageError
from deploykit.core.malloc import tool_environment
from deploykit.core.processes import child_options
from deploykit.onnx.onnx_io import nonstandard_nodes
from deploykit.stages.stage import Stage, StageResult

if TYPE_CHECKING:
    from deploykit.stages.context import RunContext

# These onnxsim fusions write com.microsoft::Attention and ::GroupQueryAttention; they are on
# by default in onnxsim 0.8, so they are always skipped here.
ALWAYS_SKIPPED = ("fuse_attention", "fuse_gqa")
# Skipped for one converter only. fuse_matmul_add_bias_into_gemm_batched turns MatMul(x[1,S,K], W) + b
# into Reshape([S,K]) -> Gemm -> Reshape, and onnx2ncnn writes a Reshape without its shape[0] (the
# batch axis), so the Gemm would get the wrong matrix; the MatMul + Add is what onnx2ncnn maps
# (InnerProduct and a BinaryOp). Pass gemm_to_matmul undoes the fusion in models imported simplified.
# For pnnx, both fusions hide the attention: fuse_qkv merges the q/k/v MatMuls into one MatMul +
# Split, and the Gemm form above replaces the Linear layers pnnx looks for, so pnnx no longer
# writes ncnn's MultiHeadAttention (48 layers instead of 22 in a ViT block, 1.09x slower on ncnn;
# scripts/README.md). Skipping them leaves the graph as the exporter wrote those parts. Likewise
# fuse_preceding_mul_into_conv folds the `* 0.5` of a GELU into the next Conv's weights, and pnnx
# then writes that GELU as Div/Erf/Add/Mul instead of one GELU layer (Whisper's encoder).
SKIPPED_FOR_CONVERTER = {"onnx2ncnn": ("fuse_matmul_add_bias_into_gemm_batched",),
                         "pnnx": ("fuse_qkv", "fuse_matmul_add_bias_into_gemm_batched",
                                  "fuse_preceding_mul_into_conv")}


# onnxsim would write a model larger than 100 MB with its weights in a separate file; deploykit's
# stage files keep them inline (as torch.onnx.export writes them) up to protobuf's limit.
INLINE_UP_TO = "2GB"
TARGET = "01_simplify.onnx"
CHILD = [sys.executable, "-m", "deploykit.stages.simplify"]  # runs _child() below


@dataclass
class SimplifyResult(StageResult):
    skipped_optimizers: Optional[list[str]] = None  # the onnxsim optimizers (and patterns) it was told to skip

    def ran(self) -> list[str]:
        if self.skipped_optimizers is None:
            return []
        return ["onnxsim, skipping the optimizers " + ", ".join(self.skipped_optimizers)]


class SimplifyStage(Stage):
    """onnxsim -> 01_simplify.onnx (`skipped` with simplify.enabled: false), checked against the export.
    This module owns onnxsim's process: the export (or import) starts it and hands it its file
    (start_simplifier, submit_model), this stage takes the result or, reused, ends it."""

    name = "simplify"
    result_type = SimplifyResult

    def applies(self, ctx: RunContext) -> bool:
        return ctx.config.converter.source == "onnx"

    def key(self, ctx: RunContext) -> str:
        config = ctx.config
        # The converter is part of the key: which onnxsim fusions are skipped depends on it.
        return digest("simplify", ctx.model_sha, config.simplify, config.converter.name, config.parity,
                      ctx.versions["onnxsim"], __version__)

    def run(self, ctx: RunContext) -> None:
        from deploykit.core.parity import run_onnx  # not imported in onnxsim's process, which runs this module

        simplify(ctx)
        if ctx.record.status != "skipped":
            ctx.check_parity(run_onnx(ctx.model_file, ctx.ordered_inputs(), stage=self.name), against="the export")

    def restore(self, ctx: RunContext, result: SimplifyResult) -> None:
        stop_simplifier(ctx)  # what onnxsim was given is not needed


SIMPLIFY = SimplifyStage()


def skipped_optimizers(ctx: RunContext) -> list[str]:
    for_converter = SKIPPED_FOR_CONVERTER.get(ctx.config.converter.name, ())
    return list(dict.fromkeys([*ALWAYS_SKIPPED, *for_converter, *ctx.config.simplify.skip_optimizers]))


class Simplifier:
    """One onnxsim run in a child process: `start` it early (it imports onnxsim and waits),
    `submit` the file to simplify, and `take` the result in the simplify stage. `close` ends it
    and removes what it wrote unless taken."""

    def __init__(self, artifacts: ArtifactDir) -> None:
        self._artifacts = artifacts
        self._scratch = Path(tempfile.mkdtemp(prefix="deploykit-onnxsim-"))
        self._log = open(self._scratch / "onnxsim.log", "w+b")
        try:
            self._process = subprocess.Popen(CHILD, stdin=subprocess.PIPE, stdout=self._log,
                                             stderr=subprocess.STDOUT, env=tool_environment(), **child_options())
        except OSError as exc:
            self._log.close()
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise StageError(f"onnxsim's process could not be started ({CHILD[0]}): {exc.strerror or exc}.",
                             stage="simplify", hint="set simplify.enabled: false to go on without it.") from None
        self.source: Optional[Path] = None
        self.source_sha = ""
        self._target: Optional[Path] = None

    def submit(self, source: Path, source_sha: str, skipped: list[str]) -> None:
        self._target = self._artifacts.pending(TARGET)
        request = {"source": str(source), "target": str(self._target), "skipped": skipped,
                   "answer": str(self._scratch / "answer.json")}
        stdin = self._process.stdin
        assert stdin is not None  # Popen(stdin=PIPE)
        try:
            stdin.write((json.dumps(request) + "\n").encode("utf-8"))
            stdin.close()
        except OSError:  # it died before reading; take() says how
            pass
        self.source, self.source_sha = source, source_sha

    def take(self) -> Path:
        """Wait for onnxsim; the path of the simplified model, not yet in its place."""
        code = self._process.wait()
        answer_file = self._scratch / "answer.json"
        answer = json.loads(answer_file.read_text(encoding="utf-8")) if answer_file.is_file() else {}
        self._log.seek(0)
        said = " | ".join(self._log.read().decode("utf-8", "replace").strip().splitlines()[-4:])[-800:]
        assert self.source is not None, "take() before submit()"
        name = self.source.name
        if answer.get("unknown"):
            raise ConfigError(f"simplify.skip_optimizers: onnxsim has no optimizer named "
                              f"{', '.join(map(repr, answer['unknown']))} (a pattern such as fuse_* must match "
                              f"one).", stage="simplify", hint="`onnxsim --list-default-optimizers` shows the names.")
        if answer.get("error"):
            raise StageError(f"onnxsim failed on {name}: {answer['error']}", stage="simplify",
                             hint="set simplify.enabled: false to go on without it, or add the optimizer named "
                                  "in the message to simplify.skip_optimizers.")
        if code != 0 or "ok" not in answer:
            how = f"crashed ({signal.Signals(-code).name})" if code < 0 else f"exited {code}"
            raise StageError(f"onnxsim {how} on {name}: {said or 'no message'}", stage="simplify",
                             hint="set simplify.enabled: false to go on without it, or skip its optimizers one "
                                  "by one in simplify.skip_optimizers to find the one that fails.")
        if not answer["ok"]:
            raise StageError("onnxsim's own check says the simplified model differs from its input.", stage="simplify",
                             hint="set simplify.enabled: false, or skip optimizers one by one in "
                                  "simplify.skip_optimizers.")
        target, self._target = self._target, None
        assert target is not None
        return target

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._log.close()
        if self._target is not None:
            self._target.unlink(missing_ok=True)
        shutil.rmtree(self._scratch, ignore_errors=True)


def start_simplifier(ctx: RunContext) -> None:
    """Start onnxsim's process if the run will simplify; the export or import stage then submits
    its file as soon as it is written."""
    if ctx.config.simplify.enabled and SIMPLIFY.applies(ctx) and ctx.simplifier is None:
        ctx.simplifier = Simplifier(ctx.artifacts)


def submit_model(ctx: RunContext) -> None:
    """Hand the current model file to onnxsim, which simplifies it while this process goes on."""
    if ctx.simplifier is not None and ctx.simplifier.source is None:
        ctx.simplifier.submit(ctx.model_file, ctx.model_sha, skipped_optimizers(ctx))


def stop_simplifier(ctx: RunContext) -> None:
    """End onnxsim's process (a reused simplify stage does not need what it was given)."""
    if ctx.simplifier is not None:
        ctx.simplifier.close()
        ctx.simplifier = None


def simplify(ctx: RunContext) -> None:
    if not ctx.config.simplify.enabled:
        ctx.record.status = "skipped"
        return
    start_simplifier(ctx)
    submit_model(ctx)
    simplifier, ctx.simplifier = ctx.simplifier, None
    assert simplifier is not None  # start_simplifier made one, submit_model gave it the model
    try:
        if simplifier.source_sha != ctx.model_sha:
            raise StageError(f"onnxsim was given {simplifier.source}, not the current model {ctx.model_file}.",
                             stage="simplify", hint="this is a bug in deploykit; please report it.")
        before = {(n.domain, n.op_type) for n in nonstandard_nodes(ctx.model)}
        ctx.result(SimplifyResult).skipped_optimizers = skipped_optimizers(ctx)
        written = simplifier.take()
    finally:
        simplifier.close()
    try:
        data = written.read_bytes()
        simplified = onnx.load_from_string(data)
        added = [n for n in nonstandard_nodes(simplified) if (n.domain, n.op_type) not in before]
        if added:
            listed = ", ".join(f"{n.domain}::{n.op_type} ({n.name or 'unnamed'})" for n in added[:5])
            raise StageError(f"onnxsim fused parts of the graph into ops of a non-standard domain that no NCNN "
                             f"converter reads: {listed}.", stage="simplify",
                             hint="add the fusion that made them to simplify.skip_optimizers, or set "
                                  "simplify.enabled: false.")
        path = ctx.artifacts.commit(written, TARGET)
    finally:
        written.unlink(missing_ok=True)  # if it was not committed
    remember_sha256(path, data)
    ctx.set_model(simplified, path)


OPTIONAL_IMPORTS = ("torch", "sympy")


def _child() -> int:
    """The child process: import onnxsim, then simplify the one file asked for on stdin."""
    # onnxsim tries torch (for PPQ quantization) and sympy (to print symbolic sizes) and goes on
    # without them; neither is used here, and importing them would double the wait.
    for optional in OPTIONAL_IMPORTS:
        sys.modules.setdefault(optional, None)  # type: ignore[arg-type]  # None: importing it fails at once
    import onnxsim
    from onnxsim import onnxsim_cpp2py_export as core

    line = sys.stdin.readline()
    if not line:
        return 0  # not needed after all
    request = json.loads(line)
    known = sorted(set(core._list_other_optimizers()) | set(core._list_optimizers()))
    # A name may be a pattern (`fuse_*`: every fusion), which must match at least one optimizer.
    matched = {pattern: fnmatch.filter(known, pattern) for pattern in request["skipped"]}
    answer: dict = {"unknown": [pattern for pattern, names in matched.items() if not names]}
    if not answer["unknown"]:
        skipped = list(dict.fromkeys(name for names in matched.values() for name in names))
        try:
            _, answer["ok"] = onnxsim.simplify(request["source"], skipped_optimizers=skipped,
                                                output_path=request["target"], external_data_threshold=INLINE_UP_TO)
        except Exception as exc:
            answer["error"] = f"{type(exc).__name__}: " + " ".join(str(exc).strip().splitlines()[:2])[:800]
    Path(request["answer"]).write_text(json.dumps(answer), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_child())
