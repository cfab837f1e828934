"""What each converter refuses or gets wrong, as data: `deploykit.tools.preflight` walks these rules.

A rule names the op types it looks at, its condition (a function of the graph and the node, beside
the rules below, or None for "always"), the reason in one sentence ({op} and the condition's
details fill the braces) and the fix: a pass name or HOST. For a node, the first rule of its
target that matches is reported. The rules say what the converters cannot do; what a pass takes
is its own `match`'s answer: a rule whose condition is `matched_by(<pass>)` applies where a dry run
of that pass takes the node, and after the passes ran, a node whose fixing pass refuses it is
reported with the pass's reason.

onnx2ncnn rules were first read from tools/onnx/onnx2ncnn.cpp; each is now checked on the real
binary (ncnn 20250916, the last release that built it) and the ncnn runtime: tests/test_preflight.py
converts every rule's smallest graph and asserts that onnx2ncnn refuses it or ncnn miscomputes it.
pnnx rules come from running the installed pnnx on the smallest graph showing each form and
checking what it wrote: each pnnx rule says in `verified` what was seen; tests/test_preflight.py
repeats every one of those runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional
from collections.abc import Callable

import numpy as np
import onnx

from deploykit.onnx.graph_view import STANDARD_DOMAINS, GraphView, attr, input_at, ints, kind

HOST = "no pass — do this on the host"
HOST_CUT = f"{HOST} (cut the graph before it with `cut_at`)"
CAST_ON_HOST = f"{HOST} (give the model its input in the dtype it computes in)"
KEEP_BATCH = f"{HOST} (or keep axis 0 a batch of one in the model; pnnx converts this form)"
AXES_ATTRIBUTE = f"{HOST} (or export at opset <= 17, <= 12 for ReduceSum, where axes are an attribute)"
PAD_MODE = f'{HOST} (no pass yet: with mode="constant" written on the Pad, pnnx converts it)'
COMPARISONS = frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Xor"})
REDUCTIONS = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"})
HOST_ONLY = frozenset({"ArgMax", "ArgMin", "TopK", "NonZero", "ScatterND", "CumSum"})
SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "Range"})

# Every standard op type the last onnx2ncnn.cpp writes an ncnn layer for (its big if/else on
# op_type); anything else it prints as "<op> not supported yet!" and copies into the .param.
# Gelu is listed because the op type matches its com.microsoft-era branch (standard since opset 20).
# Erf: the 20250916 binary writes ncnn's Erf layer, and the runtime computes it (tested). Gather: it
# writes one by a constant scalar index as a Crop, right on a positive axis (tested); the Gather rules
# before `unmapped` name the forms it refuses.
# Decided by the source: the older onnx2ncnn.cpp (Tencent/ncnn d9b4836, whose table
# the tests used to copy) has no Gelu, GRU, RNN or Softplus branch and no
# Expand fusion; MMDeploy's onnx2ncnn.cpp, which descends from the last one, has all of them. The
# rules follow the last version, the one a legacy binary built today comes from.
ONNX2NCNN_OPS = frozenset({
    "Abs", "Acos", "Add", "Asin", "Atan", "AveragePool", "BatchNormalization", "Ceil", "Clip", "Concat",
    "Constant", "Conv", "ConvTranspose", "Cos", "DepthToSpace", "Div", "Dropout", "Elu", "Erf", "Exp", "Flatten",
    "Floor", "Gather", "Gelu", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "GRU", "HardSigmoid", "HardSwish",
    "ImageScaler", "InstanceNormalization", "LeakyRelu", "Log", "LRN", "LSTM", "MatMul", "Max", "MaxPool",
    "Min", "Mul", "Neg", "Pad", "Pow", "PRelu", "Reciprocal", "Relu", "Reshape", "Resize", "RNN", "Sigmoid",
    "Sin", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
    "Transpose", "Unsqueeze", "Upsample",
}) | REDUCTIONS

# The 5-D permutations onnx2ncnn maps to an ncnn Permute (batch first, then one of six orders);
# any other prints "Unsupported transpose type !".
ONNX2NCNN_PERMS_5D = frozenset({(1, 2, 3, 4), (1, 3, 4, 2), (2, 1, 3, 4), (2, 3, 4, 1), (3, 4, 1, 2), (3, 4, 2, 1)})


_BINARY_OPS_FUSING_EXPAND = ("Add", "Sub", "Mul", "Div", "Min", "Max")
INDEX_OPS = frozenset({"Gather", "CumSum", "Cast", "Add", "Sub", "Mul", "Neg", "Abs", "Max", "Min"})

# ---------------------------------------------------------------------------------------------
# Conditions: (graph, node) -> None when the rule does not apply, else the details its reason uses


Condition = Callable[[GraphView, onnx.NodeProto], Optional[dict]]


def non_standard_domain(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {"domain": node.domain} if node.domain not in STANDARD_DOMAINS else None


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


def _cast_to_same_type(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    source = graph.elem_type(node.input[0])
    if source is None or source != attr(node, "to"):
        return None
    return {"dtype": onnx.helper.tensor_dtype_to_np_dtype(source).name}


def _cast_changes_kind(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    source, target = kind(graph.elem_type(node.input[0])), kind(attr(node, "to"))
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
    return table if table is not None and table.ndim == 2 and attr(node, "axis", 0) in (0, -2) else None


def _gather_from_table(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {} if _table(graph, node) is not None else None


def _gather_from_table_with_axis(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    return {} if _table(graph, node) is not None and attr(node, "axis") is not None else None


def _gather_constant_vector_index(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    index = graph.const(node.input[1])
    if graph.const(node.input[0]) is not None or index is None or index.ndim == 0:
        return None
    return {"index": index.tolist(), "axis": attr(node, "axis", 0)}


def _gather_not_a_crop(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn writes a Gather by a constant scalar on a positive axis past the batch as a Crop (right
    # on the binary); by computed indices, or along axis 0, it gives wrong numbers or no layer.
    rank = graph.rank(node.input[0])
    along_batch = rank is not None and (rank < 2 or attr(node, "axis", 0) % rank == 0)
    return {} if graph.const(node.input[1]) is None or along_batch else None


def _axes_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if not input_at(node, 1):
        return None
    consequence = {"Squeeze": "squeezes every axis of size 1",
                   "Unsqueeze": "writes an ExpandDims without axes"}.get(node.op_type, "reduces over every axis")
    return {"consequence": consequence}


def _split_sizes_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if not input_at(node, 1):
        return None
    sizes = graph.const(node.input[1])
    if sizes is not None and len(set(ints(sizes))) <= 1:
        return None
    return {"sizes": ints(sizes) if sizes is not None else "run-time sizes"}


def _pad_value_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if not input_at(node, 2):
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
        axes = graph.const(node.input[1]) if input_at(node, 1) else attr(node, "axes")
        if axes is None:
            return None  # no axes: a reduction over every axis is right for a batch of one
        axes = ints(axes)
        rank += len(axes) if op == "Unsqueeze" else 0
    else:
        default = 0 if op == "Split" else (-1 if op == "Softmax" and graph.opset >= 13 else 1)
        axes = [attr(node, "axis", default)]
    if all(axis % rank != 0 for axis in axes):
        return None
    consequence = {"Concat": "joins along ncnn axis -1, the last one",
                   "Softmax": "normalises along ncnn axis -1, the last one"}.get(
        op, f'prints "Unsupported {"split axis" if op == "Split" else "axes"} !"')
    return {"rank": graph.rank(node.input[0]), "consequence": consequence}


def _axis_read_wrong(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    # onnx2ncnn writes `axis - 1` from the attribute (default 1 for Softmax/Flatten, 0 for Split).
    if node.op_type in ("Squeeze", "Unsqueeze"):  # the `axes` attribute of opsets before 13
        axes = attr(node, "axes") or []
        return {"axis": list(axes), "written": [a - 1 for a in axes]} if any(a < 0 for a in axes) else None
    rank = graph.rank(node.input[0])
    read = attr(node, "axis", {"Split": 0, "Concat": 0}.get(node.op_type, 1))
    meant = read
    if node.op_type == "Softmax" and attr(node, "axis") is None and graph.opset >= 13:
        meant = -1
    if node.op_type == "Flatten" and read < 0 and (rank is None or read + rank != 1):
        return None  # a Flatten that is not from axis 1 at all: rule flatten_axis
    if read >= 0 and (meant == read or (rank is not None and meant % rank == read)):
        return None
    return {"axis": meant, "written": read - 1}


def _shape_not_constant(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    shape = input_at(node, 1)  # Reshape-1 has its shape as an attribute
    return {} if shape and graph.const(node.input[0]) is None and graph.const(shape) is None else None


def _reshape_touches_batch(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    if graph.const(node.input[0]) is not None or id(node) in graph.shuffle_chain_nodes:
        return None  # onnx2ncnn folds a reshape of a weight, and fuses the shuffle chains
    out, source = graph.shape(node.output[0]), graph.shape(node.input[0])
    if out is None and (target := graph.const(input_at(node, 1))) is not None:
        out = [None if d in (0, -1) else d for d in ints(target)]
    if source and source[0] not in (None, 1):
        return {"what": f"reads a tensor whose axis 0 has size {source[0]}"}
    if out and len(out) >= 3 and out[0] not in (None, 1):  # [N, K] from a batch of one converts right
        return {"what": f"makes axis 0 of size {out[0]}"}
    return None


def _perm(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    perm = attr(node, "perm")
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
    axis, rank = attr(node, "axis", 1), graph.rank(node.input[0])
    normal = axis + rank if axis < 0 and rank is not None else axis
    return None if normal == 1 else {"axis": axis}


def _slice_steps(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    steps = attr(node, "steps") if len(node.input) == 1 else graph.const(input_at(node, 4))
    return None if steps is None else ints(steps)


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
    if rank is None and (target := graph.const(input_at(node, 1))) is not None:
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
    return {} if attr(node, "mode") is None else None


def _reduction_axes(graph: GraphView, node: onnx.NodeProto) -> Optional[list[int]]:
    axes = graph.const(input_at(node, 1)) if input_at(node, 1) else attr(node, "axes")
    return None if axes is None else ints(axes)


def _single_axis_given_as_input(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    axes = _reduction_axes(graph, node) if input_at(node, 1) else None
    return {} if axes is not None and len(axes) == 1 else None


def _reduces_several_axes(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
    axes = _reduction_axes(graph, node)
    return {"axes": axes} if axes is not None and len(axes) > 1 else None


def matched_by(pass_name: str, details: Callable[[Any], dict] = lambda match: {}) -> Condition:
    """The condition "pass `pass_name` takes this node": a dry run of the pass's own `match` on the
    graph (for a node inside a chain the pass rewrites, the match that covers it), so the rule
    cannot drift from the pass. `details` gives the reason's fields from the match."""

    def taken(graph: GraphView, node: onnx.NodeProto) -> Optional[dict]:
        match = graph.pass_match(pass_name, node)
        return None if match is None else details(match)

    taken.__name__ = f"matched_by_{pass_name}"
    return taken


