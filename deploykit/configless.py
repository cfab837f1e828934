"""Configs made without a YAML file: from an ONNX graph's inputs, or from a factory and `--input`
options (`deploykit run model.onnx`, `deploykit run --factory pkg.mod:build --input ids:int64[1,16]`),
and the commented config `deploykit init` writes for either."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import onnx
import yaml

from deploykit.core.config import DTYPES
from deploykit.core.errors import ConfigError
from deploykit.onnx.onnx_io import load_onnx

# Ops an id tensor passes through on its way to the table lookup without its values changing.
_ID_PRESERVING = ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Transpose")

_INPUT = re.compile(r"^(?P<name>[^:\[\]=]+?)(?::(?P<dtype>\w+))?\[(?P<dims>[\d,\s]*)\]$")
_RANGE = re.compile(r"^(?P<name>[^=]+)=(?P<low>-?[\d.e+-]+):(?P<high>-?[\d.e+-]+)$")


def onnx_input_specs(path: Path, given: Optional[dict[str, dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """`inputs:` entries for an ONNX file, from its graph: names, dtypes and shapes, with integer
    inputs given the range of the smallest table a Gather reads them into (ids past it would index
    outside the vocabulary). `given` (by name, from `--input`) replaces what the graph says."""
    from deploykit.stages.export import _ONNX_TO_NUMPY

    given = dict(given or {})
    model = load_onnx(path, stage="config", user_file=True)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    ranges = id_ranges(model)
    specs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.name in given:
            specs.append(given.pop(value.name))
            continue
        tensor = value.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tensor.elem_type)
        if dtype is None:
            raise ConfigError(f"{path}: input {value.name!r} has the ONNX type "
                              f"{onnx.TensorProto.DataType.Name(tensor.elem_type)}, which deploykit does not feed.",
                              stage="config", hint=f"deploykit feeds {', '.join(DTYPES)}.")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        shape = [1 if axis == 0 and not isinstance(d, int) else d for axis, d in enumerate(dims)]  # a batch of one
        unfixed = [str(d) for d in shape if not isinstance(d, int) or d <= 0]
        if unfixed:
            example = ",".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in shape)
            raise ConfigError(f"{path}: input {value.name!r} has axes of no fixed size ({', '.join(unfixed)} in "
                              f"{dims}), so deploykit cannot tell what shape to feed.", stage="config",
                              hint=f"give it: --input {value.name}:{dtype}[{example}] with N the size the app feeds "
                                   "(from Python: example_inputs; or write a config: `deploykit init`).")
        spec: dict[str, Any] = {"name": value.name, "dtype": dtype, "shape": shape}
        if value.name in ranges:
            spec["range"] = [0, ranges[value.name]]
        specs.append(spec)
    if given:
        names = [v.name for v in graph.input if v.name not in initializers]
        raise ConfigError(f"--input {', '.join(map(repr, given))}: {path.name} has no such input (it has "
                          f"{', '.join(names)}).", stage="config", hint="use the graph's input names.")
    return specs


def onnx_input_names(path: Path) -> list[str]:
    """The names of an ONNX file's graph inputs (those that are not initializers), in order."""
    graph = load_onnx(path, stage="config", user_file=True).graph
    initializers = {init.name for init in graph.initializer}
    return [value.name for value in graph.input if value.name not in initializers]


def id_ranges(model: onnx.ModelProto) -> dict[str, int]:
    """For each integer graph input that a Gather uses as indices into a constant table (directly or
    through Cast, Reshape, ...): the number of rows of the smallest such table."""
    graph = model.graph
    tables = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tables[node.output[0]] = list(node.attribute[0].t.dims)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, int] = {}
    for value in graph.input:
        if value.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        frontier, seen = [value.name], set()
        while frontier:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for node in consumers.get(tensor, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor \
                        and node.input[0] in tables:
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    dims = tables[node.input[0]]
                    if dims and -len(dims) <= axis < len(dims):
                        rows = dims[axis]
                        found[value.name] = min(rows, found.get(value.name, rows))
                elif node.op_type in _ID_PRESERVING and node.input[0] == tensor:
                    frontier += list(node.output)
    return found


def parse_input(text: str) -> dict[str, Any]:
    """`--input ids:int64[1,16]` (the dtype may be left out: float32) as an `inputs:` entry."""
    found = _INPUT.match(text.strip())
    if not found:
        raise ConfigError(f"--input {text!r}: expected NAME:DTYPE[SHAPE], e.g. ids:int64[1,16] or "
                          "x:float32[1,3,224,224].", stage="config")
    dtype = found["dtype"] or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"--input {text!r}: unknown dtype {dtype!r}.", stage="config",
                          hint=f"one of {', '.join(DTYPES)}.")
    dims = [d.strip() for d in found["dims"].split(",") if d.strip()]
    return {"name": found["name"], "dtype": dtype, "shape": [int(d) for d in dims]}


