"""A read-only view of an ONNX graph for the pre-flight check: constants (initializers and Constant
nodes alike), shapes and dtypes from shape inference, producers and consumers; and dry runs of
the passes' own `match` on the same graph, which say what a pass would rewrite.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Optional
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from deploykit.onnx.graph_pass import GraphPass, PassGraph, Refusal, registry

STANDARD_DOMAINS = ("", "ai.onnx")

# Reshape(4-D -> 5/6-D) -> Transpose(perm) -> Reshape(-> 4-D) with these perms is a channel shuffle,
# pixel shuffle or reorg, which both converters fuse into one ncnn layer.
SHUFFLE_PERMS = frozenset({(0, 2, 1, 3, 4), (0, 1, 4, 2, 5, 3), (0, 1, 3, 5, 2, 4)})


class GraphView:
    """Read-only lookups over the top-level graph of an (inferred) model."""

    def __init__(self, model: onnx.ModelProto, initializers: Optional[Iterable[onnx.TensorProto]] = None,
                 passes: Iterable[GraphPass] = (), source: Optional[onnx.ModelProto] = None,
                 pass_graph: Optional[PassGraph] = None) -> None:
        """`initializers` hold the values when `model` is a copy without them (shape inference ran
        on one); a value is converted from its initializer when first read, dims never need it.
        The dry runs of `passes` (each other pass with its defaults) walk `source`, the model
        `model` was inferred from, in `pass_graph`: the graph the run's passes share."""
        graph = model.graph
        self.source = source if source is not None else model
        self.pass_graph = pass_graph if pass_graph is not None else PassGraph()
        self.passes = {p.name: p for p in passes}
        self._dry_runs: dict[str, dict[int, tuple[int, Any]]] = {}
        self.nodes = list(graph.node)
        self.position = {id(node): index for index, node in enumerate(self.nodes)}
        self.opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 1)
        self.initializers = {t.name: t for t in (graph.initializer if initializers is None else initializers)}
        self.constants: dict[str, np.ndarray] = {}  # Constant nodes' values, and initializers' once read
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS:
                value = constant_node_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value
        self.types: dict[str, onnx.TypeProto.Tensor] = {}
        for info in (*graph.input, *graph.value_info, *graph.output):
            if info.type.HasField("tensor_type"):
                self.types[info.name] = info.type.tensor_type

    @property
    def constant_names(self) -> set[str]:
        """Every tensor whose value is known: initializers and Constant nodes' outputs."""
        return set(self.constants) | set(self.initializers)

    def const(self, name: str) -> Optional[np.ndarray]:
        if name in self.initializers and name not in self.constants:
            self.constants[name] = numpy_helper.to_array(self.initializers[name])
        return self.constants.get(name) if name else None

    def shape(self, name: str) -> Optional[list[Optional[int]]]:
        if name in self.initializers:
            return list(self.initializers[name].dims)
        if name in self.constants:
            return list(self.constants[name].shape)
        tensor = self.types.get(name)
        if tensor is None or not tensor.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]

    def rank(self, name: str) -> Optional[int]:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def elem_type(self, name: str) -> Optional[int]:
        if name in self.initializers:
            return self.initializers[name].data_type
        if name in self.constants:
            return onnx.helper.np_dtype_to_tensor_dtype(self.constants[name].dtype)
        tensor = self.types.get(name)
        return tensor.elem_type if tensor is not None and tensor.elem_type else None

    def single_consumer(self, name: str) -> Optional[onnx.NodeProto]:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 else None

    @cached_property
    def static_tensors(self) -> set[str]:
        """Tensors known when the converter runs: constants, shapes, and what is computed from them only."""
        static = self.constant_names
        for node in self.nodes:
            inputs = [name for name in node.input if name]
            if node.domain in STANDARD_DOMAINS and (node.op_type in ("Shape", "Size") or
                                                    (inputs and all(name in static for name in inputs))):
                static.update(node.output)
        return static

    def computed_inputs(self, node: onnx.NodeProto) -> list[str]:
        """The inputs of `node` that another node computes (not constants, not graph inputs)."""
        return [name for name in node.input if name in self.producer and self.const(name) is None]

    def is_static_node(self, node: onnx.NodeProto) -> bool:
        inputs = [name for name in node.input if name]
        return bool(inputs) and all(name in self.static_tensors for name in inputs)

    # Dry runs of the passes: what their own `match` says of each node, nothing rewritten

    def pass_match(self, pass_name: str, node: onnx.NodeProto) -> Optional[Any]:
        """What pass `pass_name`'s `match` returns for the rewrite that covers `node`, else None."""
        found = self._dry_run(pass_name).get(self.position[id(node)])
        return None if found is None or isinstance(found[1], Refusal) else found[1]

    def pass_refusal(self, pass_name: str, node: onnx.NodeProto) -> Optional[Refusal]:
        """Why pass `pass_name` refuses `node` itself, else None."""
        found = self._dry_run(pass_name).get(self.position[id(node)])
        return found[1] if found is not None and isinstance(found[1], Refusal) else None

    def _dry_run(self, pass_name: str) -> dict[int, tuple[int, Any]]:
        """Node index -> (index of the node matched, its match or Refusal), for every node the
        pass's matches cover."""
        if pass_name not in self._dry_runs:
            graph_pass = self.passes.get(pass_name)
            if graph_pass is None:
                cls = registry()[pass_name]
                graph_pass = cls.create(cls.Args())
            self._dry_runs[pass_name] = self.pass_graph.dry_run(self.source, graph_pass)
        return self._dry_runs[pass_name]

    @cached_property
    def shuffle_chain_nodes(self) -> set[int]:
        """id(node) for Reshape(4-D -> 5/6-D) -> Transpose -> Reshape(-> 4-D) with a perm of SHUFFLE_PERMS:
        the channel shuffle, pixel shuffle and reorg forms both converters fuse into one ncnn layer."""
        found: set[int] = set()
        for node in self.nodes:
            if node.op_type != "Reshape" or self.rank(node.input[0]) != 4 or self.rank(node.output[0]) not in (5, 6):
                continue
            transpose = self.single_consumer(node.output[0])
            if transpose is None or transpose.op_type != "Transpose" or \
                    tuple(attr(transpose, "perm", ())) not in SHUFFLE_PERMS:
                continue
            back = self.single_consumer(transpose.output[0])
            if back is not None and back.op_type == "Reshape" and self.rank(back.output[0]) == 4:
                found.update({id(node), id(transpose), id(back)})
        return found


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def constant_node_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    for attribute in node.attribute:
        if attribute.name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(numpy_helper.to_array(attribute.t) if attribute.name == "value"
                              else onnx.helper.get_attribute_value(attribute))
    return None


def attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def input_at(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def kind(elem_type: Optional[int]) -> Optional[str]:
    if elem_type is None:
        return None
    if elem_type == onnx.TensorProto.BOOL:
        return "bool"
    return "float" if elem_type in FLOAT_TYPES else "integer"


def ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]