# ---------------------------------------------------------------------------------------------
# The rules


@dataclass(frozen=True)
class Rule:
    name: str
    ops: frozenset[str]           # op types looked at; empty: every op
    when: Optional[Condition]     # None: always
    reason: str
    fix: str
    verified: str = ""            # pnnx: what the real converter did with the smallest such graph


@dataclass(frozen=True)
class Target:
    rules: tuple[Rule, ...]
    # What to do with a node whose inputs are all known at conversion time (constants, shapes):
    # "fold" reports it with the fix fold_shapes; "skip" leaves it alone (the converter folds it).
    static_nodes: str
    static_exempt: frozenset[str] = field(default_factory=frozenset)  # rules never re-targeted


def _ops(*names: str) -> frozenset[str]:
    return frozenset(names)


# Rules that both targets share: the ncnn runtime, not the converter, is what cannot hold integers.
INDEX_ARITHMETIC = Rule(
    "index_arithmetic", INDEX_OPS, matched_by("index_arithmetic"),
    "ncnn holds floats and reads integers only in Embed, so {op} in this integer arithmetic on a mask (positions "
    "from a cumsum of it) has no layer; the same whole numbers in float and a one-hot lookup do.", "index_arithmetic",
    verified="RoBERTa's positions cumsum(ids != pad) * mask + pad then the position embedding: CumSum, Tensor.to "
             "and pnnx.Expression left in the .param")
