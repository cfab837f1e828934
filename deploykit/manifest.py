"""deploykit.json: what an Android/iOS engineer needs to call the converted model."""

from __future__ import annotations

from typing import Any

import numpy as np

from deploykit.artifacts import sha256
from deploykit.converters.base import NO_BATCH_AXIS, Blob
from deploykit.host_lookup import on_host
from deploykit.ncnn_runtime import as_ncnn_dtype
from deploykit.stages.context import RunContext
from deploykit.stages.quantize import int8_summary

MANIFEST = "deploykit.json"
FORMAT = "deploykit-manifest/1"
CONVENTION = ("Shapes are in numpy order. An ncnn::Mat holds at most 4 axes and no batch axis: where "
              "`batch_axis` is true, axis 0 of the ONNX shape is a batch of one that the Mat drops, so "
              "`mat_shape` is the ONNX shape without it; the last axis of `mat_shape` is the Mat's w, "
              "then h, d and c. Feed integer inputs (token ids) as int32.")


def build_manifest(ctx: RunContext, report: dict[str, Any]) -> dict[str, Any]:
    conversion = ctx.conversion
    inputs = ctx.ordered_inputs()
    outputs = ctx.reference
    cut = next((s.details.get("cut") for s in ctx.reporter.stages if s.name == "cut"), None)
    int8 = int8_summary(ctx.reporter.stages)
    param, weights = ((ctx.artifacts.file(int8["param"]), ctx.artifacts.file(int8["bin"])) if int8
                      else (conversion.param, conversion.bin))
    return {
        "format": FORMAT,
        "param": {"file": param.name, "sha256": sha256(param)},
        "bin": {"file": weights.name, "sha256": sha256(weights)},
        "precision": "int8" if int8 else "fp16" if ctx.config.converter.fp16 else "fp32",
        "int8": None if int8 is None else {**int8, "fp32_param": conversion.param.name,
                                           "fp32_bin": conversion.bin.name},
        "inputs": [_describe(blob, inputs[blob.onnx_name], feed=True) for blob in conversion.inputs],
        "outputs": [_describe(blob, outputs[blob.onnx_name], feed=False) for blob in conversion.outputs],
        "convention": CONVENTION,
        "fp16_weights": ctx.config.converter.fp16,
        "optimized": ctx.unoptimized is not None,  # by ncnnoptimize, after the converter
        "converter": ctx.config.converter.name,
        "host_tail": None if cut is None else {
            "file": cut["tail"], "inputs": cut["tail_inputs"], "ops": cut["tail_ops"],
            "note": "run this ONNX model on the host, fed by the ncnn outputs of the same names"},
        "host_lookups": [_host_lookup(entry, conversion.inputs) for entry in on_host(report["stages"])],
        "shapes": _verified_shapes(ctx, param.name),
        "verified": {"max_abs": report["ncnn"]["parity"]["max_abs"], "metric": ctx.config.parity.metric,
                     "atol": ctx.config.parity.atol, "rtol": ctx.config.parity.rtol},
        "versions": report["versions"],
    }


def _verified_shapes(ctx: RunContext, param: str) -> list[dict[str, Any]]:
    """The input shapes the model is verified at, and the model that serves each."""
    record = next((s for s in ctx.reporter.stages if s.name == "shapes"), None)
    if record is None:
        return [{"inputs": {name: list(a.shape) for name, a in ctx.inputs.items() if name in
                            {s.name for s in ctx.config.inputs}}, "model": param, "converted": "once"}]
    rows = [{key: entry[key] for key in ("inputs", "model", "converted", "manifest") if key in entry}
            for entry in record.details["shapes"]]
    rows[0]["model"] = param  # the shipped model (int8 too) is verified at the shape it was converted at
    if param != record.details["shapes"][0]["model"]:
        for row in rows[1:]:
            if row["converted"] == "once":
                row["note"] = f"verified with {record.details['shapes'][0]['model']}, the model {param} was made from"
    return rows


def _host_lookup(entry: dict[str, Any], blobs: list[Blob]) -> dict[str, Any]:
    """An input the app fills on the host: the rows of a table looked up by the model's ids."""
    recipe = {key: value for key, value in entry.items() if key != "in_model"}  # every one listed is on the host
    return {"blob": next((b.blob for b in blobs if b.onnx_name == entry["input"]), None), **recipe,
            "note": "the ncnn model does not do this lookup: feed this blob the table's row for each id, in order, "
                    "with `table` the .npy file (row-major [V, D]) and the ids the values of the model input "
                    "named by `ids`"}


def _describe(blob: Blob, array: np.ndarray, *, feed: bool) -> dict[str, Any]:
    batch_axis = blob.batch_index != NO_BATCH_AXIS
    shape = list(array.shape)
    return {
        "blob": blob.blob,
        "onnx_name": blob.onnx_name,
        "onnx_shape": shape,
        "onnx_dtype": array.dtype.name,
        "dtype": (as_ncnn_dtype(array) if feed else array.astype(np.float32)).dtype.name,
        "batch_axis": batch_axis,
        "mat_shape": shape[1:] if batch_axis and shape else shape,
    }
