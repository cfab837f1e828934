"""onnx2ncnn: the legacy converter, run from a binary the user points to.

The classic `onnx2ncnn` (Tencent/ncnn tools/onnx/onnx2ncnn.cpp) ships in no pip or Debian
package; it is found through `converter.path`, `$ONNX2NCNN` or PATH, and called as
`onnx2ncnn model.onnx out.param out.bin`. It keeps the ONNX tensor names as blob names and treats
axis 0 as the batch. When it cannot convert something it prints a line to stderr, writes whatever
it could into the .param, and still exits 0: success is read from its output, not its exit code.
Only a file it cannot read or a graph it cannot sort ends it with exit code 255 (its `return -1`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from deploykit.core.errors import ConfigError, DeployError, StageError
from deploykit.ncnn.converters.base import BATCH_AXIS, Blob, Conversion, env_path, find_executable, on_path, run_tool
from deploykit.ncnn.param import PARAM_MAGIC, Layer, NcnnParam

TOOL = "onnx2ncnn"
_USE_PNNX = "or use `converter.name: pnnx`, the maintained converter"


@dataclass(frozen=True)
class MessageFamily:
    """A kind of line onnx2ncnn prints when it fails or partly fails, and what to do about it."""

    name: str
    pattern: re.Pattern[str]
    hint: str


def _family(name: str, pattern: str, hint: str) -> MessageFamily:
    return MessageFamily(name, re.compile(pattern), hint)


# Every failure message of tools/onnx/onnx2ncnn.cpp (the single-file versions up to its last
# one, and the split-up build MMDeploy ships), one regex per family, matched against a whole
# stripped line. The first family that matches names the line. Order matters only for the last
# entry, which catches any other "Unsupported ..." line a build may print.
MESSAGE_FAMILIES: tuple[MessageFamily, ...] = (
    # "%s not supported yet!": an ONNX op with no ncnn layer. onnx2ncnn copies the op type into
    # the .param as the layer type (which ncnn cannot load) and goes on; exit code 0.
    _family("unsupported_op", r"^(?P<op>[A-Za-z_][\w.:-]*) not supported yet!?$",
            "rewrite that op into ones ncnn has with a pass (`deploykit passes` lists them), " + _USE_PNNX),
    # "Unsupported reduction axes !", "Unsupported slice axes !", "Unsupported split axis !",
    # "Unsupported squeeze axes !", "Unsupported unsqueeze axes !" (MMDeploy adds ": %d, %s"):
    # an axis ncnn cannot address -- axis 0 (the batch, which ncnn drops) or past 4-D.
    _family("unsupported_axis",
            r"^Unsupported (?:reduction|slice|split|squeeze|unsqueeze) ax[ie]s\s*!(?::\s*-?\d+.*)?$",
            "keep axis 0 a batch of one and work on the other axes (reshape first), " + _USE_PNNX),
    # "Unsupported Gather axis: %d" (MMDeploy's build): a Gather along the batch axis, such as
    # an embedding lookup into a constant table.
    _family("unsupported_gather_axis", r"^Unsupported Gather axis: -?\d+$",
            "replace the Gather along axis 0 (e.g. a pass turning a table lookup into Embed), " + _USE_PNNX),
    # "Unsupported indice dims > 1" (MMDeploy's build; printed without a newline, so the next
    # message is glued to it): Gather indices with more than one dimension.
    _family("unsupported_gather_indices", r"^Unsupported indice dims > 1$",
            "gather with 1-D indices (flatten them and reshape the result), " + _USE_PNNX),
    # "Unsupported slice step !" (MMDeploy: "... ! Use custom TensorSlice", "... ! Unsupported
    # slice step"): a Slice with a step other than 1, which ncnn's Crop cannot do.
    _family("unsupported_slice_step", r"^Unsupported slice step !.*$",
            "slice with step 1 (or reshape and take every n-th row), " + _USE_PNNX),
    # "Unsupported Resize scales !", "Unsupported Resize scales and sizes are all empty!",
    # "Unsupported Upsample scales !", "Unsupported Upsample mode !": a resize that scales the
    # channel axis, takes its size from a tensor computed at run time, or is trilinear.
    _family("unsupported_resize", r"^Unsupported (?:Resize|Upsample) (?:scales|mode)\b.*!$",
            "resize with constant scales on H and W only, nearest or (bi)linear; export with a "
            "static input shape, " + _USE_PNNX),
    # "Unsupported transpose type !", "Unsupported Flatten axis %d!", "Unsupported DepthToSpace
    # mode %s!": a layout change ncnn's Permute, Flatten or PixelShuffle cannot express.
    _family("unsupported_layout",
            r"^Unsupported (?:transpose type\s*!|Flatten axis -?\d+!|DepthToSpace mode \S*!)$",
            "keep the batch axis first and the permutation within the last 3 axes, " + _USE_PNNX),
    # "Unsupported reshape weight !", "Unsupported type %s in query_shape !", "Not support
    # axes=%d !", "cannot find %s from graph !" (MMDeploy's build): a shape that is computed at
    # run time, where onnx2ncnn needs a constant.
    _family("dynamic_shape",
            r"^(?:Unsupported reshape weight\s*!|Unsupported type \S+ in query_shape\s*!"
            r"|Not support axes=-?\d+\s*!|cannot find \S+ from graph\s*!)$",
            "export with static shapes and simplify the graph (simplify.enabled: true), " + _USE_PNNX),
    # "Unknown data type %d": a constant (shape, scales, pads, slice bounds) stored in a dtype
    # onnx2ncnn cannot read; it reads it as empty, so that layer's parameters are wrong (some
    # builds abort right after it).
    _family("unknown_dtype", r"^Unknown data type -?\d+$",
            "store shape-like constants as int64 and scales as float32, " + _USE_PNNX),
    # "Usage: %s [onnxpb] [ncnnparam] [ncnnbin]": called with other than 1 or 3 arguments.
    _family("usage", r"^Usage: \S+ \[onnxpb\] \[ncnnparam\] \[ncnnbin\]$",
            "remove converter.args: onnx2ncnn takes exactly the model and the two output files"),
    # "open failed %s": the ONNX file could not be opened.
    _family("open_failed", r"^open failed .+$",
            "check that the exported .onnx exists and is readable"),
    # "read_proto_from_binary failed" (after protobuf's own "[libprotobuf ERROR ...]" line): the
    # file is not an ONNX protobuf this build can parse -- truncated, stored with external data,
    # over 2 GB, or newer than the onnx.proto it was built with.
    _family("unreadable_model", r"^(?:read_proto_from_binary failed|\[libprotobuf (?:ERROR|FATAL)\b.*)$",
            "check that onnx.load() reads the file without external data; rebuild onnx2ncnn "
            "against a newer onnx.proto, " + _USE_PNNX),
    # "cannot find node produces %s but node %d requires it": a node input no node produces, so
    # the graph cannot be sorted.
    _family("broken_graph", r"^cannot find node produces \S+ but node -?\d+ requires it$",
            "check the graph with onnx.checker (the tensor named has no producer)"),
    # Any other "Unsupported ..." line a build of onnx2ncnn prints: a case it did not convert.
    _family("unsupported_other", r"^Unsupported\b.*$",
            "see convert.log for the node; " + _USE_PNNX),
)

# "  # %s=%g" / "  # %s=%lld" / "  # %s=%s" / "  # %s %d": after "X not supported yet!" the older
# builds list that node's attributes. Not a problem of its own: it is folded into the one above.
_ATTRIBUTE_LINE = re.compile(r"^#\s*(?P<attr>\S.*)$")
# A message printed without its newline runs into the next one ("...dims > 1Unsupported Gather").
_GLUED = re.compile(r"(?<=\S)(?=Unsupported )")


def classify(line: str) -> Optional[MessageFamily]:
    """The family of one line of onnx2ncnn's output, or None for a harmless line."""
    stripped = line.strip()
    return next((family for family in MESSAGE_FAMILIES if family.pattern.match(stripped)), None)


