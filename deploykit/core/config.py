"""The run configuration: YAML files with `_base_` inheritance and `--set` overrides, validated.

Relative paths to input files (`model.onnx`, `model.checkpoint`, `inputs[].file`,
`converter.path`, `plugins`) are made absolute from the folder of the YAML file that names them;
`output` is resolved against the working directory, so the same config can write anywhere.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from deploykit.core.errors import ConfigError

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    factory: Optional[str] = None
    # Where the factory's module is looked for before sys.path: the folder of the YAML file that
    # names `factory` (set by the loader), as plugins are found relative to it.
    factory_folder: Optional[Path] = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[Path] = None
    onnx: Optional[Path] = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.factory is None) == (self.onnx is None):
            raise ValueError("give exactly one of `factory` (\"package.module:callable\") or `onnx` (a path)")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r} must look like \"package.module:callable\"")
        if self.onnx is not None and (self.kwargs or self.checkpoint):
            raise ValueError("`kwargs` and `checkpoint` belong to a `factory`, not to an `onnx` model")
        return self


class ShapeRange(_Section):
    """`{axis: 1, from: 16, to: 128, step: 16}`: the input's `shape` with that axis at 16, 32, ... 128."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    axis: int = Field(ge=0)
    start: int = Field(alias="from", gt=0)
    stop: int = Field(alias="to", gt=0)
    step: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ShapeRange:
        if self.stop < self.start:
            raise ValueError(f"`to` ({self.stop}) must not be below `from` ({self.start})")
        return self

    def sizes(self) -> list[int]:
        sizes = list(range(self.start, self.stop + 1, self.step))
        return sizes if sizes[-1] == self.stop else [*sizes, self.stop]


class Preprocess(_Section):
    """What the app does to its data before feeding the input, copied into deploykit.json for it:
    ncnn's `substract_mean_normalize(mean, norm)` for images, the padding id for token ids."""

    mean: Optional[list[float]] = None
    norm: Optional[list[float]] = None
    pixel: Optional[Literal["RGB", "BGR", "GRAY"]] = None
    pad_id: Optional[int] = None
    note: Optional[str] = None


class InputSpec(_Section):
    name: str
    shape: Optional[list[int]] = None
    dtype: Literal[DTYPES] = "float32"  # type: ignore[valid-type]
    range: Optional[tuple[float, float]] = None
    data: Optional[Any] = None
    file: Optional[Path] = None
    # Every shape the app feeds; the model is converted at `shape` and verified at each of these.
    shapes: Optional[Union[list[list[int]], ShapeRange]] = None
    preprocess: Preprocess = Field(default_factory=Preprocess)

    @model_validator(mode="after")
    def _one_value_source(self) -> InputSpec:
        if self.shape is None and self.data is None and self.file is None and isinstance(self.shapes, list) \
                and self.shapes:
            self.shape = list(self.shapes[0])  # converted at the first listed shape
        if self.data is not None and self.file is not None:
            raise ValueError("give `data` or `file`, not both")
        if self.data is None and self.file is None and not self.shape:
            raise ValueError("needs a `shape` (or `data` / a `.npy` `file`)")
        if self.shape is not None and any(d <= 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} must have positive sizes (fixed shapes only)")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high) with low < high")
        if self.shapes is not None:
            self._check_shapes()
        return self

    def _check_shapes(self) -> None:
        if isinstance(self.shapes, ShapeRange):
            if self.shape is None:
                raise ValueError("`shapes` as a range varies one axis of `shape`, so it needs a `shape`")
            if self.shapes.axis >= len(self.shape):
                raise ValueError(f"shapes.axis {self.shapes.axis} is not an axis of shape {self.shape}")
            if self.shape[self.shapes.axis] not in self.shapes.sizes():
                raise ValueError(f"`shape` {self.shape} is not in the range {self.shapes.sizes()} of axis "
                                 f"{self.shapes.axis}; the model is converted at `shape`, so the range must hold it")
            return
        if not self.shapes:
            raise ValueError("`shapes` lists no shape")
        for shape in self.shapes:
            if not shape or any(d <= 0 for d in shape):
                raise ValueError(f"shapes: {shape} must have positive sizes")
            if len(shape) != len(self.shapes[0]):
                raise ValueError(f"shapes: {shape} and {self.shapes[0]} have different ranks; list shapes of one rank")
        if self.shape is not None and self.shape not in self.shapes:
            raise ValueError(f"`shape` {self.shape} is not among `shapes` {self.shapes}; the model is converted at "
                             f"`shape`, so list it there too")

    def shape_count(self) -> int:
        if self.shapes is None:
            return 1
        return len(self.shapes.sizes()) if isinstance(self.shapes, ShapeRange) else len(self.shapes)

    def listed_shapes(self, converted: list[int]) -> list[list[int]]:
        """Every shape this input is verified at, the one it is converted at first."""
        if self.shapes is None:
            return [list(converted)]
        if isinstance(self.shapes, ShapeRange):
            axis = self.shapes.axis
            shapes = [[*converted[:axis], size, *converted[axis + 1:]] for size in self.shapes.sizes()]
        else:
            shapes = [list(s) for s in self.shapes]
        return [list(converted)] + [s for s in shapes if s != list(converted)]


