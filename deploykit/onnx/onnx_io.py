"""Reading, checking, describing and writing ONNX models; the one place that does each."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from deploykit.core.artifacts import ArtifactDir, remember_sha256
from deploykit.core.errors import ConfigError, StageError, shorten

STANDARD_DOMAINS = ("", "ai.onnx")


def load_onnx(path: Path, *, stage: str, user_file: bool = False) -> onnx.ModelProto:
    """Load and fully check a model. A user's bad file is a ConfigError, ours a StageError."""
    error = ConfigError if user_file else StageError
    if not Path(path).is_file():
        raise error(f"ONNX file not found: {path}.", stage=stage, hint="check `model.onnx` in the config.")
    try:
        data = None
        if Path(path).suffix == ".onnx":  # the binary format: one read for the model, the checker and the digest
            data = Path(path).read_bytes()
            model = onnx.load_from_string(data)
        if data is None or _has_external_data(model):  # a text format, or weights in files beside it
            model, data = onnx.load(str(path)), None
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise error(f"{path} is not an ONNX model ({type(exc).__name__}: {exc}).", stage=stage,
                    hint="give a file written by torch.onnx.export or another ONNX exporter.") from None
    if not model.graph.node and not model.graph.output:
        raise error(f"{path} is not an ONNX model (it parses to an empty graph).", stage=stage,
                    hint="point `model.onnx` to a file written by torch.onnx.export or another ONNX exporter.")
    # The checker reads the bytes already in memory, or the file (with its external data) itself,
    # rather than the model serialized once more.
    check_onnx(data if data is not None else str(path), path, stage=stage, error=error)
    if data is not None:
        remember_sha256(Path(path), data)
    return model


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def check_onnx(model: onnx.ModelProto | bytes | str, path: Path | str, *, stage: str,
               error: type[ConfigError] | type[StageError] = StageError, hint: str = "") -> None:
    """onnx.checker with full shape inference on a model, its serialized bytes or its file. Its
    whole message goes into the error: the node it names is often on a later line."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        said = " ".join(str(exc).split()) or type(exc).__name__
        if not hint:
            hint = ("re-export the model, or run `python -m onnx.checker` on it for the full report."
                    if error is ConfigError else "this graph is one deploykit wrote; please report it with the model.")
        raise error(f"{path} fails onnx.checker: {shorten(said)}", stage=stage, hint=hint) from None


def save_onnx(artifacts: ArtifactDir, name: str, model: onnx.ModelProto, *, check: str | None = None,
              stage: str = "") -> Path:
    """Write the model as `name`, serialized once for the checker (when `check` describes the
    model for its error message), the file and its SHA-256."""
    data = model.SerializeToString()
    if check is not None:
        writer = stage.removeprefix("pass:")
        hint = (f"the pass {writer!r} wrote a broken graph: turn it off with `{{name: {writer}, enabled: false}}` "
                "under passes:, and report it with the model." if stage.startswith("pass:") else "")
        check_onnx(data, check, stage=stage, hint=hint)
    return artifacts.write_bytes(name, data)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(_qualified(node) for node in model.graph.node)
    return dict(sorted(counts.items()))


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(init.dims, dtype=np.int64) for init in model.graph.initializer))


def nonstandard_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.domain not in STANDARD_DOMAINS]


def describe(model: onnx.ModelProto) -> dict:
    """What the report says of a graph: op histogram, node and parameter counts, opset."""
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    return {
        "nodes": len(model.graph.node),
        "parameters": parameter_count(model),
        "opset": opsets,
        "ops": op_histogram(model),
    }


def _qualified(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"


def chain_order(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with each node placed right after the nodes it reads from (depth first
    from the outputs), so that a chain of nodes stays contiguous. onnx2ncnn's fusions (LayerNorm,
    and others) only recognise a chain whose nodes follow each other in the file, and a Constant
    node counts as one: so every node that reads nothing (Constant) comes first, not inside the
    chain of its first reader (where it broke the LayerNorm fusion of the chain whose Pow read
    the shared `2`)."""
    producer = {out: index for index, node in enumerate(model.graph.node) for out in node.output if out}
    order = [index for index, node in enumerate(model.graph.node) if not node.input]
    seen: set[int] = set(order)

    def visit(index: int) -> None:
        stack = [(index, False)]
        while stack:
            current, expanded = stack.pop()
            if current in seen:
                continue
            if expanded:
                seen.add(current)
                order.append(current)
                continue
            stack.append((current, True))
            for name in reversed(model.graph.node[current].input):
                if name in producer and producer[name] not in seen:
                    stack.append((producer[name], False))

    for output in model.graph.output:
        if output.name in producer:
            visit(producer[output.name])
    order += [i for i in range(len(model.graph.node)) if i not in seen]  # nodes no output reads
    reordered = onnx.ModelProto()
    reordered.CopyFrom(model)
    del reordered.graph.node[:]
    reordered.graph.node.extend(model.graph.node[i] for i in order)
    return reordered