def parse_range(text: str) -> tuple[str, list[float]]:
    """`--input-range ids=0:1000`: generated values in [0, 1000)."""
    found = _RANGE.match(text.strip())
    if not found:
        raise ConfigError(f"--input-range {text!r}: expected NAME=LOW:HIGH, e.g. ids=0:1000 (values in [0, 1000)).",
                          stage="config")
    low, high = (float(found[key]) for key in ("low", "high"))
    return found["name"], [int(low) if low.is_integer() else low, int(high) if high.is_integer() else high]


def configless_raw(*, onnx_file: Optional[Path] = None, factory: Optional[str] = None, inputs: Sequence[str] = (),
                   ranges: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """The config, as data, for `deploykit run model.onnx` or `deploykit run --factory ...`, and
    the name of its default artifact folder."""
    given = {spec["name"]: spec for spec in map(parse_input, inputs)}
    if onnx_file is not None:
        raw: dict[str, Any] = {"model": {"onnx": str(onnx_file.absolute())},
                               "inputs": onnx_input_specs(onnx_file, given)}
        name = onnx_file.stem
    else:
        assert factory is not None, "configless_raw needs onnx_file or factory"
        if not given:
            raise ConfigError(f"--factory {factory}: no --input given.", stage="config",
                              hint="give one --input NAME:DTYPE[SHAPE] per input of forward(), in order, e.g. "
                                   "--input ids:int64[1,16] (and --input-range ids=0:1000 for token ids).")
        # a factory named on the command line is looked for in the working directory, then on sys.path
        raw = {"model": {"factory": factory, "factory_folder": str(Path.cwd())}, "inputs": list(given.values())}
        name = factory.rpartition(":")[2] or "model"
    specs = {spec["name"]: spec for spec in raw["inputs"]}
    for item in ranges:
        key, bounds = parse_range(item)
        if key not in specs:
            raise ConfigError(f"--input-range {item!r}: there is no input {key!r} (the inputs are "
                              f"{', '.join(specs)}).", stage="config")
        specs[key]["range"] = bounds
    return raw, name


def init_yaml(raw: dict[str, Any], folder: Path) -> str:
    """A commented config for `raw`'s model and inputs, with every other key of the config
    reference written out, commented, at its default; paths relative to `folder`."""
    model = dict(raw["model"])
    for key in ("onnx", "factory_folder"):
        if key in model:
            model[key] = os.path.relpath(model[key], folder)
    if model.get("factory_folder") == ".":
        del model["factory_folder"]  # the default: the config's own folder
    lines = ["model:", *(f"  {key}: {_dump(value)}" for key, value in model.items())]
    other = {"onnx": "  # factory: mypackage.mymodel:build  # instead of onnx: a callable returning the nn.Module",
             "factory": "  # onnx: model.onnx  # instead of factory: start from an ONNX file"}
    lines += [other["onnx" if "onnx" in model else "factory"],
              "  # kwargs: {}  # keyword arguments for the factory",
              "  # checkpoint: weights.pt  # a state_dict file loaded into the model",
              "  # factory_folder: .  # where the factory's module is looked for first (default: this file's folder)",
              "inputs:  # one entry per model input, in forward() order"]
    for spec in raw["inputs"]:
        lines += _input_lines(spec)
    return _TEMPLATE.format(model_and_inputs="\n".join(lines))


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _input_lines(spec: dict[str, Any]) -> list[str]:
    lines = [f"  - name: {_dump(spec['name'])}", f"    dtype: {spec['dtype']}", f"    shape: {_dump(spec['shape'])}"]
    if "range" in spec:
        lines.append(f"    range: {_dump(spec['range'])}  # [low, high) of the generated values")
    else:
        lines.append("    # range: [0, 10]  # [low, high) of generated values (ints [0, 10), floats normal)")
    lines += ["    # data: [[...]]  # the values, as a nested list (instead of generated ones)",
              "    # file: values.npy  # the values, as a .npy file",
              "    # shapes: [[1, 16], [1, 64]]  # every shape the app feeds, "
              "or {axis: 1, from: 16, to: 128, step: 16}",
              "    # preprocess: {mean: [0.485, 0.456, 0.406], norm: [4.37, 4.46, 4.44], pixel: RGB, pad_id: 0}  "
              "# what the app does before feeding it, copied into deploykit.json"]
    return lines


_TEMPLATE = """\
# deploykit config, written by `deploykit init`. Run it with `deploykit run <this file>`.
# Every key of the config reference (README.md) is below; a commented-out key shows its default.
# Relative paths are relative to this file; `output` is relative to the working directory.

# seed: 0  # seed for generated inputs; the same config always gives the same inputs
{model_and_inputs}

# lint:
#   enabled: true  # lint the PyTorch model before export
#   as_errors: false  # stop the run on any lint finding
#   lost_parameters: error  # a layer with weights built inside forward stops the run; `warning` lets it pass

# export:
#   opset: 13  # left unset, raised to what an operator needs
#   exporter: torchscript  # or dynamo (the torch.export-based exporter)
#   output_names: [output]  # names of the model's outputs, in order
#   dynamic_axes: null  # e.g. {{ids: {{1: length}}}}; NCNN models are converted for fixed shapes
#   constant_folding: true

# simplify:
#   enabled: true  # run onnxsim
#   skip_optimizers: []  # onnxsim optimizers to skip (the ones that hide layers from the converters always are)

# passes: auto  # the built-in passes for the converter; or a list, e.g.
#   [auto, my_pass, {{name: embedding_gather, args: {{on_host: true}}}}]
# plugins: []  # modules or .py files that register more passes
# cut_at: []  # tensor names where the ncnn model ends; the rest becomes host_tail.onnx

# converter:
#   name: pnnx  # or onnx2ncnn
#   source: onnx  # what pnnx converts: onnx (after onnxsim and the passes) or torchscript (a trace of the model)
#   path: null  # the converter binary (default: the pnnx package's, $ONNX2NCNN or PATH for onnx2ncnn)
#   fp16: false  # fp16 weights, verified on ncnn with fp16 on under parity.fp16
#   optimize: false  # run ncnnoptimize; its model is verified and shipped
#   tools: null  # the folder of ncnn's tools (default: $NCNN_TOOLS, then PATH)
#   separate_shapes: false  # convert a listed shape the one model cannot take on its own
#   args: []  # extra arguments for the converter
#   timeout: 300  # seconds before the converter (and the ncnn run) is stopped

# quantize:
#   int8: false  # make and verify an int8 model
#   calibration: {{generate: 16}}  # one of folder, files, images ({{folder, mean, norm, pixel}}) or generate: N
#   method: kl  # ncnn2table's method: kl, aciq or eq

# parity:
#   metric: allclose  # allclose, max_abs, max_rel or cosine
#   atol: 1.0e-4
#   rtol: 1.0e-3
#   min_cosine: 0.9999
#   outputs: {{output: {{atol: 1.0e-3}}}}  # tolerances for one output, by name
#   fp16: {{atol: 1.0e-2, rtol: 1.0e-2, min_cosine: 0.999}}  # for a model verified in fp16
#   int8: {{metric: cosine, atol: 0.1, rtol: 0.1, min_cosine: 0.99}}  # for the int8 model, on held-back inputs
#   bisect: true  # on an ncnn mismatch, find the pass after which it starts
#   diagnose_budget: 1x  # time for finding where ncnn went wrong: seconds, or a factor of the conversion's

# variations: auto  # what to try when the run fails at simplify, convert or verify; [] tries nothing

# output: artifacts/<config name>  # the artifact folder
"""