MAX_OPSET = 23  # the highest export.opset accepted


class ExportSection(_Section):
    # left unset, raised to what an operator needs (deploykit/stages/export.py)
    opset: int = Field(13, ge=7, le=MAX_OPSET)
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    output_names: Optional[list[str]] = None
    dynamic_axes: Optional[dict[str, dict[int, str]]] = None
    constant_folding: bool = True

    @field_validator("output_names")
    @classmethod
    def _unique_output_names(cls, names: Optional[list[str]]) -> Optional[list[str]]:
        # torch renames a repeated output name, and the manifest would map it to the wrong tensor.
        given = names or []
        repeated = sorted({n for n in given if given.count(n) > 1})
        if repeated:
            raise ValueError(f"output names must be unique; repeated: {', '.join(repeated)}")
        return names


class LintSection(_Section):
    enabled: bool = True
    as_errors: bool = False  # stop the run on any finding instead of warning
    # A finding that loses trained parameters (a layer with weights built inside forward) stops the
    # run unless downgraded to a warning: the model verified would be one nobody trained.
    lost_parameters: Literal["error", "warning"] = "error"


class SimplifySection(_Section):
    enabled: bool = True
    skip_optimizers: list[str] = Field(default_factory=list)


class PassEntry(_Section):
    name: str
    enabled: bool = True
    args: dict[str, Any] = Field(default_factory=dict)


class ConverterSection(_Section):
    name: Literal["pnnx", "onnx2ncnn"] = "pnnx"
    path: Optional[Path] = None
    fp16: bool = False
    args: list[str] = Field(default_factory=list)
    timeout: float = Field(300.0, gt=0)
    optimize: bool = False  # run ncnnoptimize on the converted model; the optimized one is verified and shipped
    tools: Optional[Path] = None  # the folder of ncnn's tools (ncnnoptimize, ncnn2table, ncnn2int8)
    # A listed input shape the one converted model cannot take is converted on its own (else an error).
    separate_shapes: bool = False
    # What pnnx reads: the ONNX graph after onnxsim and the passes, or a TorchScript trace of the
    # model (pnnx's own front end; no onnxsim, no passes), verified against the same reference.
    source: Literal["onnx", "torchscript"] = "onnx"


AS_CONFIGURED = "as_configured"  # the first attempt of a run: the config as given
# The newest opset pnnx 20261020 reads right: from 18 on, ReduceMean takes its axes as an input,
# which pnnx writes as an empty axes list (RMSNorm then reduces nothing).
NEWEST_OPSET = 17
# The built-in variations `variations:` may name, in the order `auto` tries them; what each
# changes is in deploykit/variations.py.
VARIATION_NAMES = ("no_fusions", "no_simplify", f"opset_{NEWEST_OPSET}", "other_exporter", "bare", "torchscript")


