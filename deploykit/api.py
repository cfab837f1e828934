"""deploykit from Python: `convert` a model in one call, or `load_config` and `run` a YAML config.
`deploykit run` goes through the same `run`, so both give the same artifacts and the same errors.

    import deploykit
    result = deploykit.convert(model, (ids,), output="artifacts/mine")   # or "model.onnx"
    result.param, result.bin, result.manifest, result.parity["max_abs"], result.report
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union
from collections.abc import Mapping, Sequence

import numpy as np
from rich.console import Console

from deploykit.configless import onnx_input_names, onnx_input_specs
from deploykit.core.artifacts import REPORT
from deploykit.core.config import DTYPES, Config, build_config, deep_merge
from deploykit.core.errors import ConfigError
from deploykit.core.report import make_console
from deploykit.manifest import MANIFEST

# `convert(..., fp16=True)`: option names that stand for a key inside a section
_SHORTHANDS = {"fp16": ("converter", "fp16"), "optimize": ("converter", "optimize"), "opset": ("export", "opset"),
               "exporter": ("export", "exporter"), "int8": ("quantize", "int8")}


@dataclass
class Result:
    """A verified run: where its files are, how close ncnn came, and its whole report."""

    output: Path
    report: dict[str, Any]
    report_file: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return self.report["status"] == "verified"

    @property
    def parity(self) -> dict[str, Any]:
        """The final check on ncnn: `max_abs`, and per output every statistic (report.json `ncnn.parity`)."""
        return self.report["ncnn"]["parity"]

    @property
    def manifest(self) -> Path:
        return self.output / MANIFEST

    @property
    def param(self) -> Path:
        """The .param shipped (ncnnoptimize's or the int8 model where the config makes them)."""
        return self.output / self._shipped()["param"]["file"]

    @property
    def bin(self) -> Path:
        return self.output / self._shipped()["bin"]["file"]

    def _shipped(self) -> dict[str, Any]:
        import json

        return json.loads(self.manifest.read_text(encoding="utf-8"))

    @property
    def verdict(self) -> str:
        """The result line `deploykit run` prints."""
        parity = self.parity
        said = f"verified on ncnn: max abs error {parity['max_abs']:.2e} over {len(parity['outputs'])} output(s)"
        stages = {s["name"]: s for s in self.report["stages"] if s["status"] == "ok"}
        if "int8" in stages and stages["int8"].get("parity"):
            worst = min(out["cosine"] for out in stages["int8"]["parity"]["outputs"])
            said += f"; int8 model {stages['int8']['artifact']} verified too (cosine {worst:.5f} on held-back inputs)"
        if self.warnings:
            said += (f"; {len(self.warnings)} warning(s) (in report.json under `warnings`): read them before "
                     "shipping")
        return f"{said}; artifacts in {self.output}, report in {self.report_file}"


def load_config(path: Union[str, Path], overrides: Union[Sequence[str], Mapping[str, Any]] = ()) -> Config:
    """Read a YAML config as `deploykit run` does; `overrides` as `--set` items (`["export.opset=17"]`)
    or a mapping of key paths to values (`{"export.opset": 17}`)."""
    from deploykit.core.config import load_config as read

    return read(path, _as_sets(overrides))[0]


def run(config: Union[Config, str, Path], *, quiet: bool = False, force: bool = False, verbose: bool = False,
        console: Optional[Console] = None, model: Any = None) -> Result:
    """Run the pipeline of a config (a path, or what `load_config` returned); raises the stage's
    DeployError when the run fails (its report.json is written all the same)."""
    from deploykit.pipeline import run as run_pipeline

    if not isinstance(config, Config):
        config = load_config(config)
    console = console or make_console(stderr=True, quiet=quiet)
    _, report = run_pipeline(config, config._file, console, force=force, model=model, verbose=verbose)
    output = Path(config.output_folder)
    return Result(output=output, report=report, report_file=output / REPORT, warnings=list(report["warnings"]))


def convert(model_or_onnx_path: Any, example_inputs: Any = None, *, quiet: bool = False, force: bool = False,
            verbose: bool = False, **options: Any) -> Result:
    """Convert a torch.nn.Module or an ONNX file to ncnn and verify it, as `deploykit run` does.

    `example_inputs`: a tensor or array, a tuple of them in forward()'s order, or a dict by input
    name; for an ONNX file they may be left out, and are then made from the graph's inputs (integer
    ids within the table a Gather reads). `options` are the config's keys (`converter="onnx2ncnn"`
    or `converter={"name": ..., "fp16": True}`, `passes=[...]`, `output="out/"`, `parity={...}`)
    and the shorthands fp16, optimize, opset, exporter, int8.
    """
    raw, model, name = _model_section(model_or_onnx_path, example_inputs)
    raw = deep_merge(raw, _options(options))
    config = build_config(raw, source="deploykit.convert()", name=name)
    return run(config, quiet=quiet, force=force, verbose=verbose, model=model)


def _model_section(source: Any, example_inputs: Any) -> tuple[dict[str, Any], Any, str]:
    """The config's `model` and `inputs` for a module or an ONNX path, the module to export, and the
    name of the default artifact folder."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).absolute()
        if path.suffix != ".onnx":
            raise ConfigError(f"deploykit.convert: {source} is not an .onnx file.", stage="config",
                              hint="pass a torch.nn.Module with example inputs, or the path of an .onnx file.")
        inputs = (onnx_input_specs(path) if example_inputs is None else
                  _specs(_named(example_inputs, onnx_input_names(path), f"the graph of {path.name}")))
        return {"model": {"onnx": str(path)}, "inputs": inputs}, None, path.stem
    import torch

    if not isinstance(source, torch.nn.Module):
        raise ConfigError(f"deploykit.convert: got a {type(source).__name__}, not a torch.nn.Module or an .onnx path.",
                          stage="config")
    if example_inputs is None:
        raise ConfigError("deploykit.convert: a torch model needs example_inputs (a tensor, a tuple of them in "
                          "forward()'s order, or a dict by name).", stage="config")
    names = _forward_names(source)
    inputs = _specs(_named(example_inputs, names, f"{type(source).__name__}.forward()"))
    kind = type(source)
    return {"model": {"factory": f"{kind.__module__}:{kind.__qualname__}"}, "inputs": inputs}, source, kind.__name__


def _forward_names(model: Any) -> list[str]:
    """The names of forward()'s positional parameters; for `*args`, input<k> as many as could be given."""
    parameters = list(inspect.signature(model.forward).parameters.values())
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        names += [f"input{k}" for k in range(len(names), 64)]
    return names


def _named(values: Any, names: list[str], what: str) -> dict[str, np.ndarray]:
    """The example inputs by name, in the order `names` gives."""
    if isinstance(values, Mapping):
        unknown = [key for key in values if key not in names]
        if unknown:
            raise ConfigError(f"deploykit.convert: example_inputs names {', '.join(map(repr, unknown))}, which "
                              f"{what} does not take (it takes {', '.join(names)}).", stage="config")
        return {name: _array(values[name], name) for name in names if name in values}
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if len(values) > len(names):
        raise ConfigError(f"deploykit.convert: {len(values)} example input(s), but {what} takes {len(names)} "
                          f"({', '.join(names)}).", stage="config")
    return {name: _array(value, name) for name, value in zip(names, values)}


def _array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.name not in DTYPES:
        raise ConfigError(f"deploykit.convert: example input {name!r} is {array.dtype.name}; deploykit takes "
                          f"{', '.join(DTYPES)}.", stage="config")
    return array


def _specs(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": name, "dtype": array.dtype.name, "shape": list(array.shape), "data": array.tolist()}
            for name, array in arrays.items()]


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """convert()'s keyword options as config data."""
    raw: dict[str, Any] = {}
    known = set(Config.model_fields) - {"model", "inputs"}
    for key, value in options.items():
        if key in _SHORTHANDS:
            section, field_name = _SHORTHANDS[key]
            raw = deep_merge(raw, {section: {field_name: value}})
        elif key == "converter" and isinstance(value, str):
            raw = deep_merge(raw, {"converter": {"name": value}})
        elif key in known:
            raw = deep_merge(raw, {key: str(value) if isinstance(value, os.PathLike) else value})
        else:
            raise ConfigError(f"deploykit.convert: unknown option {key!r}.", stage="config",
                              hint=f"options are the config's keys ({', '.join(sorted(known))}) and "
                                   f"{', '.join(_SHORTHANDS)}; see the config reference in README.md.")
    return raw


def _as_sets(overrides: Union[Sequence[str], Mapping[str, Any]]) -> list[str]:
    import json

    if isinstance(overrides, Mapping):
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)
