"""deploykit.json: what an Android/iOS engineer needs to call the converted model."""

from __future__ import annotations

import platform
from typing import Any, Optional

import numpy as np
import onnx

from deploykit.core.artifacts import sha256
from deploykit.ncnn.converters.base import NO_BATCH_AXIS, Blob
from deploykit.ncnn.runtime import as_ncnn_dtype
from deploykit.onnx.host_lookup import on_host
from deploykit.stages.context import RunContext
from deploykit.stages.cut import CutResult
from deploykit.stages.quantize import int8_summary
from deploykit.stages.shapes import ShapesResult
from deploykit.stages.verify import VerifyResult

MANIFEST = "deploykit.json"
FORMAT = "deploykit-manifest/1"
CONVENTION = ("Shapes are in numpy order. An ncnn::Mat holds at most 4 axes and no batch axis: where "
              "`batch_axis` is true, axis 0 of the ONNX shape is a batch of one that the Mat drops, so "
              "`mat_shape` is the ONNX shape without it; the last axis of `mat_shape` is the Mat's w, "
              "then h, d and c. Feed integer inputs (token ids) as int32.")


def build_manifest(ctx: RunContext, report: dict[str, Any]) -> dict[str, Any]:
    """deploykit.json for a verified run; writes the goldens it names (golden_*.bin) beside it."""
    conversion = ctx.converted
    inputs = ctx.ordered_inputs()
    outputs = ctx.expected
    fp16 = ctx.config.converter.fp16
    settings = ctx.config.parity.for_fp16() if fp16 else ctx.config.parity
    verify = ctx.reporter.result("verify", VerifyResult)
    options = (verify.ncnn_options if verify is not None else None) or {
        "use_fp16_storage": fp16, "use_fp16_arithmetic": fp16, "use_fp16_packed": fp16, "use_bf16_storage": False,
        "num_threads": 1, "light_mode": True}
    cut_result = ctx.reporter.result("cut", CutResult)
    cut = cut_result.cut if cut_result is not None else None
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
        "inputs": [{**_describe(blob, inputs[blob.onnx_name], feed=True),
                    "golden": _golden(ctx, f"golden_in{k}.bin", blob, inputs[blob.onnx_name], feed=True),
                    "preprocess": preprocessing(ctx, blob.onnx_name)} for k, blob in enumerate(conversion.inputs)],
        "outputs": [{**_describe(blob, outputs[blob.onnx_name], feed=False),
                     "golden": _golden(ctx, f"golden_out{k}.bin", blob, outputs[blob.onnx_name], feed=False)}
                    for k, blob in enumerate(conversion.outputs)],
        "goldens": GOLDENS,
        "convention": CONVENTION,
        "fp16_weights": ctx.config.converter.fp16,
        "optimized": ctx.unoptimized is not None,  # by ncnnoptimize, after the converter
        "converter": ctx.config.converter.name,
        "host_tail": None if cut is None else {
            "file": cut["tail"], **_tail_io(ctx.artifacts.file(cut["tail"])), "ops": cut["tail_ops"],
            "note": "run this ONNX model on the host, fed by the ncnn outputs of the same names (and the model "
                    "inputs it lists)"},
        "host_lookups": [_host_lookup(entry, conversion.inputs) for entry in on_host(report["stages"])],
        "shapes": _verified_shapes(ctx, param.name),
        "verified": {"max_abs": report["ncnn"]["parity"]["max_abs"], "metric": settings.metric,
                     "atol": settings.atol, "rtol": settings.rtol, "min_cosine": settings.min_cosine,
                     "outputs": {out["name"]: {"atol": out["atol"], "rtol": out["rtol"], "min_cosine": out.get(
                         "min_cosine"), "max_abs": out["max_abs"], "cosine": out["cosine"]}
                         for out in report["ncnn"]["parity"]["outputs"]},
                     "ncnn_options": options,
                     "where": f"on the host CPU's ncnn ({platform.machine()}, the ncnn Python package "
                              f"{report['versions'].get('ncnn')}), not on the device's: run the goldens on the "
                              "device to check its build of ncnn, whose fp16 and int8 kernels differ by CPU"},
        "versions": report["versions"],
    }