class VariationEntry(_Section):
    """One variation of the run to try when the configured run fails at convert or verify:
    a built-in by name, or a name and the config keys it changes (`set`, merged as `_base_` is)."""

    name: str
    set: Optional[dict[str, Any]] = None


class CalibrationImages(_Section):
    """Images for an input of shape [1, C, H, W]: resized to H x W, then (pixel - mean) * norm per channel."""

    folder: Path
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    norm: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    pixel: Literal["RGB", "BGR", "GRAY"] = "RGB"


class CalibrationSection(_Section):
    """Where the calibration inputs come from: exactly one of the four."""

    folder: Optional[Path] = None  # .npy files (one input) or .npz files (one array per input name)
    files: Optional[list[Path]] = None  # the same, listed
    images: Optional[CalibrationImages] = None
    generate: Optional[int] = Field(None, gt=0)  # inputs made like the config's own; for a quick look only
    held_back: float = Field(0.2, ge=0, lt=1)  # the share of the samples kept out of calibration, to judge on

    @model_validator(mode="after")
    def _one_source(self) -> CalibrationSection:
        given = [key for key in ("folder", "files", "images", "generate") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `folder`, `files`, `images` or `generate`"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.files is not None and not self.files:
            raise ValueError("`files` lists no file")
        return self


class QuantizeSection(_Section):
    int8: bool = False
    calibration: Optional[CalibrationSection] = None
    method: Literal["kl", "aciq", "eq"] = "kl"  # ncnn2table's method

    @model_validator(mode="after")
    def _calibrated(self) -> QuantizeSection:
        if self.int8 and self.calibration is None:
            raise ValueError("int8 needs `calibration` (a `folder` or `files` of .npy inputs, `images`, or "
                             "`generate: N` for a quick look)")
        return self


DIAGNOSE_RUN_SHARE = 0.5  # of a run's time until the failed check: the least a budget given as a factor allows


class Tolerance(_Section):
    atol: Optional[float] = Field(None, ge=0)
    rtol: Optional[float] = Field(None, ge=0)
    min_cosine: Optional[float] = Field(None, ge=-1, le=1)


class Fp16Tolerance(_Section):
    atol: float = Field(1e-2, ge=0)
    rtol: float = Field(1e-2, ge=0)
    min_cosine: float = Field(0.999, ge=-1, le=1)


class Int8Tolerance(_Section):
    metric: Literal["allclose", "max_abs", "max_rel", "cosine"] = "cosine"
    atol: float = Field(1e-1, ge=0)
    rtol: float = Field(1e-1, ge=0)
    min_cosine: float = Field(0.99, ge=-1, le=1)


class ParitySection(_Section):
    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)
    min_cosine: float = Field(0.9999, ge=-1, le=1)
    metric: Literal["allclose", "max_abs", "max_rel", "cosine"] = "allclose"
    outputs: dict[str, Tolerance] = Field(default_factory=dict)
    fp16: Fp16Tolerance = Field(default_factory=Fp16Tolerance)  # for a model verified with fp16 on
    int8: Int8Tolerance = Field(default_factory=Int8Tolerance)  # for the int8 model, verified with int8 on
    bisect: bool = True  # on an ncnn mismatch, convert earlier stages to find the pass after which it starts
    # How long finding where ncnn went wrong may take: seconds, or "<factor>x" the conversion's time.
    diagnose_budget: Union[float, str] = "1x"

    @field_validator("diagnose_budget")
    @classmethod
    def _budget(cls, value: Union[float, str]) -> Union[float, str]:
        text = str(value).strip()
        number = text[:-1] if text.endswith("x") else text
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"{value!r} is neither a number of seconds (60) nor a factor of the conversion's "
                             f"time (1x, 0.5x)") from None
        if not amount >= 0:
            raise ValueError(f"{value!r} must not be negative")
        return text if text.endswith("x") else amount

    def diagnose_seconds(self, conversion_seconds: float, run_seconds: float) -> float:
        """The budget in seconds, for a conversion that took `conversion_seconds` in a run that took
        `run_seconds` until the check that failed. A factor (other than 0) gives at least
        DIAGNOSE_RUN_SHARE of the run's time: a conversion is often the cheapest part of a run
        (onnx2ncnn takes well under a second), while a failed run may cost twice what it cost to
        get there, and that keeps it there."""
        if isinstance(self.diagnose_budget, str):
            factor = float(self.diagnose_budget[:-1])
            return max(factor * conversion_seconds, DIAGNOSE_RUN_SHARE * run_seconds) if factor else 0.0
        return float(self.diagnose_budget)

    def for_fp16(self) -> ParitySection:
        """The settings an fp16 model is judged by: the same metric, the fp16 tolerances."""
        return self.model_copy(update={"atol": self.fp16.atol, "rtol": self.fp16.rtol,
                                       "min_cosine": self.fp16.min_cosine, "outputs": {}})

    def for_int8(self) -> ParitySection:
        """The settings the int8 model is judged by: its own metric and tolerances."""
        return self.model_copy(update={"metric": self.int8.metric, "atol": self.int8.atol, "rtol": self.int8.rtol,
                                       "min_cosine": self.int8.min_cosine, "outputs": {}})

    def tolerance(self, output: str) -> tuple[float, float, float]:
        """(atol, rtol, min_cosine) for one output: its own entry where set, else the default."""
        own = self.outputs.get(output, Tolerance())
        return (
            self.atol if own.atol is None else own.atol,
            self.rtol if own.rtol is None else own.rtol,
            self.min_cosine if own.min_cosine is None else own.min_cosine,
        )