def _lines(text: str) -> list[str]:
    return [part.strip() for line in text.splitlines() for part in _GLUED.split(line) if part.strip()]


def _findings(text: str) -> list[tuple[MessageFamily, str]]:
    found: list[tuple[MessageFamily, str]] = []
    attributes: list[str] = []  # of the last "not supported yet" line
    for line in _lines(text):
        family = classify(line)
        attribute = _ATTRIBUTE_LINE.match(line)
        if family is None and attribute and found and found[-1][0].name == "unsupported_op":
            attributes.append(attribute["attr"])
            last_family, last_line = found[-1]
            base = last_line.split(" (", 1)[0]
            found[-1] = (last_family, f"{base} ({', '.join(attributes)})")
        elif family is not None:
            attributes = []
            found.append((family, line))
    return found


def find_problems(text: str) -> list[str]:
    """The lines of onnx2ncnn's output that say it did not convert something, in order.

    A repeated line is listed once, with its count: `Gather not supported yet! (axis=0) [x3]`.
    """
    counts = Counter(line for _, line in _findings(text))
    return [line if counts[line] == 1 else f"{line} [x{counts[line]}]" for line in counts]


def problem_hints(text: str) -> list[str]:
    """One `family: what to try` line for each kind of problem in onnx2ncnn's output."""
    families = dict.fromkeys(family for family, _ in _findings(text))
    return [f"{family.name}: {family.hint}" for family in families]