GOLDENS = ("golden_in<k>.bin / golden_out<k>.bin: the k-th input fed to ncnn and the output it must give (the "
           "reference, within `verified`), as raw little-endian values of `golden.dtype`, C order, in `golden.shape` "
           "(the Mat's shape). An ncnn::Mat pads each channel to 16 bytes: copy a golden in or compare it channel by "
           "channel (Mat::channel(q)), h * w values each.")


def _golden(ctx: RunContext, name: str, blob: Blob, array: np.ndarray, *, feed: bool) -> dict[str, Any]:
    values = as_ncnn_dtype(array) if feed else np.ascontiguousarray(array.astype(np.float32))
    described = _describe(blob, array, feed=feed)
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    path = ctx.artifacts.write_bytes(name, little.tobytes(order="C"))
    ctx.written.append(name)
    return {"file": name, "dtype": described["dtype"], "shape": described["mat_shape"], "sha256": sha256(path)}


def preprocessing(ctx: RunContext, name: str) -> dict[str, Any]:
    """What the app does before feeding an input, as far as the config knows it: `preprocess` as
    the user wrote it, an image input's mean and norm from the calibration images, and for token
    ids the range they were verified in and the padding id the graph compares them with."""
    spec = next((s for s in ctx.config.inputs if s.name == name), None)
    if spec is None:  # an input a pass made (rows looked up on the host): see host_lookups
        return {}
    said = spec.preprocess.model_dump(exclude_none=True)
    images = ctx.config.quantize.calibration.images if ctx.config.quantize.calibration else None
    if images is not None and len(ctx.config.inputs) == 1:
        for key in ("mean", "norm", "pixel"):
            said.setdefault(key, getattr(images, key))
        said.setdefault("note", "from quantize.calibration.images: ncnn's Mat::substract_mean_normalize(mean, norm) "
                                "on pixels in 0..255")
    if np.issubdtype(np.dtype(spec.dtype), np.integer):
        array = ctx.inputs[name]
        said.setdefault("id_range", list(spec.range) if spec.range else [int(array.min()), int(array.max()) + 1])
        pad = _compared_constant(ctx, name)
        if pad is not None:
            said.setdefault("pad_id", pad)
    return said


def _compared_constant(ctx: RunContext, name: str) -> Optional[int]:
    """The value the first model graph compares input `name` with (`ids == pad`): its padding id."""
    first = next((r.artifact for r in ctx.reporter.stages if r.name in ("export", "import") and r.artifact), None)
    if first is None:
        return None
    graph = onnx.load(str(ctx.artifacts.file(first)), load_external_data=False).graph
    constants = {init.name: init for init in graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute
                      and n.attribute[0].name == "value"})
    ids = {name} | {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] == name}
    for node in graph.node:
        if node.op_type != "Equal" or len(node.input) != 2:
            continue
        for a, b in (node.input, node.input[::-1]):
            if a in ids and b in constants:
                value = onnx.numpy_helper.to_array(constants[b])
                if value.size == 1 and float(value.reshape(-1)[0]).is_integer():
                    return int(value.reshape(-1)[0])
    return None


def _tail_io(path: Any) -> dict[str, Any]:
    """The host tail's inputs and outputs, with shapes and dtypes."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def values(items: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in
                           v.type.tensor_type.shape.dim]} for v in items]

    initializers = {init.name for init in graph.initializer}
    return {"inputs": values(v for v in graph.input if v.name not in initializers), "outputs": values(graph.output)}


def _verified_shapes(ctx: RunContext, param: str) -> list[dict[str, Any]]:
    """The input shapes the model is verified at, and the model that serves each."""
    record = ctx.reporter.result("shapes", ShapesResult)
    if record is None or record.shapes is None:
        return [{"inputs": {name: list(a.shape) for name, a in ctx.inputs.items() if name in
                            {s.name for s in ctx.config.inputs}}, "model": param, "converted": "once"}]
    rows = [{key: entry[key] for key in ("inputs", "model", "converted", "manifest") if key in entry}
            for entry in record.shapes]
    rows[0]["model"] = param  # the shipped model (int8 too) is verified at the shape it was converted at
    if param != record.shapes[0]["model"]:
        for row in rows[1:]:
            if row["converted"] == "once":
                row["note"] = f"verified with {record.shapes[0]['model']}, the model {param} was made from"
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
