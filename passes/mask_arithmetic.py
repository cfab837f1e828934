"""Masks and selection (Where, comparisons, Not/And/Or) -> float 0/1 arithmetic that ncnn runs.

where_to_arithmetic (order 40), e.g. masked_fill(mask, fill) on attention scores:
Before:  cond:bool ----------+
         a:float ------------+-- Where --> y
         b:float ------------+
After:   m = <cond as 0/1 float>: a constant when cond is one, else built as below
         a -- Mul(m) ------------+
         b -- Mul(Sub(1, m)) ----+-- Add --> y        (a constant fill is folded into its
                                                       product; a zero fill drops its product)
compare_to_arithmetic (order 41), a mask used as a number:
Before:  x:float --+-- Equal -- [Not/And/Or/Unsqueeze/...] -- Cast(to=float) --> m
         c --------+
After:   x -- Sub(c) -- Abs -- Sub(1, .) -- Relu -- [the same logic, on floats] --> m
  Equal(x, y) -> Relu(1 - |x - y|)          Greater(x, y) -> Clip(x - y, 0, 1)
  GreaterOrEqual(x, y) -> Clip(x - (y - 1), 0, 1)  (Less/LessOrEqual: the operands swapped)
  Cast(x, to=bool) -> Clip(|x|, 0, 1)       Not(m) -> 1 - m     And -> m1 * m2
  Or -> Max(m1, m2)    Xor -> |m1 - m2|     Unsqueeze/Reshape/Expand/... -> the same op on floats
  Cast(m, to=int64) of a mask, and Casts of that -> m itself (`mask.to(torch.int64)`)
  and for a real-valued x against a constant threshold t (`torch.where(h > 0.1, h, 0)`):
  Greater(x, t) -> Ceil(Clip(x - t, 0, 1))       LessOrEqual(x, t) -> 1 - Ceil(Clip(x - t, 0, 1))
  Less(x, t) -> Ceil(Clip(t - x, 0, 1))          GreaterOrEqual(x, t) -> 1 - Ceil(Clip(t - x, 0, 1))
  where_to_arithmetic builds its `m` the same way, so no boolean tensor is left behind.

Constraints: compared operands must hold whole numbers (< 2**24), and be computable by ncnn:
constants, tensors named in the argument `integer_valued` (e.g. a float 0/1 mask input), and
Add/Sub/Mul/Max/Min/Abs/Relu/Neg/Floor/Ceil/Round, Gather/Reshape/Unsqueeze/Concat/... of them;
or be a float32 tensor and a constant threshold, finite, and 0 or at least 2**-100 in magnitude.
Refused, with a reason: integer or bool tensors computed at run time (pnnx cannot read a bool
input; ncnn reads int32 only in Embed, a float op reads their bits as garbage, and a Cast from
int is `Tensor.to` in pnnx and unsupported in onnx2ncnn: compute such masks on the host, or use
id_mask_lookup for `ids == pad`), except integer Casts of a mask; Equal on real values, and two
real-valued tensors compared with each other (`a > b`, both computed at run time), which have no
exact form here. Where must select floats.
Exactness: comparisons of whole numbers are exact. A threshold comparison is exact for finite x:
IEEE subtraction of two different finite floats is never 0 and has the sign of their difference
(x - t may overflow to +-inf, which Clip takes to 1 or 0), so Clip(x - t, 0, 1) is in (0, 1] where
x > t and +-0 elsewhere, and Ceil makes it exactly 1 or 0. With |t| >= 2**-100 a difference x - t
of x != t is at least 2**-124 in magnitude (|x| <= |t|/2: it is at least |t|/2; otherwise both are
multiples of 2**-124), a normal float, so a device that flushes subnormals to zero computes the
same; with t == 0 it is x itself, and a subnormal x that such a device flushes is gated as 0, an
error below 2**-126. A NaN or infinite x gives NaN where Where would pick a branch (x * 0).
The blend is exact (up to the sign of zero) when a and b are finite. An infinite constant fill
becomes `neg_inf_value` (sign kept; default -1e4, within float16) because 0 * inf is NaN: that
changes y, but a Softmax after it agrees within 1e-6 unless a whole row is masked (where
onnxruntime gives NaN). Finite fills beyond 65504 (-1e9) stay exact in float32 but overflow if
the device computes in float16.
Needed by: pnnx, which leaves `torch.where`, `torch.eq`/`gt`/..., `torch.logical_*` and
`Tensor.to` (no ncnn layers); onnx2ncnn prints "Where/Equal/Not/Cast not supported yet!".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pydantic import Field, field_validator

from deploykit.graph_pass import Builder, GraphPass, Matched, PassArgs, Value, constant_value, dtype_of, register_pass

COMPARISONS = {"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"}
LOGIC = {"Not", "And", "Or", "Xor"}
MOVEMENT = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Expand", "Slice", "Tile",
            "Identity", "Gather", "Concat"}  # rearrange their data input(s): a mask stays a mask
WHOLE_ARITHMETIC = {"Add", "Sub", "Mul", "Neg", "Abs", "Relu", "Max", "Min", "Floor", "Ceil", "Round"}


MIRRORED = {"Greater": "Less", "Less": "Greater", "GreaterOrEqual": "LessOrEqual", "LessOrEqual": "GreaterOrEqual"}
SMALLEST_THRESHOLD = 2.0 ** -100  # see "Exactness" above


def data_inputs(node: gs.Node) -> list[gs.Tensor]:
    return list(node.inputs) if node.op == "Concat" else list(node.inputs[:1])


def cast_mask(tensor: gs.Tensor) -> Optional[gs.Tensor]:
    """The bool mask an integer tensor is cast from (through further integer Casts), else None."""
    while tensor.inputs and tensor.inputs[0].op == "Cast" and (dtype_of(tensor) or np.dtype(np.float32)).kind in "iu":
        tensor = tensor.inputs[0].inputs[0]
        if dtype_of(tensor) == np.bool_:
            return tensor
    return None


class Emitter(Builder):
    """The builder of these rewrites: float nodes of one dtype, arithmetic on two constants folded
    here, and the float form of each bool tensor made once."""

    def __init__(self, graph: gs.Graph, anchor: gs.Node, pass_name: str, dtype: np.dtype) -> None:
        super().__init__(graph, anchor, pass_name, dtype)
        self.masks: dict[str, Value] = {}  # bool tensor name -> its float form

    def binary(self, op: str, p: Value, q: Value, tag: str) -> Value:
        if isinstance(p, np.ndarray) and isinstance(q, np.ndarray):
            return np.asarray({"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](p, q), self.dtype)
        if op in ("Add", "Sub") and isinstance(q, np.ndarray) and q.size == 1 and q.item() == 0:
            return p
        return self.op(op, [p, q], tag)

    def clip01(self, x: Value, tag: str) -> gs.Tensor:
        if self.graph.opset < 11:
            return self.op("Clip", [x], tag, attrs={"min": 0.0, "max": 1.0})
        return self.op("Clip", [x, self.number(0), self.number(1)], tag)

    def number(self, value: float) -> np.ndarray:
        return np.array(value, dtype=self.dtype)


class MaskArgs(PassArgs):
    integer_valued: list[str] = []  # float tensors the user vouches hold whole numbers (a 0/1 mask fed as float)

    @field_validator("integer_valued", mode="before")
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else list(value) if isinstance(value, tuple) else value


class WhereArgs(MaskArgs):
    # What an infinite fill becomes: 0 * inf is NaN. Within float16, so that it is finite on the device too.
    neg_inf_value: float = Field(-1e4, lt=0, allow_inf_nan=False)


class MaskArithmetic(GraphPass):
    """What both passes share: why a bool tensor cannot become 0/1 floats, and how it does."""

    Args = MaskArgs
    args: MaskArgs

    def mask_problem(self, mask: gs.Tensor, dtype: np.dtype) -> Optional[str]:
        """Why the bool tensor `mask` cannot become 0/1 floats that ncnn computes in `dtype`, or None:
        a walk up its producers, through masks and then through the numbers they compare."""
        pending, seen = [mask], set()
        while pending:
            tensor = pending.pop()
            if tensor.name in seen:
                continue
            seen.add(tensor.name)
            if len(seen) > 256:
                return f"{mask.name!r} depends on too much to check; compute the mask on the host"
            step = self._mask_step if dtype_of(tensor) == np.bool_ else self._whole_step
            problem, operands = step(tensor, dtype)
            if problem:
                return problem
            pending.extend(reversed(operands))  # left operand first: its reason is the likelier one
        return None

    def _mask_step(self, mask: gs.Tensor, dtype: np.dtype) -> tuple[Optional[str], list[gs.Tensor]]:
        if constant_value(mask) is not None:
            return None, []
        if not mask.inputs:
            return (f"the mask is the bool graph input {mask.name!r}, which pnnx cannot read and ncnn has no "
                    f"type for; export it as a float 0/1 input and name it in integer_valued"), []
        node = mask.inputs[0]
        if node.op in COMPARISONS:
            threshold = self._threshold(node, dtype)
            if isinstance(threshold, str):
                return threshold, []
            return None, [] if threshold else list(node.inputs)
        if node.op in LOGIC:
            return None, list(node.inputs)
        if node.op in MOVEMENT or node.op == "Cast":
            return None, data_inputs(node)
        return f"the mask comes from {node.op} {node.name!r}, which has no arithmetic form here", []

    def _whole_step(self, tensor: gs.Tensor, dtype: np.dtype) -> tuple[Optional[str], list[gs.Tensor]]:
        """Whether `tensor` holds whole numbers ncnn computes in `dtype`: yes, no (why), or if these do."""
        value = constant_value(tensor)
        if value is not None:
            if value.dtype.kind != "f" or np.all(np.isfinite(value) & (np.round(value) == value)):
                return None, []
            return (f"the constant {tensor.name!r} is not all whole numbers, and a threshold on real values has "
                    f"no exact arithmetic form"), []
        if tensor.name in self.args.integer_valued:
            return None, []
        found = dtype_of(tensor)
        if found is None:
            return f"the dtype of {tensor.name!r} is unknown (shape inference did not reach it)", []
        source = cast_mask(tensor)
        if source is not None:  # `mask.to(torch.int64)`: the same 0/1 values
            return None, [source]
        if found.kind != "f":
            return (f"{tensor.name!r} is {found}: ncnn reads integers only in Embed (a float layer reads their "
                    f"bits as garbage); compute the mask on the host and feed it as float (id_mask_lookup "
                    f"handles `ids == pad` cast to float)"), []
        if found != dtype:
            return f"{tensor.name!r} is {found}, the mask is {dtype}", []
        if not tensor.inputs:
            return (f"the float input {tensor.name!r} is not known to hold whole numbers; if it does "
                    f"(a 0/1 mask), name it in the pass argument integer_valued"), []
        node = tensor.inputs[0]
        if node.op == "Cast":
            return (f"{tensor.name!r} is cast from {dtype_of(node.inputs[0])} {node.inputs[0].name!r}: ncnn cannot "
                    f"run that Cast (pnnx leaves Tensor.to); feed it as float and name it in integer_valued"), []
        if node.op in WHOLE_ARITHMETIC:
            return None, list(node.inputs)
        if node.op in MOVEMENT:
            return None, data_inputs(node)
        return (f"{tensor.name!r} ({node.op} output) is not known to hold whole numbers, and real values have an "
                f"exact arithmetic form only in an ordered comparison with a constant threshold; compute the mask "
                f"on the host"), []

    def _threshold(self, node: gs.Node, dtype: np.dtype) -> Union[None, str, tuple[gs.Tensor, np.ndarray, str]]:
        """For an ordered comparison of a real-valued tensor with a constant threshold: the tensor,
        the threshold and the comparison written with the tensor on the left; a reason when that
        comparison has no exact form; None for whole numbers (or no constant), the plain form."""
        values = [constant_value(t) for t in node.inputs]
        if node.op not in MIRRORED or (values[0] is None) == (values[1] is None):
            return None
        side = 0 if values[1] is not None else 1
        x, t = node.inputs[side], values[1 - side]
        assert t is not None  # one side is constant
        whole = t.dtype.kind != "f" or np.all(np.isfinite(t) & (np.round(t) == t))
        if whole and self.mask_problem(x, dtype) is None:
            return None
        if dtype_of(x) != dtype or dtype != np.float32:
            return f"{node.op} {node.name!r} compares {dtype_of(x)} values; the threshold form is for float32"
        as_float = t.astype(dtype)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == t):
            return f"the threshold {t.tolist()} of {node.op} {node.name!r} is not a finite float32"
        if np.any((as_float != 0) & (np.abs(as_float) < SMALLEST_THRESHOLD)):
            return (f"the threshold {t.tolist()} of {node.op} {node.name!r} is below 2**-100, where x - t can be "
                    f"a subnormal that a device flushing denormals reads as 0")
        return x, as_float, node.op if side == 0 else MIRRORED[node.op]

    def float_mask(self, emit: Emitter, mask: gs.Tensor) -> Value:
        """The 0/1 float form of a bool tensor that `mask_problem` accepted."""
        if mask.name not in emit.masks:
            emit.masks[mask.name] = self._build(emit, mask)
        return emit.masks[mask.name]

    def _build(self, emit: Emitter, mask: gs.Tensor) -> Value:
        value = constant_value(mask)
        if value is not None:
            return value.astype(emit.dtype)
        node, tag = mask.inputs[0], mask.name
        threshold = self._threshold(node, emit.dtype) if node.op in COMPARISONS else None
        if threshold:
            assert not isinstance(threshold, str), threshold  # mask_problem accepted this mask
            return self._gate(emit, *threshold, tag)
        if node.op in MOVEMENT:
            rearranged = [self.float_mask(emit, t) for t in data_inputs(node)]
            return emit.op(node.op, rearranged + list(node.inputs[len(rearranged):]), tag, attrs=dict(node.attrs))
        x, *rest = [self._operand(emit, t) for t in node.inputs]
        if node.op == "Cast":
            zero_one = dtype_of(node.inputs[0]) == np.bool_ or cast_mask(node.inputs[0]) is not None
            return x if zero_one else emit.clip01(emit.op("Abs", [x], f"{tag}/abs"), tag)
        if node.op == "Not":
            return emit.binary("Sub", emit.number(1), x, tag)
        y = rest[0]
        if node.op in ("And", "Or"):
            return emit.op("Mul" if node.op == "And" else "Max", [x, y], tag)
        if node.op == "Xor":
            return emit.op("Abs", [emit.binary("Sub", x, y, f"{tag}/sub")], tag)
        if node.op == "Equal":
            distance = emit.op("Abs", [emit.binary("Sub", x, y, f"{tag}/sub")], f"{tag}/abs")
            return emit.op("Relu", [emit.binary("Sub", emit.number(1), distance, f"{tag}/near")], tag)
        big, small = (x, y) if node.op.startswith("Greater") else (y, x)
        if node.op.endswith("OrEqual"):  # whole numbers: big >= small  <=>  big > small - 1
            small = emit.binary("Sub", small, emit.number(1), f"{tag}/less1")
        return emit.clip01(emit.binary("Sub", big, small, f"{tag}/sub"), tag)

    @staticmethod
    def _gate(emit: Emitter, x: gs.Tensor, t: np.ndarray, op: str, tag: str) -> Value:
        """x <op> t as 0/1 floats: Ceil(Clip(d, 0, 1)) is 1 where d > 0, else 0."""
        d = emit.binary("Sub", x, t, f"{tag}/sub") if op in ("Greater", "LessOrEqual") else \
            emit.binary("Sub", t, x, f"{tag}/sub")
        negate = op.endswith("OrEqual")  # x >= t is not (x < t); x <= t is not (x > t)
        above = emit.op("Ceil", [emit.clip01(d, f"{tag}/clip")], f"{tag}/ceil" if negate else tag)
        return emit.binary("Sub", emit.number(1), above, tag) if negate else above

    def _operand(self, emit: Emitter, tensor: gs.Tensor) -> Value:
        source = cast_mask(tensor)
        if dtype_of(tensor) == np.bool_ or source is not None:
            return self.float_mask(emit, tensor if source is None else source)
        value = constant_value(tensor)
        return tensor if value is None else value.astype(emit.dtype)


@dataclass
class WhereMatch:
    where: gs.Node
    dtype: np.dtype


@register_pass
class WhereToArithmeticPass(MaskArithmetic):
    """Where(cond, a, b) -> a*m + b*(1-m) with m the condition as 0/1 floats (masked_fill, causal masks)."""

    name = "where_to_arithmetic"
    targets = ("pnnx", "onnx2ncnn")
    Args = WhereArgs
    args: WhereArgs

    def match(self, node: gs.Node) -> Matched[WhereMatch]:
        if node.op != "Where":
            return None
        cond, a, b = node.inputs
        dtype = dtype_of(a) if dtype_of(a) is not None else dtype_of(b)
        if dtype is None or dtype.kind != "f":
            return self.refuse(node, f"it selects {dtype} values; ncnn computes in float")
        constants = [constant_value(t) for t in (cond, a, b)]
        if all(c is not None for c in constants):
            return None  # a constant: folding it is onnxsim's job
        if any(c is not None and np.isnan(c).any() for c in constants[1:]):
            return self.refuse(node, "a NaN fill cannot be blended (NaN * 0 is NaN)")
        problem = self.mask_problem(cond, dtype)
        if problem:
            return self.refuse(node, problem)
        return WhereMatch(node, dtype)

    def rewrite(self, graph: gs.Graph, match: WhereMatch) -> None:
        cond, a, b = match.where.inputs
        out = match.where.outputs[0]
        emit = Emitter(graph, match.where, self.name, match.dtype)
        chosen = self.float_mask(emit, cond)
        others = emit.binary("Sub", emit.number(1), chosen, "not_cond")
        terms = [self._term(emit, a, chosen, "from_a", out), self._term(emit, b, others, "from_b", out)]
        terms = [t for t in terms if t is not None] or [emit.op("Mul", [b, others], "from_b")]
        result = terms[0] if len(terms) == 1 else emit.op("Add", terms, "blend")
        match.where.outputs.clear()
        emit.write(result, out)

    def _term(self, emit: Emitter, x: gs.Tensor, weight: Value, tag: str, out: gs.Variable) -> Optional[Value]:
        """x * weight, folded when both are constants; None when x is a zero fill that can be dropped."""
        value = constant_value(x)
        if value is None:
            return emit.op("Mul", [x, weight], tag)
        value = np.asarray(np.nan_to_num(value, posinf=-self.args.neg_inf_value, neginf=self.args.neg_inf_value),
                           emit.dtype)
        rank = len(out.shape) if out.shape is not None else 0
        if value.size == 1 and value.item() == 0 and value.ndim <= rank and not isinstance(weight, np.ndarray):
            return None
        if isinstance(weight, np.ndarray):  # constant condition: select, so no 0 * fill is computed
            return emit.const(tag, np.where(weight != 0, value, 0))
        return emit.op("Mul", [weight, value], tag)


@register_pass
class CompareToArithmeticPass(MaskArithmetic):
    """Comparisons and Not/And/Or cast to float -> exact 0/1 arithmetic on whole-number values."""

    name = "compare_to_arithmetic"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Optional[gs.Node]:
        if node.op != "Cast" or dtype_of(node.inputs[0]) != np.bool_ or constant_value(node.inputs[0]) is not None:
            return None
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
        if dtype.kind != "f":
            return None
        problem = self.mask_problem(node.inputs[0], dtype)
        return self.refuse(node, problem) if problem else node

    def rewrite(self, graph: gs.Graph, cast: gs.Node) -> None:
        out = cast.outputs[0]
        to = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(cast.attrs["to"]))
        emit = Emitter(graph, cast, self.name, to)
        mask = self.float_mask(emit, cast.inputs[0])
        cast.outputs.clear()
        emit.write(mask, out)