class Config(_Section):
    seed: int = Field(0, ge=0)  # numpy's generators take no negative seed
    model: ModelSection
    inputs: list[InputSpec] = Field(min_length=1)
    lint: LintSection = Field(default_factory=LintSection)
    export: ExportSection = Field(default_factory=ExportSection)
    simplify: SimplifySection = Field(default_factory=SimplifySection)
    passes: Optional[list[PassEntry]] = None  # None: `auto`, the built-in set for the converter
    plugins: list[str] = Field(default_factory=list)
    cut_at: list[str] = Field(default_factory=list)  # tensors where the ncnn part ends; the rest runs on the host
    converter: ConverterSection = Field(default_factory=ConverterSection)
    quantize: QuantizeSection = Field(default_factory=QuantizeSection)
    parity: ParitySection = Field(default_factory=ParitySection)
    # None: `auto`, the built-in variations (deploykit/variations.py); [] turns retrying off.
    variations: Optional[list[VariationEntry]] = None
    output: Optional[Path] = None
    _file: Optional[Path] = PrivateAttr(None)  # the YAML file it was read from; None when made without one

    @field_validator("inputs")
    @classmethod
    def _unique_input_names(cls, inputs: list[InputSpec]) -> list[InputSpec]:
        names = [spec.name for spec in inputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"input names must be unique; repeated: {', '.join(duplicates)}")
        return inputs

    @model_validator(mode="after")
    def _shape_sets_line_up(self) -> Config:
        counts = {spec.name: spec.shape_count() for spec in self.inputs if spec.shapes}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
            raise ValueError(f"inputs with `shapes` must list as many shapes each (the n-th shapes are fed "
                             f"together); got {listed}")
        return self

    @field_validator("passes", mode="before")
    @classmethod
    def _passes_shorthand(cls, value: Any) -> Any:
        return _named_entries(value, "expected `auto` or a list of pass names or {name, enabled, args} entries")

    @field_validator("variations", mode="before")
    @classmethod
    def _variations_shorthand(cls, value: Any) -> Any:
        return _named_entries(value, "expected `auto`, [] (no retries) or a list of variation names and {name, set} "
                                     "entries")

    @model_validator(mode="after")
    def _torchscript_source(self) -> Config:
        if self.converter.source == "torchscript":
            if self.converter.name != "pnnx":
                raise ValueError("converter.source: torchscript is pnnx's front end; onnx2ncnn reads ONNX only")
            if self.model.factory is None:
                raise ValueError("converter.source: torchscript traces the PyTorch model, so it needs model.factory")
            if self.cut_at:
                raise ValueError("cut_at cuts the ONNX graph, which converter.source: torchscript does not convert")
        return self

    @model_validator(mode="after")
    def _variations_known(self) -> Config:
        if self.variations:
            check_variations(self)
        return self

    @property
    def output_folder(self) -> Path:
        """`output`, which build_config always sets (to artifacts/<name> when it is left out)."""
        if self.output is None:
            raise ConfigError("output: is not set.", stage="config", hint="name the artifact folder.")
        return self.output

    def varied(self, changes: dict[str, Any]) -> Config:
        """This config with `changes` (a mapping of config keys) merged in, as a variation runs
        it: with no variations of its own."""
        raw = deep_merge(self.model_dump(mode="json", exclude_unset=True), {**changes, "variations": []})
        return Config.model_validate(raw)


