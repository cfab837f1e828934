"""After onnx2ncnn: put the table lookups that `embed_layer` took out of the ONNX graph back into
the ncnn model as ncnn's Embed layers, so the app feeds the ids and the model looks the rows up.

Each lookup the pass recorded (`host_lookups` with `in_model`) left a graph input for its rows,
which onnx2ncnn wrote as an Input layer, and kept the ids input, which nothing in the graph reads.
The stage replaces the rows' Input layer with `Embed 0=D 1=V 2=0 3=V*D` reading the ids (through a
Split when several tables are read by the same ids), placed right after the Input layers, so its
weights, the table's rows, come first in the .bin, in layer order (ncnn reads the .bin layer by
layer). The rows' blob keeps its name, so every layer that read the input now reads the Embed.
The edited model is written as model.embed.param/.bin (the converter's files stay as it wrote
them, for the stage cache); it is the one ncnnoptimize and the verify stage take, and the one shipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from deploykit import __version__
from deploykit.core.artifacts import sha256
from deploykit.core.cache import digest
from deploykit.core.errors import StageError
from deploykit.ncnn.converters.base import Blob
from deploykit.ncnn.param import Layer, NcnnParam
from deploykit.onnx.host_lookup import recorded
from deploykit.stages.context import RunContext
from deploykit.stages.stage import Stage, StageResult

QUANTIZE_TAG_FLOAT32 = np.zeros(1, np.int32)  # the tag ncnn's ModelBin reads before raw float32 weights
PARAM, BIN = "model.embed.param", "model.embed.bin"


@dataclasses.dataclass
class EmbedResult(StageResult):
    embedded: Optional[list[dict]] = None  # each lookup now an Embed layer: blob, ids, table_shape
    inputs: Optional[list[Blob]] = None  # the blobs the app feeds now (the ids instead of the rows)

    def to_report(self) -> dict[str, Any]:
        report = super().to_report()
        if "inputs" in report:
            report["inputs"] = [blob.to_dict() for blob in report["inputs"]]
        return report

    @classmethod
    def from_report(cls, record: Mapping[str, Any]) -> EmbedResult:
        result = super().from_report(record)
        result.inputs = [Blob(**b) for b in record["inputs"]]
        return result


class EmbedStage(Stage):
    """After onnx2ncnn, before ncnnoptimize and verify (the Embed layers are part of the model):
    model.embed.param/.bin."""

    name = "embed"
    result_type = EmbedResult

    def title(self, ctx: RunContext) -> str:
        return "writing the table lookups as ncnn Embed layers"

    def applies(self, ctx: RunContext) -> bool:
        return bool(in_model_lookups(ctx))

    def key(self, ctx: RunContext) -> str:
        tables = [(entry["input"], entry["ids"], sha256(ctx.artifacts.file(entry["table"])))
                  for entry in in_model_lookups(ctx)]
        return digest("embed", sha256(ctx.converted.param), sha256(ctx.converted.bin), tables, __version__)

    def run(self, ctx: RunContext) -> None:
        embed(ctx)

    def restore(self, ctx: RunContext, result: EmbedResult) -> None:
        assert result.inputs is not None  # from_report
        ctx.conversion = dataclasses.replace(ctx.converted, param=ctx.artifacts.file(PARAM),
                                             bin=ctx.artifacts.file(BIN), inputs=result.inputs)


EMBED = EmbedStage()


def in_model_lookups(ctx: RunContext) -> list[dict]:
    return [entry for entry in recorded(record.to_dict() for record in ctx.reporter.stages)
            if entry.get("in_model")]


def embed(ctx: RunContext) -> None:
    conversion = ctx.converted
    lookups = in_model_lookups(ctx)
    model = NcnnParam.read(conversion.param)
    leading_inputs = 0
    while leading_inputs < len(model.layers) and model.layers[leading_inputs].kind == "Input":
        leading_inputs += 1
    inputs = {layer.tops[0]: layer for layer in model.layers[:leading_inputs]}
    embeds: list[Layer] = []
    weights: list[np.ndarray] = []
    declared = ctx.ordered_inputs()
    for entry in lookups:
        rows, ids = entry["input"], entry["ids"]
        if ids in declared and not np.issubdtype(declared[ids].dtype, np.integer):
            raise StageError(f"the ids input {ids!r} that the Embed for {entry['table']} reads is "
                             f"{declared[ids].dtype} in the converted graph: a later pass made it float, and "
                             "Embed reads integers.", stage="embed",
                             hint="switch off the pass that did (embedding_gather, for a lookup embed_layer "
                                  "refused: `{name: embedding_gather, enabled: false}`), or embed_layer.")
        if rows not in inputs or ids not in inputs:
            missing = rows if rows not in inputs else ids
            raise StageError(f"{conversion.param.name} has no Input layer {missing!r} at its top, where the embed "
                             f"stage puts the lookup of {entry['table']}.", stage="embed",
                             hint="switch the pass off with `{name: embed_layer, enabled: false}` under passes:, "
                                  "and report the model.")
        table = np.load(ctx.artifacts.file(entry["table"]), allow_pickle=False).astype(np.float32)
        vocab, width = table.shape
        model.layers.remove(inputs.pop(rows))
        embeds.append(Layer("Embed", f"{rows}_embed", [ids], [rows],
                            [f"0={width}", f"1={vocab}", "2=0", f"3={vocab * width}"]))
        weights += [QUANTIZE_TAG_FLOAT32, np.ascontiguousarray(table)]
    readers: dict[str, list[Layer]] = {}
    for layer in embeds:
        readers.setdefault(layer.bottoms[0], []).append(layer)
    splits = []
    for ids, layers in readers.items():
        if len(layers) > 1:  # ncnn frees a blob once it has been read; each reader gets its own copy
            copies = [f"{ids}_splitncnn_embed_{k}" for k in range(len(layers))]
            splits.append(Layer("Split", f"{ids}_splitncnn_embed", [ids], copies))
            for layer, copy in zip(layers, copies):
                layer.bottoms = [copy]
    start = len(inputs)  # the Input layers left at the top
    model.layers[start:start] = splits + embeds
    original = conversion.bin.read_bytes()

    def write_weights(path: Path) -> None:
        with open(path, "wb") as weights_file:
            for array in weights:
                array.tofile(weights_file)
            weights_file.write(original)

    param, weights_path = ctx.artifacts.write_with(PARAM, model.write), ctx.artifacts.write_with(BIN, write_weights)
    for path in (param, weights_path):
        ctx.wrote(path)
    embedded = {entry["input"] for entry in lookups}
    fed = [blob for blob in conversion.inputs if blob.onnx_name not in embedded]
    if not any(blob.onnx_name in {entry["ids"] for entry in lookups} for blob in fed):
        fed += [Blob(ids, ids) for ids in readers]
    ctx.conversion = dataclasses.replace(conversion, param=param, bin=weights_path, inputs=fed)
    ctx.record.artifact = PARAM
    result = ctx.result(EmbedResult)
    result.embedded = [{"blob": e["input"], "ids": e["ids"], "table_shape": e["table_shape"]} for e in lookups]
    result.inputs = list(fed)
