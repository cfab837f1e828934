"""Reshapes and transposes that exceed 4-D -> the same data movement within 4-D, batch axis first.

Before:  x[1,N,C] -- Reshape([1,N,3,H,d]) -- Transpose(perm=[2,0,3,1,4]) --+-- Gather(axis 0, 0) -> q[1,H,N,d]
                                                  (5-D: pnnx leaves          +-- Gather(axis 0, 1) -> k
                                                   `Tensor.reshape`)         +-- Gather(axis 0, 2) -> v
After:   x -- Reshape([1,N,3H,d]) -- Transpose([0,2,1,3]) --+-- Slice(axis 1, [0, H)) -- Reshape -> q
                                                           +-- Slice(axis 1, [H, 2H)) - Reshape -> k ...
The >4-D tensor is never built. Its size-1 axes (the batch of one among them) are dropped and
axes that stay neighbours through the transpose are merged, which gives the smallest transpose
doing the same movement; when that needs at most 4 dims it is written padded to 4-D with leading
1s (the batch first and alone, the form onnx2ncnn reads), and each use of the >4-D tensor reads
the 4-D one instead:
  Reshape / Squeeze / Unsqueeze / Flatten -> Reshape to the same shape;
  Gather(constant scalar) / Split on an axis -> Slice of the 4-D axis it starts (scaled by the
      axes merged after it; a Split's pieces may only be reshaped or squeezed);
  an elementwise unary op (Sigmoid, Relu, ...) -> the same op on the 4-D tensor, its uses likewise;
  Add/Sub/Mul/Div with a constant that broadcasts into it -> the same op with the constant merged
      along the same runs of axes (no run spans an axis where the constant changes between size 1
      and full, so it is reshaped, never expanded), its uses likewise (Swin's shift mask, added on
      attn.view(-1, nW, H, N, N)).
When the smallest transpose needs more than 4 dims but every use takes one index of one axis
(Gather, or a Split into pieces of one), each piece is taken first and transposed on its own:
Before:  qkv[nW,N,3HD] -- Reshape([nW,N,3,H,d]) -- Transpose([2,0,3,1,4]) -- Gather(axis 0, i) -> [nW,H,N,d]
After:   qkv -- Slice(axis 2, [i*H*d, (i+1)*H*d)) -- Reshape([nW,N,H,d]) -- Transpose([0,2,1,3]) -> [nW,H,N,d]
(the windows of Swin's attention are axis 0; without the batch of one the 5 axes still need 5
dims). When the picked axis and those after it are not the source's last axis, the source is
reshaped to [before, picked, after] and sliced on axis 1. When it is read only by Reshapes (and
elementwise unary ops), it is done instead as moves of one run of axes each, a Reshape to 4-D
[before, between, run, after] and Transpose([0,2,1,3]) that takes the run coming next in the
output to its place (at most one move per run): MobileViTv2's patch unfold, perm [0,1,3,5,2,4] of
[1,C,nh,ph,nw,pw], is two such moves.
The anchor is a Transpose of more than 4 dims fed by a Reshape from at most 4 dims, or such a
Reshape that no Transpose follows (a view split, e.g. [1,N,3,H,d] then unbind(2)).
Seen in: timm ViT qkv (`reshape(B,N,3,H,d).permute(2,0,3,1,4)` then `[0]` or `unbind(0)`),
YOLO heads (`view(B,na,no,ny,nx).permute(0,1,3,4,2).sigmoid()...view(B,-1,no)`), Swin window
partition (6-D). Left to the converters, which fuse them: channel shuffle ([1,g,C/g,H,W], perm
[0,2,1,3,4], into ShuffleChannel) and nn.MultiheadAttention's packed projection (perm [3,1,2,0,4]
then Squeeze; pnnx writes MultiHeadAttention). Pixel (un)shuffle needs 5 dims and is refused;
pnnx fuses it into PixelShuffle / Reorg.
Constraints: static shapes; the >4-D tensor is no graph output and has only the uses above;
the reduced transpose (of the whole, or of one piece) needs at most 4 dims -- a batch > 1 that
moves against other axes may not fit and is refused with the count it would need. Exact (data
movement only; an elementwise op on the same pairs of numbers).
Needed by: pnnx, which writes no ncnn layer for a Reshape to more than 4 dims (`Tensor.reshape`
is left) even with a batch of one; onnx2ncnn, which reads a 5-D Reshape as 4-D with the last two
axes merged and only some 5-D permutations. Reshapes and transposes of at most 4 dims that move
the batch axis (`[1,T,D] -> [T,D]`, `perm=[1,0,2]`, `view(B*H,T,d)`) are left alone: pnnx converts
them correctly (checked on ncnn against onnxruntime). Left as they were, torchvision Swin's
shifted-window attention is fused by pnnx into one MultiHeadAttention whose mask varies per head
only, so every window gets window 0's mask (wrong numbers, tests/test_pass_batch_axis.py); within
4-D it is not fused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Optional

import onnx_graphsurgeon as gs

from deploykit.graph_pass import (Builder, GraphPass, Matched, constant_value, known_shape, known_value, register_pass,
                                  static_shape)

NCNN_DIMS = 4
RESHAPE_LIKE = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
BINARY = ("Add", "Sub", "Mul", "Div")
UNARY = ("Sigmoid", "Relu", "Tanh", "Exp", "Neg", "Abs", "Sqrt", "Erf", "Softplus", "HardSigmoid", "HardSwish",
         "LeakyRelu", "Elu", "Selu", "Identity")


@dataclass
class Use:
    """One reader of the >4-D tensor: `kind` is reshape, gather, split or unary."""

    kind: str
    node: gs.Node
    axis: int = 0  # the >4-D axis a gather or split indexes
    uses: list[Use] = field(default_factory=list)  # a unary or binary op's readers
    constant: Any = None  # a binary op's constant operand, with the >4-D tensor's rank


@dataclass
class Island:
    anchor: gs.Node
    source: gs.Tensor  # the <=4-D tensor the >4-D one is reshaped from
    shape: list[int]  # of the 4-D tensor before the transpose
    perm: Optional[list[int]]  # None: no transpose needed
    starts_at: dict[int, tuple[int, int]]  # >4-D axis -> (4-D axis, size of the axes merged after it)
    uses: list[Use]


@dataclass
class Moves:
    """A >4-D transpose that needs more than 4 dims, read only by Reshapes (and elementwise unary
    ops): done as block moves, each a 4-D Reshape + Transpose([0, 2, 1, 3])."""

    anchor: gs.Node
    source: gs.Tensor
    moves: list[list[int]]
    uses: list[Use]


@dataclass
class Pieces:
    """A >4-D transpose that needs more than 4 dims, read only by index along one axis: each piece
    is taken from the source first, and the transpose of a piece has one axis fewer."""

    anchor: gs.Node
    source: gs.Tensor
    around: list[int]  # the source as [before, picked, after] (the >4-D shape around the picked axis)
    shape: list[int]  # of one piece, 4-D, before its transpose
    perm: Optional[list[int]]
    uses: list[Use]


def only_reshaped(uses: list[Use]) -> bool:
    return all(u.kind == "reshape" or (u.kind == "unary" and only_reshaped(u.uses)) for u in uses)


def broadcast_breaks(shape: list[int], constant: list[int]) -> set[int]:
    """The axes (of size > 1) where a broadcast constant changes between full and size 1 from the
    axis of size > 1 before: no merged run of the 4-D form may span them."""
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    return {a for previous, a in zip(kept, kept[1:]) if (constant[a] == 1) != (constant[previous] == 1)}


def merged_runs(shape: list[int], perm: list[int], indexed: set[int]) -> tuple[list[list[int]], list[int]]:
    """The axes of `shape` that move together under `perm`: size-1 axes dropped, neighbours that stay
    neighbours merged (unless a reader indexes the later one). Runs of input axes in output order,
    and the output axis each run starts at."""
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    runs: list[list[int]] = []
    first: list[int] = []
    for out_axis, in_axis in enumerate(perm):
        if shape[in_axis] == 1:
            continue
        if runs and out_axis not in indexed and kept.index(in_axis) == kept.index(runs[-1][-1]) + 1:
            runs[-1].append(in_axis)
        else:
            runs.append([in_axis])
            first.append(out_axis)
    return runs, first


def fit_4d(shape: list[int], perm: list[int], indexed: set[int]) -> tuple[list[int], Optional[list[int]], dict] | int:
    """The smallest transpose doing `perm` on `shape` (merged_runs), padded to 4-D with leading 1s;
    as (shape, perm or None for none, >4-D output axis -> (4-D axis, size of the axes merged after
    it)), or the number of dims it needs when that is more than 4."""
    runs, first = merged_runs(shape, perm, indexed)
    if len(runs) > NCNN_DIMS:
        return len(runs)
    pad = NCNN_DIMS - len(runs)
    by_input = sorted(range(len(runs)), key=lambda t: runs[t][0])
    reduced = [1] * pad + [prod(shape[a] for a in runs[t]) for t in by_input]
    new_perm = list(range(pad)) + [pad + by_input.index(t) for t in range(len(runs))]
    starts_at = {out_axis: (pad + t, prod(shape[a] for a in runs[t][1:])) for t, out_axis in enumerate(first)}
    return reduced, None if new_perm == sorted(new_perm) else new_perm, starts_at


def block_moves(shape: list[int], perm: list[int]) -> list[list[int]]:
    """`perm` on `shape` as moves of one run each: the 4-D shape [before, between, run, after] that
    each move transposes with perm [0, 2, 1, 3], taking the run that comes next in the output to
    its place (an insertion sort of the runs; at most one move per run)."""
    runs, _ = merged_runs(shape, perm, set())
    size = [prod(shape[a] for a in run) for run in runs]
    order = sorted(range(len(runs)), key=lambda t: runs[t][0])  # runs as they lie in the input
    moves = []
    for place in range(len(runs)):
        at = order.index(place)
        if at == place:
            continue
        groups = (order[:place], order[place:at], [place], order[at + 1:])
        moves.append([prod(size[t] for t in group) for group in groups])
        order = order[:place] + [place] + order[place:at] + order[at + 1:]
    return moves


@register_pass
class BatchAxisReshapePass(GraphPass):
    name = "batch_axis_reshape"
    targets = ("pnnx", "onnx2ncnn")

    def match(self, node: gs.Node) -> Matched[Island | Pieces | Moves]:
        if node.op == "Transpose" and len(node.inputs[0].shape or ()) > NCNN_DIMS:
            reshape = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
            if reshape is None or reshape.op != "Reshape":
                return self.refuse(node, f"its {len(node.inputs[0].shape)}-D input is not made by a Reshape")
            if len(reshape.outputs[0].outputs) != 1:
                return self.refuse(node, "its >4-D input has other uses too")
            shape = static_shape(node.inputs[0])
            perm = list(node.attrs.get("perm", reversed(range(len(shape or [])))))
        elif node.op == "Reshape" and len(node.outputs[0].shape or ()) > NCNN_DIMS:
            readers = node.outputs[0].outputs
            if any(r.op == "Transpose" for r in readers):
                return None if len(readers) == 1 else self.refuse(node, "its >4-D result feeds a Transpose and more")
            reshape, shape = node, static_shape(node.outputs[0])
            perm = list(range(len(shape or [])))
        else:
            return None
        source = reshape.inputs[0]
        fused = self._fused_by_converters(shape, perm, node.outputs[0].outputs)
        if fused:
            return self.refuse(node, fused)
        if shape is None or static_shape(source) is None:
            return self.refuse(node, "it has no static shape; export with fixed input shapes")
        if len(source.shape) > NCNN_DIMS:
            return self.refuse(node, f"it is fed by a {len(source.shape)}-D tensor, not one within 4-D")
        result = node.outputs[0]
        uses, indexed = self._uses(result)
        if uses is None:
            return self.refuse(node, indexed)
        return self._reduce(node, source, shape, perm, uses, indexed)

    @staticmethod
    def _fused_by_converters(shape, perm, readers) -> Optional[str]:
        if shape is None or len(readers) != 1 or len(shape) != 5 or shape[0] != 1:
            return None
        if perm == [0, 2, 1, 3, 4] and readers[0].op == "Reshape":
            return "a channel shuffle: pnnx and onnx2ncnn fuse it into ShuffleChannel"
        if perm == [3, 1, 2, 0, 4] and shape[3] == 3 and readers[0].op == "Squeeze":
            return "nn.MultiheadAttention's packed q/k/v projection: pnnx fuses the attention into MultiHeadAttention"
        return None

    def _uses(self, tensor: gs.Tensor) -> tuple[Optional[list[Use]], Any]:
        """The readers of a >4-D tensor and the axes they index, or (None, why) when one does not fit."""
        if not tensor.outputs:  # the graph was cleaned up, so a tensor nobody reads is a graph output
            return None, "its >4-D result is a graph output"
        uses, indexed = [], set()
        for reader in tensor.outputs:
            shapes = [static_shape(out) for out in reader.outputs]
            if reader.inputs[0] is not tensor or any(s is None for s in shapes):
                return None, f"its >4-D result is read by {reader.op} in a way it cannot follow"
            if reader.op in RESHAPE_LIKE:
                uses.append(Use("reshape", reader))
            elif reader.op == "Gather":
                index = constant_value(reader.inputs[1])
                if index is None or index.ndim != 0:
                    return None, "its >4-D result is read by a Gather without a constant scalar index"
                axis = reader.attrs.get("axis", 0) % len(tensor.shape)
                uses.append(Use("gather", reader, axis))
                indexed.add(axis)
            elif reader.op == "Split":
                axis = reader.attrs.get("axis", 0) % len(tensor.shape)
                pieces = [r for out in reader.outputs for r in out.outputs]
                if not all(out.outputs for out in reader.outputs) or any(r.op not in RESHAPE_LIKE for r in pieces):
                    return None, "its >4-D result is split into pieces that are not only reshaped"
                uses.append(Use("split", reader, axis))
                indexed.add(axis)
            elif reader.op in BINARY and (constant := self._broadcast_constant(reader, tensor)) is not None:
                inner, more = self._uses(reader.outputs[0])
                if inner is None:
                    return None, more
                uses.append(Use("binary", reader, uses=inner, constant=constant))
                indexed |= more | broadcast_breaks(tensor.shape, constant.shape)
            elif reader.op in UNARY and len(reader.inputs) == 1:
                inner, more = self._uses(reader.outputs[0])
                if inner is None:
                    return None, more
                uses.append(Use("unary", reader, uses=inner))
                indexed |= more
            else:
                return None, (f"its >4-D result is read by {reader.op}, which is not a reshape, a constant "
                              f"index, a split or an elementwise unary op")
        return uses, indexed

    @staticmethod
    def _broadcast_constant(reader: gs.Node, tensor: gs.Tensor) -> Optional[Any]:
        """The constant operand of an elementwise op on the >4-D tensor, at that tensor's rank, when
        it broadcasts into the tensor's shape (the result has the tensor's shape), else None."""
        other = reader.inputs[1] if reader.inputs[0] is tensor else reader.inputs[0]
        value = constant_value(other)
        shape = static_shape(tensor)
        if value is None or other is tensor or shape is None or value.ndim > len(shape):
            return None
        value = value.reshape([1] * (len(shape) - value.ndim) + list(value.shape))
        sizes: tuple[int, ...] = value.shape
        return value if all(c in (1, d) for c, d in zip(sizes, shape)) else None

    def _reduce(self, node, source, shape, perm, uses, indexed) -> Matched[Island | Pieces | Moves]:
        fitted = fit_4d(shape, perm, indexed)
        if isinstance(fitted, int):
            pieces = self._pieces(node, source, shape, perm, uses, indexed)
            if pieces is not None:
                return pieces
            if only_reshaped(uses):
                return Moves(node, source, block_moves(shape, perm), uses)
            return self.refuse(node, f"{shape} with perm {perm} needs {fitted} dims even without its size-1 "
                                     f"axes, more than ncnn's 4, and is read by more than reshapes or by index "
                                     f"along one axis")
        reduced, new_perm, starts_at = fitted
        return Island(node, source, reduced, new_perm, starts_at, uses)

    def _pieces(self, node, source, shape, perm, uses, indexed) -> Optional[Pieces]:
        """Pieces when every use indexes one axis (a Gather, or a Split into pieces of one) and the
        transpose of a piece fits 4-D."""
        if len(indexed) != 1 or not all(u.kind in ("gather", "split") for u in uses):
            return None
        if any(u.kind == "split" and any(known_shape(o)[u.axis] != 1 for o in u.node.outputs) for u in uses):
            return None
        (axis,) = indexed
        picked = perm[axis]
        rest = [a for a in range(len(shape)) if a != picked]
        piece = [shape[a] for a in rest]
        piece_perm = [rest.index(a) for a in perm if a != picked]
        fitted = fit_4d(piece, piece_perm, set())
        if isinstance(fitted, int):
            return None
        around = [prod(shape[:picked]), shape[picked], prod(shape[picked + 1:])]
        return Pieces(node, source, around, fitted[0], fitted[1], uses)

    def rewrite(self, graph: gs.Graph, island: Island | Pieces | Moves) -> None:
        if isinstance(island, Pieces):
            self._rewrite_pieces(graph, island)
            return
        if isinstance(island, Moves):
            b = self.builder(graph, island.anchor, output_suffix=":out")
            flat = island.source
            for number, move in enumerate(island.moves):
                flat = b.reshape(flat, move, f"move{number}/reshape")
                flat = b.op("Transpose", [flat], f"move{number}/transpose", attrs={"perm": [0, 2, 1, 3]},
                            dtype=flat.dtype)
            self._read(b, "use", flat, island, island.uses)
            return
        b = self.builder(graph, island.anchor, output_suffix=":out")
        flat = b.reshape(island.source, island.shape, "reshape")
        if island.perm is not None:
            flat = b.op("Transpose", [flat], "transpose", attrs={"perm": island.perm}, dtype=flat.dtype)
        self._read(b, "use", flat, island, island.uses)

    def _read(self, b: Builder, tag: str, flat: gs.Tensor, island: Island | Moves, uses: list[Use]) -> None:
        for number, use in enumerate(uses):
            node, here = use.node, f"{tag}{number}"
            outs = list(node.outputs)
            if use.kind == "binary":
                assert isinstance(island, Island)  # what Moves moves is read by reshapes and unary ops only
                constant = use.constant.reshape(self._constant_shape(island, use.constant))
                operands = [flat, constant] if constant_value(node.inputs[0]) is None else [constant, flat]
                result = b.op(node.op, operands, here, attrs=dict(node.attrs), dtype=outs[0].dtype)
                self._read(b, f"{here}/use", result, island, use.uses)
                continue
            if use.kind == "unary":
                result = b.op(node.op, [flat], here, attrs=dict(node.attrs), dtype=outs[0].dtype)
                self._read(b, f"{here}/use", result, island, use.uses)
                continue
            node.outputs.clear()
            if use.kind == "reshape":
                b.reshape(flat, known_shape(outs[0]), here, outs[0])
            elif use.kind == "gather":
                index = int(known_value(node.inputs[1]))
                index += node.inputs[0].shape[use.axis] if index < 0 else 0
                self._take(b, here, flat, island, use.axis, index, 1, outs[0])
            else:  # split: each piece a Slice, reshaped for each of its readers
                offset = 0
                for k, piece in enumerate(outs):
                    size = known_shape(piece)[use.axis]
                    part = self._take(b, f"{here}/piece{k}", flat, island, use.axis, offset, size, None)
                    offset += size
                    for j, reader in enumerate(list(piece.outputs)):
                        target = reader.outputs[0]
                        reader.outputs.clear()
                        b.reshape(part, known_shape(target), f"{here}/piece{k}/reshape{j}", target)

    @staticmethod
    def _constant_shape(island: Island, constant: Any) -> list[int]:
        """A constant at the >4-D rank, merged along the runs of the 4-D tensor."""
        firsts = sorted(island.starts_at)
        shape = [1] * NCNN_DIMS
        for k, first in enumerate(firsts):
            end = firsts[k + 1] if k + 1 < len(firsts) else constant.ndim
            shape[island.starts_at[first][0]] = prod(constant.shape[first:end])
        return shape

    def _rewrite_pieces(self, graph: gs.Graph, pieces: Pieces) -> None:
        b = self.builder(graph, pieces.anchor, output_suffix=":out")
        before, picked, after = pieces.around
        source, axis, step = pieces.source, len(pieces.source.shape) - 1, after
        if known_shape(source)[-1] != picked * after:  # else the picked axis and those after it are the last one
            source, axis, step = b.reshape(source, pieces.around, "around"), 1, 1
        for number, use in enumerate(pieces.uses):
            outs = [use.node.outputs[0]] if use.kind == "gather" else list(use.node.outputs)
            first = int(known_value(use.node.inputs[1])) % picked if use.kind == "gather" else 0
            targets = [(out, [out]) if use.kind == "gather" else (out, [r.outputs[0] for r in out.outputs])
                       for out in outs]
            use.node.outputs.clear()
            for k, (out, readers_out) in enumerate(targets):
                index, tag = first + k, f"use{number}/piece{k}"
                piece = b.slice(source, [index * step], [(index + 1) * step], [axis], f"{tag}/slice")
                piece = b.reshape(piece, pieces.shape, f"{tag}/reshape")
                if pieces.perm is not None:
                    piece = b.op("Transpose", [piece], f"{tag}/transpose", attrs={"perm": pieces.perm},
                                 dtype=piece.dtype)
                moved = pieces.shape if pieces.perm is None else [pieces.shape[a] for a in pieces.perm]
                for j, target in enumerate(readers_out):
                    if target is not out:  # a Split's piece: its Squeeze/Reshape reader is replaced
                        target.inputs[0].outputs.clear()
                    if len(readers_out) == 1 and static_shape(target) == moved:
                        b.write(piece, target)
                    else:
                        b.reshape(piece, known_shape(target), f"{tag}/out{j}", target)

    def _take(self, b, tag, flat, island, axis, start, count, out):
        """Elements [start, start+count) of a >4-D axis, as a Slice of the 4-D tensor (then reshaped
        to `out`'s shape when `out` is given)."""
        if axis not in island.starts_at:  # a size-1 axis: nothing to slice
            part = flat
        else:
            flat_axis, inner = island.starts_at[axis]
            part = b.slice(flat, [start * inner], [(start + count) * inner], [flat_axis], f"{tag}/slice")
        return b.reshape(part, static_shape(out), f"{tag}/reshape", out) if out is not None else part