def _named_entries(value: Any, expected: str) -> Any:
    """`auto` (None), or a list whose bare names stand for {name: ...} entries."""
    if value is None or value == "auto":
        return None
    if not isinstance(value, list):
        raise ValueError(expected)
    return [{"name": item} if isinstance(item, str) else item for item in value]


# ---------------------------------------------------------------------------------------------
# Loading

_FILE_KEYS = (("model", "onnx"), ("model", "checkpoint"), ("converter", "path"), ("converter", "tools"))


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Config, Path]:
    """Read, merge, override and validate a config. Returns it with the config file's path."""
    path = Path(path)
    config = build_config(_load_with_bases(path, chain=()), overrides, source=str(path), name=path.stem)
    config._file = path
    return config, path


def build_config(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *, source: str,
                 name: str) -> Config:
    """Validate a config given as plain data (read from YAML, made from a model file, or given to
    deploykit.convert), after `--set` overrides; errors name `source` and the key path. `output`
    defaults to artifacts/<name>."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        _apply_override(raw, item)
    raw.setdefault("output", str(Path("artifacts") / name))
    if raw["output"] is None or (isinstance(raw["output"], str) and not raw["output"].strip()):
        raise ConfigError(f"{source}: output: is empty.", stage="config",
                          hint=f"name the artifact folder, or leave `output` out for artifacts/{name}.")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_validation(source, exc), stage="config",
                          hint="see the config reference in README.md.") from None


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: `_base_` files include each other: {cycle}.", stage="config")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_: expected a file name or a list of them.", stage="config")
    _resolve_file_paths(data, path.parent)
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases(path.parent / base, (*chain, resolved)))
    return deep_merge(merged, data)


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file.", stage="config",
                          hint="name the YAML file itself; configs/mobile.yaml is a working example.")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}.", stage="config",
                          hint="check the path; configs/mobile.yaml is a working example.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} that starts at line {start.line + 1})"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}.", stage="config",
                          hint="fix the indentation or quoting there.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file.", stage="config") from None
    if data is None:
        data = {}
    _refuse_expansion(data, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"got {type(data).__name__}.", stage="config")
    return data


MAX_VALUES = 1_000_000  # in one YAML file, with its aliases expanded


def _refuse_expansion(data: Any, path: Path) -> None:
    """A config whose aliases (`*name`) repeat what they point to into more values than any
    config holds (a few hundred bytes can stand for gigabytes once written out) is refused."""
    seen, stack = 0, [data]
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{path}: the config stands for more than {MAX_VALUES} values once its YAML aliases "
                              "(*name) are expanded.", stage="config",
                              hint="write the values out, or give large input values as a .npy `file`.")
        if isinstance(value, dict):
            stack += value.keys()
            stack += value.values()
        elif isinstance(value, list):
            stack += value


def _resolve_file_paths(data: dict[str, Any], folder: Path) -> None:
    folder = folder.absolute()  # a tool runs in a folder of its own: a relative path would not reach it

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(folder / value)
        return value

    for section, key in _FILE_KEYS:
        block = data.get(section)
        if isinstance(block, dict) and key in block:
            block[key] = resolve(block[key])
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("factory"), str):
        # The factory's module is looked for beside the YAML that names it, as a `.py` plugin is.
        model["factory_folder"] = resolve(model.get("factory_folder") or ".")
    for spec in data.get("inputs") or []:
        if isinstance(spec, dict) and "file" in spec:
            spec["file"] = resolve(spec["file"])
    calibration = (data.get("quantize") or {}).get("calibration") if isinstance(data.get("quantize"), dict) else None
    if isinstance(calibration, dict):
        for key in ("folder",):
            if key in calibration:
                calibration[key] = resolve(calibration[key])
        if isinstance(calibration.get("files"), list):
            calibration["files"] = [resolve(f) for f in calibration["files"]]
        if isinstance(calibration.get("images"), dict) and "folder" in calibration["images"]:
            calibration["images"]["folder"] = resolve(calibration["images"]["folder"])
    plugins = data.get("plugins")
    if isinstance(plugins, list):
        # A plugin is a module name or a path to a .py file; only paths are made absolute.
        data["plugins"] = [resolve(p) if isinstance(p, str) and p.endswith(".py") else p for p in plugins]


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Merge mappings recursively; the child's values win, lists are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply `key.path=value`; the value is parsed as YAML, list items are addressed by index."""
    key_path, sep, text = item.partition("=")
    if not sep or not key_path:
        raise ConfigError(f"--set {item!r}: expected key.path=value.", stage="config",
                          hint="e.g. --set export.opset=17 or --set converter.name=onnx2ncnn")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    _refuse_expansion(value, Path(f"--set {key_path}"))
    if "[" in key_path:
        dotted = re.sub(r"\[(\d+)\]", r".\1", key_path)
        raise ConfigError(f"--set {item!r}: a list item is addressed by its index after a dot, not in brackets.",
                          stage="config", hint=f"write --set {dotted}={text}")
    keys = key_path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {item!r}: {'.'.join(keys[:depth]) or 'config'} is a list of "
                                  f"{len(node)}; {key!r} is not an index in it.", stage="config")
            key = int(key)  # type: ignore[assignment]
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {'.'.join(keys[:depth])} is not a section.", stage="config")
        if last:
            node[key] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
                node[key] = {}
            node = node[key]


