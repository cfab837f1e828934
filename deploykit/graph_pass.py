"""The pass API, at the import path a pass uses (`from deploykit.graph_pass import GraphPass, ...`):
the engine's names from deploykit.onnx.graph_pass and the toolkit's from deploykit.onnx.pass_toolkit."""

from deploykit.onnx.graph_pass import (AUTO, CONVERTERS, GraphPass, PassArgs, PassGraph, apply_pass, register_pass,
                                       registry, variant)
from deploykit.onnx.pass_toolkit import (SHAPE_ONLY_OPS, Builder, Matched, Refusal, Value, anchor_name,
                                         constant_value, dtype_of, integer_input_source, known_shape, known_value,
                                         lookup_table, rank, single_consumer, static_shape)

__all__ = ["AUTO", "CONVERTERS", "GraphPass", "PassArgs", "PassGraph", "apply_pass", "register_pass", "registry",
           "variant", "SHAPE_ONLY_OPS", "Builder", "Matched", "Refusal", "Value", "anchor_name", "constant_value",
           "dtype_of", "integer_input_source", "known_shape", "known_value", "lookup_table", "rank",
           "single_consumer", "static_shape"]