INTERLEAVE_SLICES = Rule(
    "interleave_slices", _ops("Slice", "Unsqueeze", "Concat", "Reshape", "Flatten"), matched_by("interleave_slices"),
    "{op} here stacks strided slices of the last axis on a new last axis (rotary pairs), which needs a 5th axis "
    "ncnn does not have; one product by a constant selection matrix does the same.", "interleave_slices",
    verified="GPT-J's stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2) on [1,16,4,16]: Tensor.slice left; with "
             "the Slices taken apart, Tensor.reshape (the Unsqueeze to 5-D) left")
TOKEN_BATCHNORM = Rule(
    "token_batchnorm", _ops("Flatten", "BatchNormalization", "Reshape"), matched_by("token_batchnorm"),
    "{op} is part of a BatchNormalization of tokens flattened to [N, C], which the converters get wrong: pnnx "
    "takes the tokens for the batch axis (the Reshape back is written for C values, and the layers after it read "
    "outside the blob); onnx2ncnn flattens only from axis 1.", "token_batchnorm",
    verified="Flatten(axis=2) -> BatchNormalization -> Reshape, a MatMul, and the same again (LeViT's "
             "LinearNorm): ncnn's output differs by 17 on values of order 1")
UNIFORM_GATHER_ELEMENTS = Rule(
    "uniform_gather_elements", _ops("GatherElements"), matched_by("uniform_gather_elements"),
    "ncnn has no GatherElements layer; this one reads a constant that is the same along its axis, so its result "
    "is that constant.", "uniform_gather_elements",
    verified="GatherElements(axis=1) of a [1,20] zero buffer by [1,6] indices: GatherElements left in the .param")