def _describe_validation(path: Path | str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        where = _format_loc(err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif got is not None and not isinstance(got, (dict, list)):
            message = f"{message}, got {got!r}"
        problems.append(f"{where}: {message}" if where else message)
    return f"{path}: " + "; ".join(dict.fromkeys(problems)) + "."


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def check_variations(config: Config) -> None:
    """Each entry of `variations:` names a built-in, or is one of the user's own whose keys make a
    valid config; raised as a ValueError for the config's validation to name the entry."""
    seen: set[str] = set()
    for index, entry in enumerate(config.variations or []):
        where = f"variations[{index}] ({entry.name!r})"
        if entry.name in seen:
            raise ValueError(f"{where}: a variation of that name is listed already")
        seen.add(entry.name)
        if entry.name == AS_CONFIGURED:
            raise ValueError(f"{where}: {AS_CONFIGURED} is the name of the run as configured; choose another")
        if entry.set is None:
            if entry.name != "auto" and entry.name not in VARIATION_NAMES:
                raise ValueError(f"{where}: no built-in variation has that name (built-in: auto, "
                                 f"{', '.join(VARIATION_NAMES)}); give your own a `set:` of the config keys it changes")
            continue
        if entry.name in VARIATION_NAMES or entry.name == "auto":
            raise ValueError(f"{where}: that is a built-in variation; give yours another name")
        if not entry.set:
            raise ValueError(f"{where}: `set:` changes no config key")
        try:
            config.varied(entry.set)
        except ConfigError as exc:
            raise ValueError(f"{where}: {exc.message}") from None
        except Exception as exc:  # pydantic's ValidationError, with the key paths of the merged config
            raise ValueError(f"{where}: its `set:` makes an invalid config: {first_problem(exc)}") from None


def first_problem(exc: Exception) -> str:
    """The first complaint of a pydantic ValidationError, as `key.path: message`."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)