class Onnx2NcnnConverter:
    name = TOOL

    def __init__(self, path: Optional[Path] = None) -> None:
        self.configured_path = path

    def executable(self) -> Path:
        return find_executable(TOOL, [("converter.path", self.configured_path),
                                      ("$ONNX2NCNN", env_path("ONNX2NCNN")),
                                      ("PATH", on_path(TOOL))])

    def version(self) -> str:
        """onnx2ncnn has no version flag and running it without a model prints only a usage line,
        so the binary is never run for this: the version is unknown, the path is what we know."""
        try:
            return f"unknown ({self.executable()})"
        except DeployError:
            return "not found"

    def convert(self, model_path: Path, inputs: dict[str, np.ndarray], outputs: list[str], workdir: Path,
                *, fp16: bool, args: list[str], timeout: float) -> Conversion:
        exe = self.executable()
        if args:
            raise ConfigError(f"onnx2ncnn takes no options, but converter.args is {list(args)}.", stage="convert",
                              hint="remove converter.args: onnx2ncnn is called as `onnx2ncnn model.onnx "
                                   f"out.param out.bin` and newer builds refuse more arguments; {_USE_PNNX}.")
        param, binary, log = workdir / "model.ncnn.param", workdir / "model.ncnn.bin", workdir / "convert.log"
        command = [str(exe), str(Path(model_path).resolve()), param.name, binary.name]
        try:
            text = run_tool(command, cwd=workdir, timeout=timeout, log=log, tool=TOOL)
        except StageError as exc:
            raise _explained(exc, log) from None
        problems = find_problems(text)
        missing = [p.name for p in (param, binary) if not p.is_file()]
        if missing:
            said = "; ".join(problems[:4]) or " | ".join(text.strip().splitlines()[-3:]) or "nothing"
            raise StageError(f"onnx2ncnn ({exe}) exited 0 without writing {' and '.join(missing)}; it said: {said}.",
                             stage="convert", hint=f"its full output is in {log.name}; check that {workdir} is "
                                                   f"writable and that the binary is onnx2ncnn, {_USE_PNNX}.")
        first_line = param.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip()
        if first_line != PARAM_MAGIC:
            raise StageError(f"onnx2ncnn ({exe}) wrote a {param.name} that is not an ncnn .param (its first line "
                             f"is {first_line[:40]!r}, not {PARAM_MAGIC}).", stage="convert",
                             hint=f"check that the binary is onnx2ncnn and see {log.name}; {_USE_PNNX}.")
        in_blobs = [Blob(name, name, BATCH_AXIS) for name in inputs]
        out_blobs = [Blob(name, name, BATCH_AXIS) for name in outputs]
        if not problems:  # with problems the stage fails on them; a missing blob would hide them
            keep_outputs_readable(param, outputs)
            size_layernorms(param, Path(model_path))
            batched_matmuls(param, Path(model_path))
            row_products_as_gemm(param, Path(model_path))
            _check_blobs(param, in_blobs, out_blobs)
        messages = problem_hints(text)
        if fp16:
            messages.append("onnx2ncnn writes fp32 weights and has no fp16 option: converter.fp16 is ignored.")
        return Conversion(param=param, bin=binary, log=log, inputs=in_blobs, outputs=out_blobs,
                          problems=problems, messages=messages)


