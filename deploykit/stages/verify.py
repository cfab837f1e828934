"""The verdict: run the .param/.bin on the ncnn runtime and compare with the ONNX reference."""

from __future__ import annotations

from deploykit.ncnn_runtime import run_ncnn
from deploykit.stages.context import RunContext


def verify(ctx: RunContext) -> None:
    conversion = ctx.conversion
    feeds = [(blob, ctx.inputs[blob.onnx_name]) for blob in conversion.inputs]
    outputs = run_ncnn(conversion.param, conversion.bin, feeds, conversion.outputs,
                       timeout=ctx.config.converter.timeout)
    ctx.record.artifact = conversion.param.name
    ctx.check_parity(outputs, against="the export (on ncnn)")
