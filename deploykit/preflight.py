"""Pre-flight check: every ONNX node a converter will refuse or get wrong, why, and what fixes it.

`check_model(model, "pnnx" | "onnx2ncnn")` walks the graph once; for each node the first rule of
the target (deploykit/preflight_rules.py) whose op types and condition match gives a Finding.
The conditions below read the graph only: constants (initializers and Constant nodes alike),
shapes from ONNX shape inference run on a copy, producers and consumers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Callable, Iterable, Optional

import numpy as np
import onnx
from onnx import numpy_helper

from deploykit.errors import ConfigError
from deploykit.graph_pass import with_inferred_shapes
from deploykit.preflight_rules import (COMPARISONS, ONNX2NCNN_OPS, ONNX2NCNN_PERMS_5D, REDUCTIONS, SHUFFLE_PERMS,
                                      HOST_CUT, TARGETS, Target)

STANDARD_DOMAINS = ("", "ai.onnx")
_BINARY_OPS_FUSING_EXPAND = ("Add", "Sub", "Mul", "Div", "Min", "Max")


@dataclass(frozen=True)
class Finding:
    node: str    # ONNX node name, or "#<index>" for an unnamed node
    op: str      # op type, "<domain>::<op type>" outside the standard domain
    reason: str  # why the target refuses or mis-converts it, one sentence
    fix: str     # a pass name, or "no pass — do this on the host ..."

    def to_dict(self) -> dict:
        return asdict(self)


def check_model(model: onnx.ModelProto, target: str) -> list[Finding]:
    """Every node of `model` that `target` ("pnnx" or "onnx2ncnn") cannot take, in graph order."""
    rules = TARGETS.get(target)
    if rules is None:
        raise ConfigError(f"no pre-flight rules for target {target!r}.", stage="check",
                          hint=f"use one of: {', '.join(sorted(TARGETS))}.")
    graph = GraphView(with_inferred_shapes(model)[0], model.graph.initializer)
    findings = []
    for index, node in enumerate(graph.nodes):
        finding = _first_finding(graph, node, index, rules)
        if finding is not None:
            findings.append(finding)
    return findings


def _first_finding(graph: GraphView, node: onnx.NodeProto, index: int, rules: Target) -> Optional[Finding]:
    custom = node.domain not in STANDARD_DOMAINS
    static = not custom and graph.is_static_node(node)
    if static and rules.static_nodes == "skip":
        return None
    for rule in rules.rules:
        if custom != (rule.when == "non_standard_domain") or (rule.ops and node.op_type not in rule.ops):
            continue
        details = CONDITIONS[rule.when](graph, node) if rule.when else {}
        if details is None:
            continue
        op = f"{node.domain}::{node.op_type}" if custom else node.op_type
        reason, fix = rule.reason.format(op=op, **details), rule.fix
        if static and rule.name not in rules.static_exempt:
            reason, fix = reason[:-1] + "; every input is known at conversion time, so it folds away.", "fold_shapes"
        if fix == HOST_CUT and (cut := graph.computed_inputs(node)):
            reason += f" The config line that cuts before it: `cut_at: [{', '.join(cut)}]`."
        return Finding(node.name or f"#{index}", op, reason, fix)
    return None


class GraphView:
    """Read-only lookups over the top-level graph of an (inferred) model."""

    def __init__(self, model: onnx.ModelProto,
                 initializers: Optional[Iterable[onnx.TensorProto]] = None) -> None:
        """`initializers` hold the values when `model` is a copy without them (shape inference ran
        on one); a value is converted from its initializer when first read, dims never need it."""
        graph = model.graph
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
                value = _constant_node_value(node)
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

    @cached_property
    def id_mask_nodes(self) -> dict[int, object]:
        """id(node) -> pad id, for every Equal/Not/Cast of an Equal(ids, c) [-> Not]* [-> Cast(float)] padding
        mask whose ids also index a constant table (the pattern pass id_mask_lookup rewrites)."""
        found: dict[int, object] = {}
        for node in self.nodes:
            if node.op_type != "Equal" or node.domain not in STANDARD_DOMAINS:
                continue
            pad_index = next((i for i, name in enumerate(node.input) if self.const(name) is not None), None)
            if pad_index is None:
                continue
            pad, ids = self.const(node.input[pad_index]), node.input[1 - pad_index]
            if pad.size != 1 or not np.issubdtype(pad.dtype, np.integer) or not self._indexes_a_table(ids):
                continue
            chain = [node]
            while (user := self.single_consumer(chain[-1].output[0])) is not None and user.op_type == "Not":
                chain.append(user)
            cast = self.single_consumer(chain[-1].output[0])
            if cast is not None and cast.op_type == "Cast" and _attr(cast, "to") in _FLOAT_TYPES:
                chain.append(cast)  # else a boolean mask: the lookup is cast back to bool
            for member in chain:
                found[id(member)] = pad.reshape(-1)[0].item()
        return found

    def _indexes_a_table(self, ids: str) -> bool:
        return any(user.op_type == "Gather" and user.input[1] == ids and _attr(user, "axis", 0) in (0, -2)
                   and (table := self.const(user.input[0])) is not None and table.ndim == 2
                   for user in self.consumers.get(ids, []))

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
                    tuple(_attr(transpose, "perm", ())) not in SHUFFLE_PERMS:
                continue
            back = self.single_consumer(transpose.output[0])
            if back is not None and back.op_type == "Reshape" and self.rank(back.output[0]) == 4:
                found.update({id(node), id(transpose), id(back)})
        return found


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _constant_node_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    for attribute in node.attribute:
        if attribute.name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(numpy_helper.to_array(attribute.t) if attribute.name == "value"
                              else onnx.helper.get_attribute_value(attribute))
    return None


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _kind(elem_type: Optional[int]) -> Optional[str]:
    if elem_type is None:
        return None
    if elem_type == onnx.TensorProto.BOOL:
        return "bool"
    return "float" if elem_type in _FLOAT_TYPES else "integer"


def _ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


# ---------------------------------------------------------------------------------------------
# Conditions: (graph, node) -> None when the rule does not apply, else the details its reason uses


Condition = Callable[[GraphView, onnx.NodeProto], Optional[dict]]


def _non_standard_domain(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {"domain": node.domain} if node.domain not in STANDARD_DOMAINS else None


def _id_mask_chain(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    pad = graph.id_mask_nodes.get(id(node))
    return None if pad is None else {"pad": pad}


def _input_is_boolean(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    source = graph.producer.get(node.input[0])
    boolean = graph.elem_type(node.input[0]) == onnx.TensorProto.BOOL or (
        source is not None and source.op_type in COMPARISONS)
    return {} if boolean else None


def _whole_exponent(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    exponent = graph.const(node.input[1]) if len(node.input) > 1 else None
    if exponent is None or exponent.size != 1:
        return None
    value = float(exponent.reshape(()))
    return {"n": f"{value:g}"} if value == round(value) and value not in (0.0, 1.0, 2.0) else None


def _square_outside_layernorm(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn fuses Sub -> Pow(2) -> ReduceMean (the variance of a LayerNorm) into ncnn LayerNorm.
    exponent = graph.const(node.input[1]) if len(node.input) > 1 else None
    if exponent is None or exponent.size != 1 or float(exponent.reshape(())) != 2.0:
        return None
    source, reader = graph.producer.get(node.input[0]), graph.single_consumer(node.output[0])
    if source is not None and source.op_type == "Sub" and reader is not None and reader.op_type == "ReduceMean":
        return None
    return {}


def _cast_to_same_type(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    source = graph.elem_type(node.input[0])
    if source is None or source != _attr(node, "to"):
        return None
    return {"dtype": onnx.helper.tensor_dtype_to_np_dtype(source).name}


def _cast_changes_kind(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    source, target = _kind(graph.elem_type(node.input[0])), _kind(_attr(node, "to"))
    return {"kinds": f"{source} and {target}"} if source and target and source != target else None


def _expand_not_fused(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn's fuse_expand_broadcast: the Expand's only consumer is the very next node, a binary op.
    user = graph.single_consumer(node.output[0])
    if (user is not None and user.op_type in _BINARY_OPS_FUSING_EXPAND
            and graph.position[id(user)] == graph.position[id(node)] + 1):
        return None
    return {}


def _table(graph: GraphView, node: onnx.NodeProto) -> Optional[np.ndarray]:
    table = graph.const(node.input[0])
    return table if table is not None and table.ndim == 2 and _attr(node, "axis", 0) in (0, -2) else None


def _gather_from_table(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {} if _table(graph, node) is not None else None


def _gather_from_table_by_input_ids(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # what embed_layer takes: the ids an integer graph input of static shape [1, T], read directly
    ids, shape = node.input[1], graph.shape(node.input[1])
    integer = _kind(graph.elem_type(ids)) == "integer"
    is_input = ids not in graph.producer and graph.const(ids) is None
    ok = integer and is_input and shape is not None and len(shape) == 2 and shape[0] == 1 and shape[1]
    return {} if _table(graph, node) is not None and ok else None


def _gather_from_table_with_axis(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {} if _table(graph, node) is not None and _attr(node, "axis") is not None else None


def _gather_constant_index(graph: GraphView, node: onnx.NodeProto, *, vector_only: bool = False) -> Optional[dict]:
    index = graph.const(node.input[1])
    if graph.const(node.input[0]) is not None or index is None or (vector_only and index.ndim == 0):
        return None
    return {"index": index.tolist(), "axis": _attr(node, "axis", 0)}


def _gather_not_a_crop(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn writes a Gather by a constant scalar on a positive axis past the batch as a Crop (right
    # on the binary); by computed indices, or along axis 0, it gives wrong numbers or no layer.
    rank = graph.rank(node.input[0])
    along_batch = rank is not None and (rank < 2 or _attr(node, "axis", 0) % rank == 0)
    return {} if graph.const(node.input[1]) is None or along_batch else None


def _gather_constant_vector_index(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return _gather_constant_index(graph, node, vector_only=True)


def _axes_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if not _input(node, 1):
        return None
    consequence = {"Squeeze": "squeezes every axis of size 1",
                   "Unsqueeze": "writes an ExpandDims without axes"}.get(node.op_type, "reduces over every axis")
    return {"consequence": consequence}


def _split_sizes_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if not _input(node, 1):
        return None
    sizes = graph.const(node.input[1])
    if sizes is not None and len(set(_ints(sizes))) <= 1:
        return None
    return {"sizes": _ints(sizes) if sizes is not None else "run-time sizes"}


def _pad_value_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if not _input(node, 2):
        return None
    value = graph.const(node.input[2])
    if value is not None and not np.any(value):
        return None
    return {"value": value.reshape(-1)[0].item() if value is not None else "a run-time value"}


def _acts_on_batch_axis(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    rank = graph.rank(node.input[0])
    if rank is None or rank < 2:
        return None  # 1-D shape vectors have no batch axis
    op = node.op_type
    if op in ("Squeeze", "Unsqueeze") or op in REDUCTIONS:
        axes = graph.const(node.input[1]) if _input(node, 1) else _attr(node, "axes")
        if axes is None:
            return None  # no axes: a reduction over every axis is right for a batch of one
        axes = _ints(axes)
        rank += len(axes) if op == "Unsqueeze" else 0
    else:
        default = 0 if op == "Split" else (-1 if op == "Softmax" and graph.opset >= 13 else 1)
        axes = [_attr(node, "axis", default)]
    if all(axis % rank != 0 for axis in axes):
        return None
    consequence = {"Concat": "joins along ncnn axis -1, the last one",
                   "Softmax": "normalises along ncnn axis -1, the last one"}.get(
        op, f'prints "Unsupported {"split axis" if op == "Split" else "axes"} !"')
    return {"rank": graph.rank(node.input[0]), "consequence": consequence}


def _axis_read_wrong(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn writes `axis - 1` from the attribute (default 1 for Softmax/Flatten, 0 for Split).
    if node.op_type in ("Squeeze", "Unsqueeze"):  # the `axes` attribute of opsets before 13
        axes = _attr(node, "axes") or []
        return {"axis": list(axes), "written": [a - 1 for a in axes]} if any(a < 0 for a in axes) else None
    rank = graph.rank(node.input[0])
    read = _attr(node, "axis", {"Split": 0, "Concat": 0}.get(node.op_type, 1))
    meant = read
    if node.op_type == "Softmax" and _attr(node, "axis") is None and graph.opset >= 13:
        meant = -1
    if node.op_type == "Flatten" and read < 0 and (rank is None or read + rank != 1):
        return None  # a Flatten that is not from axis 1 at all: rule flatten_axis
    if read >= 0 and (meant == read or (rank is not None and meant % rank == read)):
        return None
    return {"axis": meant, "written": read - 1}


def _shape_not_constant(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    shape = _input(node, 1)  # Reshape-1 has its shape as an attribute
    return {} if shape and graph.const(node.input[0]) is None and graph.const(shape) is None else None


def _reshape_touches_batch(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if graph.const(node.input[0]) is not None or id(node) in graph.shuffle_chain_nodes:
        return None  # onnx2ncnn folds a reshape of a weight, and fuses the shuffle chains
    out, source = graph.shape(node.output[0]), graph.shape(node.input[0])
    if out is None and (target := graph.const(_input(node, 1))) is not None:
        out = [None if d in (0, -1) else d for d in _ints(target)]
    if source and source[0] not in (None, 1):
        return {"what": f"reads a tensor whose axis 0 has size {source[0]}"}
    if out and len(out) >= 3 and out[0] not in (None, 1):  # [N, K] from a batch of one converts right
        return {"what": f"makes axis 0 of size {out[0]}"}
    return None


def _perm(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    perm = _attr(node, "perm")
    rank = graph.rank(node.input[0])
    return list(perm) if perm is not None else (list(range(rank))[::-1] if rank is not None else None)


def _transposed_perm(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    if graph.const(node.input[0]) is not None or id(node) in graph.shuffle_chain_nodes:
        return None  # a weight transpose is folded; the shuffle chains are fused
    return _perm(graph, node)


def _transpose_over_4d_unsupported(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    perm = _transposed_perm(graph, node)
    if perm is None or len(perm) < 5 or (len(perm) == 5 and perm[0] == 0 and tuple(perm[1:]) in ONNX2NCNN_PERMS_5D):
        return None
    return {"perm": perm}


def _flatten_not_axis_1(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    axis, rank = _attr(node, "axis", 1), graph.rank(node.input[0])
    normal = axis + rank if axis < 0 and rank is not None else axis
    return None if normal == 1 else {"axis": axis}


def _slice_steps(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    steps = _attr(node, "steps") if len(node.input) == 1 else graph.const(_input(node, 4))
    return None if steps is None else _ints(steps)


def _slice_step_not_1(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    steps = _slice_steps(graph, node)
    return {"steps": steps} if steps and any(step != 1 for step in steps) else None


def _slice_step_negative(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    steps = _slice_steps(graph, node)
    return {"steps": steps} if steps and any(step < 0 for step in steps) else None


def _slice_step_over_1(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    steps = _slice_steps(graph, node)
    return {"steps": steps} if steps and any(abs(step) > 1 for step in steps) else None


def _slice_bounds_not_constant(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    bounds = [name for name in node.input[1:] if name]
    return {} if any(graph.const(name) is None for name in bounds) else None


def _resize_scales_not_constant(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # Upsample and Resize-10: (X, scales); Resize-11+: (X, roi, scales[, sizes]).
    sizing = node.input[1:] if node.op_type == "Upsample" or len(node.input) == 2 else node.input[2:]
    return {} if any(name and graph.const(name) is None for name in sizing) else None


def _not_in_onnx2ncnn_table(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    fused = node.op_type == "Expand" and _expand_not_fused(graph, node) is None
    return None if node.op_type in ONNX2NCNN_OPS or fused else {}


def _output_over_4d(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if graph.const(node.input[0]) is not None:
        return None  # a reshaped weight is folded
    rank = graph.rank(node.output[0])
    if rank is None and (target := graph.const(_input(node, 1))) is not None:
        rank = target.size
    if rank is None or rank <= 4 or id(node) in graph.shuffle_chain_nodes:
        return None
    return {"rank": rank}


def _output_over_5d(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    found = _output_over_4d(graph, node)
    return found if found is not None and found["rank"] > 5 else None


def _input_over_4d(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    rank = graph.rank(node.input[0])
    if rank is None or rank <= 4 or id(node) in graph.shuffle_chain_nodes:
        return None
    return {"rank": rank, "perm": _perm(graph, node)}


def _pad_mode_omitted(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {} if _attr(node, "mode") is None else None


def _reduction_axes(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    axes = graph.const(_input(node, 1)) if _input(node, 1) else _attr(node, "axes")
    return None if axes is None else _ints(axes)


def _single_axis_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    axes = _reduction_axes(graph, node) if _input(node, 1) else None
    return {} if axes is not None and len(axes) == 1 else None


def _reduces_several_axes(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    axes = _reduction_axes(graph, node)
    return {"axes": axes} if axes is not None and len(axes) > 1 else None


def _arg_index_is_output(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # What argmax_arithmetic takes: a float input of known length along the axis, an index that
    # only leaves the graph, an opset whose reductions take axes as an attribute.
    shape = graph.shape(node.input[0])
    elem_type = graph.elem_type(node.input[0])
    if shape is None or elem_type is None or graph.opset >= 18 or graph.consumers.get(node.output[0]):
        return None
    if not np.issubdtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type), np.floating):
        return None
    axis = _attr(node, "axis", 0)
    length = shape[axis] if -len(shape) <= axis < len(shape) else None
    return {} if length else None


def _resize_input_left_out(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # roi or scales named "" (passes/resize_empty_inputs.py), with scales or sizes a constant
    left_out = [index for index in (1, 2) if len(node.input) > index and not node.input[index]]
    constant = any(graph.const(name) is not None for name in node.input[2:] if name)
    return {} if left_out and constant else None


def _broadcast_2d_against_3d(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn makes [H,W] (H > 1) and [1,H,W] (H > 1) the 2-D Mat h=H, w=W, and a [1,C,H,W] output
    # a 3-D Mat; the ncnn runtime broadcasts such a 2-D operand along c (passes/broadcast_rank.py).
    out = graph.shape(node.output[0])
    if out is None or len(out) != 4 or None in out or out[0] != 1:
        return None
    for name in node.input[:2]:
        shape = graph.shape(name)
        if shape is not None and None not in shape and (
                (len(shape) == 2 and shape[0] > 1) or (len(shape) == 3 and shape[0] == 1 and shape[1] > 1)):
            return {"shape": shape}
    return None


CONDITIONS: dict[str, Condition] = {
    "broadcast_2d_against_3d": _broadcast_2d_against_3d,
    "resize_input_left_out": _resize_input_left_out,
    "arg_index_is_output": _arg_index_is_output,
    "whole_exponent": _whole_exponent,
    "non_standard_domain": _non_standard_domain,
    "id_mask_chain": _id_mask_chain,
    "input_is_boolean": _input_is_boolean,
    "cast_to_same_type": _cast_to_same_type,
    "cast_changes_kind": _cast_changes_kind,
    "expand_not_fused": _expand_not_fused,
    "gather_from_table": _gather_from_table,
    "gather_from_table_by_input_ids": _gather_from_table_by_input_ids,
    "gather_from_table_with_axis": _gather_from_table_with_axis,
    "gather_constant_index": _gather_constant_index,
    "gather_constant_vector_index": _gather_constant_vector_index,
    "gather_not_a_crop": _gather_not_a_crop,
    "axes_given_as_input": _axes_given_as_input,
    "split_sizes_given_as_input": _split_sizes_given_as_input,
    "pad_value_given_as_input": _pad_value_given_as_input,
    "acts_on_batch_axis": _acts_on_batch_axis,
    "axis_read_wrong": _axis_read_wrong,
    "shape_not_constant": _shape_not_constant,
    "reshape_touches_batch": _reshape_touches_batch,
    "transpose_over_4d_unsupported": _transpose_over_4d_unsupported,
    "flatten_not_axis_1": _flatten_not_axis_1,
    "slice_step_negative": _slice_step_negative,
    "slice_step_not_1": _slice_step_not_1,
    "slice_step_over_1": _slice_step_over_1,
    "slice_bounds_not_constant": _slice_bounds_not_constant,
    "resize_scales_not_constant": _resize_scales_not_constant,
    "not_in_onnx2ncnn_table": _not_in_onnx2ncnn_table,
    "output_over_4d": _output_over_4d,
    "output_over_5d": _output_over_5d,
    "square_outside_layernorm": _square_outside_layernorm,
    "input_over_4d": _input_over_4d,
    "pad_mode_omitted": _pad_mode_omitted,
    "single_axis_given_as_input": _single_axis_given_as_input,
    "reduces_several_axes": _reduces_several_axes,
}