def _explained(exc: StageError, log: Path) -> StageError:
    """run_tool's error (crash, timeout, exit code), with what onnx2ncnn said and what to try."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    findings = _findings(text)
    message = exc.message
    unseen = [line for _, line in findings if line not in message]
    if unseen:
        message += " onnx2ncnn said: " + "; ".join(unseen[:4]) + "."
    hints = list(dict.fromkeys(family.hint for family, _ in findings))
    hint = "; ".join([*hints, exc.hint] if hints else [exc.hint.rstrip("."), _USE_PNNX + "."])
    return StageError(message, stage=exc.stage or "convert", hint=hint)


def keep_outputs_readable(param: Path, outputs: list[str]) -> list[str]:
    """Give every graph output that a layer also reads a Split, as pnnx writes it; returns those outputs.

    onnx2ncnn counts only the layers that read a blob, not the graph's outputs, so an output that
    one layer goes on to read (the attention weights of a block) has no Split. In light mode, the
    way apps run ncnn, an extractor frees a blob once its readers have run; extracting that output
    after another one then recomputes it from an input already freed, and the runtime crashes
    (SIGFPE or SIGSEGV). With the Split, the output's own copy has no reader and is kept.
    """
    model = NcnnParam.read(param)
    kept = []
    for output in outputs:
        readers, producer = model.readers(output), model.producer(output)
        if not readers or producer is None or producer.kind == "Input":
            continue
        computed, read = f"{output}_splitncnn_computed", f"{output}_splitncnn_read"
        producer.tops[producer.tops.index(output)] = computed
        for reader in readers:
            reader.bottoms = [read if blob == output else blob for blob in reader.bottoms]
        model.layers.insert(model.layers.index(producer) + 1,
                            Layer("Split", f"{output}_splitncnn_output", [computed], [output, read]))
        kept.append(output)
    if kept:
        model.write(param)
    return kept


def size_layernorms(param: Path, model_path: Path) -> list[str]:
    """Write the normalised size (`0=`) onto each LayerNorm onnx2ncnn wrote without it; returns their names.

    onnx2ncnn fuses ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div(-Mul-Add) into ncnn LayerNorm, but when
    the scale is all ones and the bias all zeros (an nn.LayerNorm as initialised) it drops the affine
    and writes no `0=`. ncnn then takes the size as 0: on a 3-D Mat (a [1,C,H,W] tensor) it
    normalises over h*w instead of w, and the numbers are wrong. The size is the last axis of the
    input (or the last two: the chain's ReduceMean axes), from the ONNX graph converted.
    """
    import onnx

    from deploykit.onnx.graph_pass import with_inferred_shapes

    model = NcnnParam.read(param)
    unsized = [layer for layer in model.layers if layer.kind == "LayerNorm" and layer.param(0) is None]
    if not unsized:
        return []
    graph = with_inferred_shapes(onnx.load(str(model_path), load_external_data=False))[0].graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.value_info, *graph.output)}
    nodes = {node.name or node.output[0]: node for node in graph.node}  # onnx2ncnn's layer names
    producers = {out: node for node in graph.node for out in node.output}
    sized = []
    for layer in unsized:
        div = nodes.get(layer.name)  # the chain's Div, or the Add after its Mul when onnx2ncnn took those in
        while div is not None and div.op_type in ("Add", "Mul"):
            div = producers.get(div.input[0])
        sub = producers.get(div.input[0]) if div is not None and div.op_type == "Div" else None
        mean = producers.get(sub.input[1]) if sub is not None and sub.op_type == "Sub" else None
        shape = shapes.get(div.input[0]) if mean is not None and div is not None else None
        axes = next((list(a.ints) for a in mean.attribute if a.name == "axes"), []) if mean is not None else []
        if not shape or not all(shape[-len(axes):]) or len(axes) not in (1, 2):
            continue  # not the fused chain as expected: left as onnx2ncnn wrote it
        layer.params.insert(0, f"0={int(np.prod(shape[-len(axes):]))}")
        sized.append(layer.name)
    if sized:
        model.write(param)
    return sized


def batched_matmuls(param: Path, model_path: Path) -> list[str]:
    """Turn each Gemm that onnx2ncnn writes for a MatMul of two computed tensors into ncnn's MatMul;
    returns their names.

    onnx2ncnn writes a MatMul whose B is not a 2-D weight as a Gemm with no parameters, which
    multiplies two 2-D Mats: right for [1,M,K] x [1,K,N], but attention's [1,H,T,D] x [1,H,D,T] is
    a pair of 3-D Mats, and Gemm gives a wrong result. ncnn's MatMul layer multiplies Mats as ONNX's
    MatMul does (batched over the leading axes, broadcasting them), which is what pnnx writes.
    """
    import onnx

    model = NcnnParam.read(param)
    gemms = [layer for layer in model.layers if layer.kind == "Gemm" and not layer.params and len(layer.bottoms) == 2]
    if not gemms:
        return []
    graph = onnx.load(str(model_path), load_external_data=False).graph
    matmuls = {node.name or node.output[0] for node in graph.node if node.op_type == "MatMul"}
    changed = []
    for layer in gemms:
        if layer.name in matmuls:
            layer.kind, layer.params = "MatMul", ["0=0"]
            changed.append(layer.name)
    if changed:
        model.write(param)
    return changed


def row_products_as_gemm(param: Path, model_path: Path) -> list[str]:
    """Write each InnerProduct that onnx2ncnn made of a MatMul over the rows of a [1,T,K] tensor
    (T > 1: a 2-D Mat) as ncnn's Gemm with the weight as its constant B; returns their names.

    ncnn runs both as the same product row by row, but Gemm's kernel is the one pnnx writes for a
    Linear, and InnerProduct's is slower on many rows (0.70 against 0.23 ms for 257 x 128 -> 512,
    1 thread). The .bin is unchanged: Gemm reads a constant B with transB=1 as N rows of K, with
    the same type tag first, exactly the bytes onnx2ncnn wrote for the InnerProduct.
    """
    import onnx

    from deploykit.onnx.graph_pass import with_inferred_shapes

    model = NcnnParam.read(param)
    candidates = [layer for layer in model.layers if layer.kind == "InnerProduct" and layer.param(1) == "0"]
    if not candidates:
        return []
    graph = with_inferred_shapes(onnx.load(str(model_path), load_external_data=False))[0].graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*graph.input, *graph.value_info, *graph.output)}
    rows = {node.name or node.output[0] for node in graph.node if node.op_type == "MatMul"
            and len(shape := shapes.get(node.input[0], [])) == 3 and shape[0] == 1 and shape[1] > 1}
    changed = []
    for layer in candidates:
        if layer.name not in rows:
            continue
        num_output, weight_size = layer.param(0), layer.param(2)
        assert num_output is not None and weight_size is not None, f"InnerProduct {layer.name} without 0= or 2="
        outputs, size = int(num_output), int(weight_size)
        layer.kind = "Gemm"
        layer.params = ["2=0", "3=1", "4=0", "5=1", "6=0", "7=0", f"8={outputs}", f"9={size // outputs}"]
        changed.append(layer.name)
    if changed:
        model.write(param)
    return changed


def _check_blobs(param: Path, inputs: list[Blob], outputs: list[Blob]) -> None:
    """onnx2ncnn names blobs after the ONNX tensors; make sure the ones we feed and fetch exist."""
    from deploykit.ncnn.runtime import read_param_layers

    layers = read_param_layers(param)
    fed = {blob for kind, _, _, tops in layers if kind == "Input" for blob in tops}
    produced = {blob for _, _, _, tops in layers for blob in tops}
    lost = [b.onnx_name for b in inputs if b.blob not in fed] + [b.onnx_name for b in outputs if b.blob not in produced]
    if lost:
        raise StageError(f"onnx2ncnn wrote no blob named {', '.join(repr(n) for n in lost)} in {param.name}, so "
                         "those ONNX inputs/outputs cannot be fed or read.", stage="convert",
                         hint="onnx2ncnn keeps ONNX tensor names but truncates those over 255 characters and "
                              f"drops inputs it takes for weights; rename the tensors, {_USE_PNNX}.")