ONNX2NCNN = Target(static_nodes="fold", static_exempt=frozenset({"custom_domain"}), rules=(
    Rule("custom_domain", frozenset(), non_standard_domain,
         "onnx2ncnn reads only the op type, so an op of domain {domain} is either unknown to it or taken for "
         "a different op of the same name.", f"{HOST} (export it with standard ONNX ops)"),
    Rule("identity", _ops("Identity"), None,
         'onnx2ncnn has no mapping for Identity (prints "Identity not supported yet!").', "drop_identity"),
    Rule("shape_op", SHAPE_OPS, None,
         'onnx2ncnn has no mapping for {op} (prints "{op} not supported yet!"); the value must be folded '
         "into a constant.", "fold_shapes"),
    Rule("id_mask", _ops("Equal", "Not", "Cast"), matched_by("id_mask_lookup", lambda match: {"pad": match.pad}),
         "onnx2ncnn has no {op}; this Equal(ids, {pad}) padding mask can be a lookup in the table "
         "the ids already index.", "id_mask_lookup"),
    INDEX_ARITHMETIC,
    UNIFORM_GATHER_ELEMENTS,
    INTERLEAVE_SLICES,
    TOKEN_BATCHNORM,
    Rule("comparison", COMPARISONS, None,
         'onnx2ncnn has no mapping for {op} (prints "{op} not supported yet!").', "compare_to_arithmetic"),
    Rule("where", _ops("Where"), None,
         'onnx2ncnn has no mapping for Where (prints "Where not supported yet!").', "where_to_arithmetic"),
    Rule("cast_of_comparison", _ops("Cast"), _input_is_boolean,
         "onnx2ncnn has no Cast; this one turns a comparison result into numbers, which the arithmetic form "
         "of the comparison gives directly.", "compare_to_arithmetic"),
    Rule("cast_noop", _ops("Cast"), _cast_to_same_type,
         'onnx2ncnn has no mapping for Cast (prints "Cast not supported yet!"); this one keeps the dtype '
         "({dtype}) and can go.", "drop_identity"),
    Rule("cast", _ops("Cast"), None,
         'onnx2ncnn has no mapping for Cast (prints "Cast not supported yet!") and ncnn computes in float only.',
         CAST_ON_HOST),
    Rule("expand", _ops("Expand"), _expand_not_fused,
         "onnx2ncnn drops an Expand only when the next node is a binary op that broadcasts anyway; otherwise "
         'it prints "Expand not supported yet!".', "expand_broadcast"),
    Rule("tile", _ops("Tile"), None,
         'onnx2ncnn has no mapping for Tile (prints "Tile not supported yet!").', "expand_broadcast"),
    Rule("pow", _ops("Pow"), _whole_exponent,
         "onnx2ncnn writes Pow as ncnn's BinaryOp pow, which computes exp({n} * log(x)): the ncnn runtime gives "
         "2.4e+38 for x <= 0 instead of x^{n}.", "integer_pow"),
    # Seen on the real binary: unlike pnnx it writes x ** 2 as that BinaryOp pow too, except inside the
    # LayerNorm chain it fuses (Sub -> Pow -> ReduceMean), which pow_square's match leaves alone.
    Rule("pow_square", _ops("Pow"), matched_by("pow_square"),
         "onnx2ncnn writes x ** 2 as ncnn's BinaryOp pow, which computes exp(2 * log(x)): the ncnn runtime gives "
         "2.4e+38 for x <= 0 instead of x * x.", "pow_square"),
    Rule("embedding_input_ids", _ops("Gather"), matched_by("embed_layer"),
         'onnx2ncnn has no Gather layer for a lookup in a constant table (prints "Gather not supported yet!"); '
         "these ids are the model's input, which ncnn's Embed layer reads.", "embed_layer"),
    Rule("embedding", _ops("Gather"), _gather_from_table,
         'onnx2ncnn has no Gather layer for a lookup in a constant table (prints "Gather not supported yet!").',
         "embedding_gather"),
    # A scalar constant index converts right (onnx2ncnn writes it as a Crop); a vector is refused.
    Rule("gather_constant_index", _ops("Gather"), _gather_constant_vector_index,
         "onnx2ncnn has no Gather layer; a constant index {index} on axis {axis} is a slice of the input.",
         "gather_to_slice"),
    Rule("gather", _ops("Gather"), _gather_not_a_crop,
         "onnx2ncnn has no Gather layer for indices computed at run time, nor for a Gather along axis 0, which it "
         'takes as the batch (it prints "Gather not supported yet!" or gives wrong numbers).',
         HOST_CUT),
    Rule("layernorm", _ops("LayerNormalization"), None,
         "onnx2ncnn has no mapping for LayerNormalization; it fuses only the ReduceMean/Sub/Pow/Sqrt/Div form "
         "into LayerNorm.", "decompose_layernorm"),
    Rule("arg_index_output", _ops("ArgMax", "ArgMin"), matched_by("argmax_arithmetic"),
         "ncnn has no layer that computes {op} as ONNX defines it, and onnx2ncnn has no mapping for it.",
         "argmax_arithmetic"),
    Rule("host_only", HOST_ONLY, None,
         "ncnn has no layer that computes {op} as ONNX defines it, and onnx2ncnn has no mapping for it.", HOST_CUT),
    # Before axes_input and negative_axis: their passes cannot help an op on axis 0
    # (legacy_axes_attributes refuses it, positive_axes would only spell it 0).
    # Not Concat: on axis 0 of a batch of one it joins the same memory as ONNX, which ncnn reproduces.
    Rule("batch_axis", _ops("Softmax", "Split", "Squeeze", "Unsqueeze") | REDUCTIONS, _acts_on_batch_axis,
         "onnx2ncnn takes axis 0 as the batch and writes `axis - 1`, so {op} on axis 0 of a {rank}-D tensor "
         "{consequence}.", KEEP_BATCH),
    Rule("axes_input", _ops("Squeeze", "Unsqueeze"), _axes_given_as_input,
         "onnx2ncnn reads {op} axes only from the `axes` attribute, but in this opset they are an input, so it "
         "{consequence}.", "legacy_axes_attributes"),
    # legacy_axes_attributes refuses these: a reduction has no exact form with axes as an attribute
    # that stays valid at the model's opset.
    Rule("reduce_axes_input", REDUCTIONS, _axes_given_as_input,
         "onnx2ncnn reads {op} axes only from the `axes` attribute, but in this opset they are an input, so it "
         "{consequence}.", AXES_ATTRIBUTE),
    Rule("split_input", _ops("Split"), _split_sizes_given_as_input,
         "onnx2ncnn reads Split sizes only from the `split` attribute, so it would cut equal parts instead of {sizes}.",
         "legacy_axes_attributes"),
    Rule("pad_value_input", _ops("Pad"), _pad_value_given_as_input,
         "onnx2ncnn reads the Pad value only from the `value` attribute and would pad with 0 instead of {value}.",
         "legacy_axes_attributes"),
    # Concat, Squeeze and Unsqueeze keep a negative axis as it is, which ncnn counts from the end as ONNX
    # does (the binary converts them right); Softmax writes `axis - 1` whatever its sign, Split refuses
    # it, and a Gather by a constant scalar on a negative axis gives wrong numbers (on a positive one,
    # right).
    Rule("negative_axis", _ops("Softmax", "Split", "Flatten", "Gather"), _axis_read_wrong,
         "onnx2ncnn subtracts 1 from the `axis` attribute for the dropped batch axis, so axis {axis} becomes "
         "{written} instead of the axis meant.", "positive_axes"),
    Rule("reshape_shape_input", _ops("Reshape"), _shape_not_constant,
         "onnx2ncnn reads a Reshape's target shape only from a constant, and this one is computed at run time.",
         "fold_shapes"),
    # A 5-D Reshape merges the last two axes into ncnn's w, which the next Reshape back to 4-D undoes
    # (the binary converts that right); a longer shape is written as nothing.
    Rule("reshape_5d", _ops("Reshape"), _output_over_5d,
         "onnx2ncnn writes no shape for a Reshape to more than 5 dims, and this one makes a {rank}-D tensor.",
         "batch_axis_reshape"),
    Rule("reshape_batch", _ops("Reshape"), _reshape_touches_batch,
         "onnx2ncnn drops shape[0] of a Reshape as the batch axis, but this Reshape {what}.", KEEP_BATCH),
    Rule("transpose_5d", _ops("Transpose"), _transpose_over_4d_unsupported,
         'onnx2ncnn maps only six 5-D permutations, batch first, to ncnn Permute (prints "Unsupported transpose '
         'type !"), and perm is {perm}.', "batch_axis_reshape"),
    Rule("flatten_axis", _ops("Flatten"), _flatten_not_axis_1,
         'onnx2ncnn flattens only from axis 1 (prints "Unsupported Flatten axis {axis}!").',
         f"{HOST} (or flatten from axis 1 in the model)"),
    # No rule for a MatMul of two computed tensors: onnx2ncnn writes it as ncnn Gemm, which multiplies
    # two 2-D Mats only, and deploykit's onnx2ncnn converter turns that Gemm into ncnn's MatMul, which
    # batches as ONNX does (deploykit/ncnn/converters/onnx2ncnn.py, batched_matmuls; tested on the binary).
    # Seen on the real onnx2ncnn and ncnn: a decoder's [T,T] causal mask added to [1,H,T,T] scores
    # gave a [1,T,T,T]-sized result.
    Rule("broadcast_2d", _ops("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"),
         matched_by("broadcast_rank", lambda match: {"shape": list(match[0].inputs[match[1][0]].shape)}),
         "onnx2ncnn writes the {shape} operand as a 2-D ncnn Mat and the 4-D output's other operand as a 3-D "
         "one, and the ncnn runtime broadcasts a 2-D Mat along the channels, not the last two axes.",
         "broadcast_rank"),
    # strided_slice refuses negative steps (no ncnn layer reverses an axis for onnx2ncnn to write).
    Rule("reversed_slice", _ops("Slice"), _slice_step_negative,
         'onnx2ncnn maps Slice to ncnn Crop, which has no step (prints "Unsupported slice step !"), and steps '
         "{steps} reverse an axis, which no pass rewrites.", HOST_CUT),
    Rule("strided_slice", _ops("Slice"), _slice_step_not_1,
         'onnx2ncnn maps Slice to ncnn Crop, which has no step (prints "Unsupported slice step !"); steps '
         "are {steps}.", "strided_slice"),
    Rule("slice_inputs", _ops("Slice"), _slice_bounds_not_constant,
         "onnx2ncnn reads Slice starts/ends/axes/steps only from constants, and these are computed at run time.",
         "fold_shapes"),
    Rule("resize_inputs", _ops("Resize", "Upsample"), _resize_scales_not_constant,
         'onnx2ncnn reads {op} scales and sizes only from constants (prints "Unsupported Resize scales and '
         'sizes are all empty!").', "fold_shapes"),
    # Seen on the real binary with DeepLabV3's two upsamplings.
    Rule("resize_empty_input", _ops("Resize"), matched_by("resize_empty_inputs"),
         'onnx2ncnn looks a Resize\'s scales up by name, and an empty name makes it print "Unknown data type 0" '
         "and count every later empty input as a weight: the next such Resize gets -1 inputs.",
         "resize_empty_inputs"),
    Rule("unmapped", frozenset(), _not_in_onnx2ncnn_table,
         'onnx2ncnn has no mapping for {op} (prints "{op} not supported yet!").', HOST_CUT),
))


PNNX = Target(static_nodes="skip", rules=(
    Rule("custom_domain", frozenset(), non_standard_domain,
         "pnnx cannot run an op of domain {domain} for its shape inference and writes no model.",
         f"{HOST} (export it with standard ONNX ops)",
         verified="com.microsoft::Gelu: pnnx's onnxruntime refuses the op and no model.ncnn.param is written"),
    Rule("id_mask", _ops("Equal", "Not", "Cast"), matched_by("id_mask_lookup", lambda match: {"pad": match.pad}),
         "pnnx leaves {op} as a torch layer ncnn does not have; this Equal(ids, {pad}) padding mask can "
         "be a lookup in the table the ids already index.", "id_mask_lookup",
         verified="Equal(ids, 0) -> Cast: torch.eq and Tensor.to left in the .param"),
    INDEX_ARITHMETIC,
    UNIFORM_GATHER_ELEMENTS,
    INTERLEAVE_SLICES,
    Rule("comparison", COMPARISONS, None,
         "pnnx leaves {op} as a torch comparison/logic layer (torch.eq, torch.gt, torch.logical_not ...) that "
         "ncnn does not have.", "compare_to_arithmetic",
         verified="Equal/Greater/Less/GreaterOrEqual/LessOrEqual/Not/And/Or/Xor: torch.eq/gt/lt/ge/le/"
                  "logical_not/logical_and/logical_or/logical_xor left in the .param"),
    Rule("where", _ops("Where"), None,
         "pnnx leaves Where as torch.where, which ncnn does not have.", "where_to_arithmetic",
         verified="Where(Greater(x, y), x, y): torch.where left in the .param"),
    Rule("cast_of_comparison", _ops("Cast"), _input_is_boolean,
         "pnnx leaves this Cast of a comparison result as Tensor.to, which ncnn does not have.",
         "compare_to_arithmetic", verified="Cast(Greater(x, y), to=float): Tensor.to left in the .param"),
    Rule("cast", _ops("Cast"), _cast_changes_kind,
         "pnnx leaves a Cast between {kinds} as Tensor.to, which ncnn does not have (a float->float Cast is "
         "dropped).", CAST_ON_HOST,
         verified="Cast int64->float and float->int64: Tensor.to left in the .param"),
    Rule("pow", _ops("Pow"), _whole_exponent,
         "pnnx writes Pow as ncnn's BinaryOp pow, which computes exp({n} * log(x)): the ncnn runtime gives "
         "2.4e+38 for x <= 0 instead of x^{n}.", "integer_pow",
         verified="Pow(x, 3), Pow(x, 4), Pow(x, -1) on [-2, 2]: 2.4e+38 where x <= 0; Pow(x, 2) became square, right"),
    Rule("tile", _ops("Tile"), None,
         "pnnx leaves Tile as torch.tile, which ncnn does not have.", "expand_broadcast",
         verified="Tile with repeats (1,2,1), (1,1,2) and (2,1,1): torch.tile left in the .param "
                  "(Expand became ncnn Tile and ran correctly in every form tried)"),
    Rule("embedding_axis", _ops("Gather"), _gather_from_table_with_axis,
         "pnnx recognises a lookup in a constant table as ncnn Embed only without an explicit `axis`, and "
         "leaves this one as a Gather layer.", "pnnx_embed",
         verified="Gather(axis=0) from a [10,4] table: Gather left in the .param (without axis: Embed)"),
    Rule("gather_index_vector", _ops("Gather"), _gather_constant_vector_index,
         "pnnx turns a Gather with the constant index {index} on axis {axis} into Crop + Squeeze, which drops "
         "the gathered axis and keeps only one element.", "gather_to_slice",
         verified="Gather(axis=1, [0,3]) of [1,5,4]: ncnn gives shape (1,4), ONNX (1,2,4); a scalar index "
                  "converts correctly"),
    Rule("strided_slice", _ops("Slice"), _slice_step_over_1,
         "pnnx leaves a Slice with steps {steps} as Tensor.slice, which ncnn does not have.", "strided_slice",
         verified="Slice step 2 on axis 1 and on axis 2: Tensor.slice left in the .param (step -1 became Flip)"),
    Rule("reshape_5d", _ops("Reshape"), _output_over_4d,
         "pnnx leaves a Reshape to {rank}-D as Tensor.reshape, which ncnn does not have.", "batch_axis_reshape",
         verified="Reshape [1,8,4,4] -> [1,2,4,4,4] -> Relu -> [1,8,4,4]: Tensor.reshape left in the .param "
                  "(the Reshape/Transpose/Reshape channel shuffle is fused and not reported; Reshape and "
                  "Transpose across the batch axis of a batch of one ran correctly)"),
    Rule("transpose_5d", _ops("Transpose"), _input_over_4d,
         "pnnx writes a {rank}-D Transpose as an ncnn Permute that does not match perm {perm}.",
         "batch_axis_reshape",
         verified="Unsqueeze to [1,2,4,1,4] -> Transpose(0,1,3,2,4) -> Squeeze: pnnx writes Permute 0=0 "
                  "and ncnn returns the input unchanged (wrong numbers, no unknown layer)"),
    TOKEN_BATCHNORM,
    Rule("bias_free_attention", _ops("MatMul"), matched_by("attention_bias"),
         "pnnx fuses this attention, none of whose projections has a bias, into nn.MultiheadAttention with "
         "bias=False, and its ncnn writer for that operator aborts (std::out_of_range, map::at).", "attention_bias",
         verified="self-attention with bias-free q/k/v/output MatMuls (value input twice the query's width): pnnx "
                  "aborts and writes no model; with a zero bias on v it writes MultiHeadAttention, right on ncnn"),
    Rule("pad_mode", _ops("Pad"), _pad_mode_omitted,
         "pnnx converts a Pad only when its `mode` attribute is written out, and leaves this one (default "
         "constant mode) as a Pad layer ncnn does not have.", PAD_MODE,
         verified="Pad without mode (opsets 10, 11, 13; 3-D and 4-D): Pad left in the .param; "
                  "with mode=\"constant\" written it becomes ncnn Padding"),
    Rule("reduce_single_axis_input", _ops("ReduceSum", "ReduceMean"), matched_by("reduce_axes_input"),
         "pnnx writes a one-element `axes` input of {op} as an empty axes list, so ncnn reduces nothing.",
         "reduce_axes_input",
         verified="ReduceSum-13 axes=[3] as input on [1,3,4,5]: ncnn returns the input unchanged (-23303=0); on "
                  "[1,12,1,5] over [2, 3] right, likewise ReduceMean-18; axes [0, 3] on a batch: 'sum along batch "
                  "axis is not supported yet'"),
    Rule("reduce_axis_input", REDUCTIONS, _single_axis_given_as_input,
         "pnnx misreads a one-element `axes` input of {op} (it reduces over the wrong axes or leaves the op), "
         "unlike the attribute form.", AXES_ATTRIBUTE,
         verified="ReduceSum-13 and ReduceMean-18 with axes=[2] as input: ncnn output keeps shape (1,3,4); "
                  "ReduceMax-18: ReduceMax left in the .param"),
    Rule("reduce_max_multi_axis", _ops("ReduceMax", "ReduceMin"), _reduces_several_axes,
         "pnnx leaves {op} over several axes ({axes}) as an ONNX layer ncnn does not have.",
         f"{HOST} (or reduce one axis at a time)",
         verified="ReduceMax/ReduceMin over axes [2,3] (attribute at opset 13, input at 18): the op left in "
                  "the .param; one axis converts"),
    Rule("reduce_sumsquare_input", _ops("ReduceSumSquare"), _axes_given_as_input,
         "pnnx leaves ReduceSumSquare with `axes` as an input as an ONNX layer ncnn does not have.",
         AXES_ATTRIBUTE,
         verified="ReduceSumSquare-18 over axes [2,3] as input: ReduceSumSquare left in the .param; the "
                  "attribute form converts"),
    Rule("reduce_logsum", _ops("ReduceLogSum"), None,
         "pnnx converts ReduceLogSum into a reduction that gives different numbers.", HOST_CUT,
         verified="ReduceLogSum axes=[3] of [1,2,3,4]: ncnn output differs from onnxruntime"),
    Rule("arg_index_output", _ops("ArgMax", "ArgMin"), matched_by("argmax_arithmetic"),
         "pnnx writes {op} as a layer the ncnn runtime cannot run.", "argmax_arithmetic",
         verified="ArgMax(axis=2) as the graph output: ArgMax left in the .param (ArgMin: the host_only rule's "
                  "run); after argmax_arithmetic, ncnn gives the indices"),
    Rule("argmax", _ops("ArgMax"), None,
         "pnnx writes ncnn's ArgMax layer, which the ncnn runtime is built without and cannot load.", HOST_CUT,
         verified="ArgMax(axis=2): ArgMax left in the .param; ncnn lists the type but cannot create it"),
    Rule("host_only", HOST_ONLY - {"ArgMax"}, None,
         "pnnx leaves {op} as a layer ncnn does not have.", HOST_CUT,
         verified="ArgMin, CumSum (+ pnnx.Expression), TopK (+ pnnx.Expression), NonZero, ScatterND: each "
                  "left in the .param"),
))

TARGETS: dict[str, Target] = {"pnnx": PNNX, "onnx2ncnn": ONNX2NCNN}
