"""`deploykit lint`: find the ways of writing a PyTorch model that break its export, by running it.

    rule                          written in forward             write instead
    layer-in-forward              nn.LayerNorm(d)(x)             self.norm = nn.LayerNorm(d) in __init__
    tensor-without-device-dtype   torch.zeros(n)                 x.new_zeros(n)
    traced-control-flow           if x.sum() > 0: ...            torch.where(x.sum() > 0, a, b)
    inplace-on-input              x.add_(1), x[0] = 0            x = x + 1, x = x.clone() first
    opaque-call                   x.item(), np.exp(x), math.*    torch ops on tensors

How: one forward pass under torch.no_grad() with nn.Module.__init__, torch's tensor factories and
the Tensor methods that leave torch wrapped (a forward that wrote into an input runs once more under
a TorchFunctionMode, to name the call), then one torch.jit.trace whose TracerWarnings are
collected; `ModelLint` lets the export stage use its reference forward and the exporter's trace
for these. Each finding
points at the user's line, found by walking the live stack out of torch. The model's training flags,
attributes, parameters and buffers, the RNG and every hook are restored, also when forward raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from deploykit.core.errors import ConfigError

RULES = {
    "layer-in-forward": "an nn.Module is built while forward runs",
    "tensor-without-device-dtype": "torch.zeros/arange/tensor/... in forward without device= (or dtype=)",
    "traced-control-flow": "Python control flow on tensor values, which tracing freezes",
    "inplace-on-input": "an in-place op writes into one of forward's inputs",
    "opaque-call": ".item()/.tolist()/.numpy(), numpy or math functions on tensors in forward",
}


@dataclass(frozen=True)
class Finding:
    rule: str
    file: str
    line: int
    message: str
    fix: str
    loses_parameters: bool = False  # trained weights would be missing from the export

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{_shown_path(self.file)}:{self.line}: {self.rule}: {self.message} Fix: {self.fix}"


def lint_module(model: nn.Module, example_inputs: tuple) -> list[Finding]:
    """Run `model(*example_inputs)` once eagerly and once under torch.jit.trace; return the findings.

    The model is run in eval mode on copies of the inputs and left exactly as it was given.
    Raises ConfigError when forward raises on the example inputs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lint_module needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    lint = ModelLint(model, example_inputs)
    try:
        lint.forward()
    except Exception as exc:
        raise ConfigError(f"the model raised {raised_in_forward(exc)} on the example inputs, so it could not be "
                          f"linted: {exc}", stage="lint",
                          hint="check the example inputs (order, shape, dtype) against forward(); lint runs the "
                               "model in eval mode under torch.no_grad().") from exc
    lint.trace()
    return lint.findings()


class ModelLint:
    """One lint spread over the runs of the model its caller makes anyway, as the export stage does:
    `forward` is the eager pass and returns the outputs, and `exporter_trace` turns the
    TracerWarnings of the exporter's own torch.jit trace into findings, so the model runs once
    eagerly and is traced once. `trace` is lint's own trace, for when no such trace runs.
    The model is left as it was given after `trace`, and after `forward` unless asked otherwise."""

    def __init__(self, model: nn.Module, example_inputs: tuple) -> None:
        self.model, self.example_inputs = model, tuple(example_inputs)
        self.collector = _Collector(model, self.example_inputs)
        self.traced = False

    def forward(self, *, keep_state: bool = False) -> Any:
        """The model's outputs, computed once with the eager checks on; the model's exception is raised
        as it is (`raised_in_forward` describes it). With `keep_state`, the model is left as this
        forward leaves it, as a plain forward would: what it caches in eval mode (timm's LeViT its
        attention biases) is then there for the export, which traces it as constants."""
        if keep_state:
            with torch.random.fork_rng(devices=[]):  # as lint always leaves the RNG
                return _eager_pass(self.model, self.example_inputs, self.collector)
        with _model_left_as_given(self.model):
            return _eager_pass(self.model, self.example_inputs, self.collector)

    @property
    def exporter_trace_is_lints(self) -> bool:
        """Whether the TorchScript exporter traces the model as lint's own trace does. It appends the
        defaults of forward's further parameters to the inputs it traces, and traces a bool or a
        number among them as a tensor (timm's ViTs: `is_causal=False`), so its TracerWarnings would
        speak of values that are Python values to lint (`if attn_mask is not None or is_causal`)."""
        try:
            parameters = list(inspect.signature(self.model.forward).parameters.values())
        except (TypeError, ValueError):
            return False
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return not any(p.default is not p.empty and p.default is not None
                       for p in positional[len(self.example_inputs):])

    def trace(self) -> None:
        with _model_left_as_given(self.model):
            _trace_pass(self.model, self.example_inputs, self.collector)
        self.traced = True

    @contextlib.contextmanager
    def exporter_trace(self) -> Iterator[None]:
        """Around torch.onnx.export (TorchScript), inside its caller's warnings.catch_warnings(record=True)."""
        try:
            with _tracer_warnings_seen(self.collector, passed_on=True):
                yield
        finally:  # a trace that failed fails the same way for lint's own
            self.traced = True

    def findings(self) -> list[Finding]:
        return self.collector.findings()


# --- where a call comes from ----------------------------------------------------------------------

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
# Frames that only forward a call: lint itself, torch's __torch_function__ dispatch, the Python
# dunders of torch.Tensor (__array__, __iter__) and the warnings module showing a warning.
_PASS_THROUGH = {os.path.abspath(path) for path in (__file__, torch.overrides.__file__, torch._tensor.__file__,
                                                   warnings.__file__)}
_BOUNDARIES: set[types.CodeType] = set()  # lint's frames that call the model: user code is above them


# deploykit's own code that runs inside a forward (the export's hooks on the embeddings) is a tool's,
# like torch's; the models that ship with it are a user's.
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # deploykit/, above tools/
_OWN_MODELS_DIR = os.path.join(_OWN_DIR, "models") + os.sep


def _frame_kind(frame: types.FrameType) -> str:
    filename = os.path.abspath(frame.f_code.co_filename)
    if filename in _PASS_THROUGH:
        return "pass"
    if filename.startswith(_TORCH_DIR) or (filename.startswith(_OWN_DIR) and not filename.startswith(_OWN_MODELS_DIR)):
        return "torch"
    return "user"


def _user_site(frame: types.FrameType | None, *, through_torch: bool,
               skip: Callable[[types.FrameType], bool] = lambda frame: False) -> tuple[str, int] | None:
    """The file:line of the user code that made this call, or None when torch itself made it.

    through_torch=False asks for the user code that called torch directly (torch.zeros(...) in
    forward, not inside F.multi_head_attention_forward); True walks out of torch to the user's line
    (the `self.act(x)` that ended in an in-place relu_).
    """
    while frame is not None and frame.f_code not in _BOUNDARIES:
        kind = _frame_kind(frame)
        if kind == "user" and not skip(frame):
            return frame.f_code.co_filename, frame.f_lineno
        if kind == "torch" and not through_torch and not skip(frame):
            return None
        frame = frame.f_back
    return None


def _module_being_built(frame: types.FrameType) -> nn.Module | None:
    code = frame.f_code
    if code.co_name != "__init__" or code.co_argcount == 0:
        return None
    owner = frame.f_locals.get(code.co_varnames[0])
    return owner if isinstance(owner, nn.Module) else None


def _inside_module_init(frame: types.FrameType | None) -> bool:
    while frame is not None and frame.f_code not in _BOUNDARIES:
        if _module_being_built(frame) is not None:
            return True
        frame = frame.f_back
    return False


def _shown_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if relative.startswith("..") else relative


# --- collecting findings --------------------------------------------------------------------------

_FACTORIES = tuple(name for name in (
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "tensor", "as_tensor",
    "scalar_tensor", "rand", "randn", "randint", "randperm", "empty_strided") if hasattr(torch, name))
_HAS_NEW_METHOD = {"zeros", "ones", "empty", "full", "tensor"}  # x.new_zeros(...) and friends
_OPAQUE_METHODS = {  # Tensor method -> how a finding names it; __array__ before numpy (see _watch_entry_points)
    "__array__": "a NumPy function applied to a tensor",
    "item": ".item()",
    "tolist": ".tolist()",
    "numpy": ".numpy()",
    "__float__": "float(tensor) (or a math.* function on a tensor)",
    "__int__": "int(tensor)",
    "__index__": "a tensor used as a Python int (range(t), a list index)",
    "__complex__": "complex(tensor)",
}
_FUNCTIONAL = {"ReLU": "relu", "ReLU6": "relu6", "GELU": "gelu", "SiLU": "silu", "ELU": "elu", "SELU": "selu",
               "LeakyReLU": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax",
               "LogSoftmax": "log_softmax", "Softplus": "softplus", "Hardswish": "hardswish",
               "Hardsigmoid": "hardsigmoid", "Mish": "mish", "Dropout": "dropout", "Flatten": "flatten",
               "AdaptiveAvgPool2d": "adaptive_avg_pool2d", "MaxPool2d": "max_pool2d", "AvgPool2d": "avg_pool2d"}
_OPAQUE_TRACER_WORDS = ("Python number", "Python index", "Python list", "NumPy array", "Python float",
                        "Python integer")
_CONTROL_FLOW_FIX = ("compute both branches and choose with torch.where(condition, a, b), or move the decision "
                     "out of forward (a constructor argument, a separate model per case).")
_OPAQUE_FIX = ("keep the value a tensor and use torch ops (torch.exp, torch.sqrt, x.sum()), take sizes as x.shape[i] "
               "without int() or .item(), and compute Python values outside forward.")


class _Collector:
    """The findings of one lint run, one per rule and line; the first report of a line wins."""

    def __init__(self, model: nn.Module, example_inputs: tuple) -> None:
        self._found: dict[tuple[str, str, int], Finding] = {}
        self._from_tracer: dict[tuple[str, int], Finding] = {}
        self._layers: dict[tuple[str, int], list[nn.Module]] = {}
        self.input_names = _input_names(model, example_inputs)
        tensors = [*model.parameters(), *model.buffers(), *_tensors(example_inputs)]
        self.float_dtypes = {t.dtype for t in tensors if t.is_floating_point()}

    def add(self, rule: str, site: tuple[str, int], message: str, fix: str, loses_parameters: bool = False) -> None:
        self._found.setdefault((rule, *site), Finding(rule, site[0], site[1], message, fix, loses_parameters))

    def add_from_tracer(self, site: tuple[str, int], rule: str, message: str, fix: str) -> None:
        self._from_tracer.setdefault(site, Finding(rule, site[0], site[1], message, fix))

    def layer_built(self, module: nn.Module, site: tuple[str, int]) -> None:
        self._layers.setdefault(site, []).append(module)  # sized up after forward, once fully built

    def findings(self) -> list[Finding]:
        for site, modules in self._layers.items():
            self.add("layer-in-forward", site, *_layer_advice(modules),
                     loses_parameters=any(p.numel() for m in modules for p in m.parameters()))
        seen = {(f.file, f.line) for f in self._found.values()}
        # A line the eager pass already explains (x.item() also warns when traced) is reported once.
        extra = [finding for site, finding in self._from_tracer.items() if site not in seen]
        return sorted([*self._found.values(), *extra], key=lambda f: (f.file, f.line, f.rule))


def _layer_advice(modules: list[nn.Module]) -> tuple[str, str]:
    names = list(dict.fromkeys(_class_name(m) for m in modules))
    first = type(modules[0]).__name__
    what = " and ".join(names)
    built = f"{what} {'is' if len(names) == 1 else 'are'} built inside forward"
    count = sum(p.numel() for m in modules for p in m.parameters())
    attribute = _snake_case(first)
    if count:
        message = (f"{built}, so its {count} parameter(s) are missing from state_dict and re-initialised on every "
                   f"call: trained weights are never used or exported.")
        fix = (f"create it once in __init__ (self.{attribute} = {names[0]}(...)) and call self.{attribute}(...) "
               f"in forward.")
    else:
        message = (f"{built}; it has no parameters, so the numbers are right, but a new module on every call "
                   f"escapes module hooks, named_modules() and the layer names tracing and export give it.")
        functional = _FUNCTIONAL.get(first)
        alternative = f", or call torch.nn.functional.{functional}(...)" if functional else ""
        fix = (f"create it once in __init__ (self.{attribute} = {names[0]}(...)) and call "
               f"self.{attribute}(...){alternative}.")
    return message, fix


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn.") else cls.__qualname__


def _snake_case(name: str) -> str:
    out = [char if not (char.isupper() and i and name[i - 1].islower() and name[i + 1:i + 2].islower())
           else "_" + char for i, char in enumerate(name)]
    return "".join(out).lower()


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _input_names(model: nn.Module, example_inputs: tuple) -> list[str]:
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = []
    for index, value in enumerate(example_inputs):
        base = positional[index] if index < len(positional) else f"input {index}"
        count = sum(1 for _ in _tensors(value))
        names += [base] if count == 1 else [f"{base}[{i}]" for i in range(count)]
    return names


# --- pass 1: eager forward ------------------------------------------------------------------------

def _eager_pass(model: nn.Module, example_inputs: tuple, collector: _Collector) -> Any:
    """Run forward once with the watches on; return its outputs. The model's own exception is raised."""
    inputs = _copy_inputs(example_inputs)
    watch = _EagerWatch(collector)
    tensors = list(zip(collector.input_names, _tensors(inputs)))
    versions = [tensor._version for _, tensor in tensors]
    with torch.no_grad(), _watch_module_construction(collector), _watch_entry_points(watch):
        outputs = model(*inputs)
    if any(tensor._version != version for (_, tensor), version in zip(tensors, versions)):
        _locate_input_writes(model, example_inputs, collector)
    return outputs


def raised_in_forward(exc: BaseException) -> str:
    """`RuntimeError at model.py:12`: the exception's type and the innermost user line it came from."""
    site = _innermost_user_site(exc.__traceback__)
    return f"{type(exc).__name__}{f' at {_shown_path(site[0])}:{site[1]}' if site else ''}"


def _locate_input_writes(model: nn.Module, example_inputs: tuple, collector: _Collector) -> None:
    """forward wrote into an input: run it again on fresh copies, watching every torch call (the
    version counters show which call wrote), which only models that do this pay for."""
    inputs = _copy_inputs(example_inputs)
    watch = _InputWriteWatch(collector, list(zip(collector.input_names, _tensors(inputs))))
    try:
        with torch.no_grad(), watch:
            model(*inputs)
    except Exception:  # noqa: BLE001 - it ran once already; a second run that raises only loses the line
        pass
    watch.report_unlocated_writes(model)


def _copy_inputs(value: Any) -> Any:
    # Lint must not write into the caller's tensors, and inference tensors have no version counter.
    if isinstance(value, torch.Tensor):
        with torch.inference_mode(False):
            return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_inputs(item) for item in value)
    if isinstance(value, dict):
        return {key: _copy_inputs(item) for key, item in value.items()}
    return value


def _innermost_user_site(traceback: types.TracebackType | None) -> tuple[str, int] | None:
    site = None
    while traceback is not None:
        if _frame_kind(traceback.tb_frame) == "user":
            site = traceback.tb_frame.f_code.co_filename, traceback.tb_lineno
        traceback = traceback.tb_next
    return site


@contextlib.contextmanager
def _watch_module_construction(collector: _Collector) -> Iterator[None]:
    original = nn.Module.__init__

    @functools.wraps(original)
    def init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        caller = sys._getframe(1)
        # Layers a constructor builds (the nn.Linear inside a user's block) belong to that block.
        if not _inside_module_init(_outside_own_init(caller, self)):
            site = _user_site(caller, through_torch=False, skip=lambda frame: _module_being_built(frame) is self)
            if site is not None:
                collector.layer_built(self, site)

    nn.Module.__init__ = init  # type: ignore[method-assign]  # to see every layer built, until restored below
    try:
        yield
    finally:
        nn.Module.__init__ = original  # type: ignore[method-assign]


def _outside_own_init(frame: types.FrameType | None, module: nn.Module) -> types.FrameType | None:
    while frame is not None and (_module_being_built(frame) is module or _frame_kind(frame) == "pass"):
        frame = frame.f_back
    return frame


@contextlib.contextmanager
def _watch_entry_points(watch: _EagerWatch) -> Iterator[None]:
    """While forward runs, torch's tensor factories and the Tensor methods that leave torch are
    wrapped, so only those calls pay for lint. A TorchFunctionMode seeing every torch call cost
    25-60 us a call (10-15 ms a forward on MobileNetV3, DeiT-tiny, GhostNet). A factory bound to
    another name before forward (`from torch import zeros`) is not seen."""
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, make: Callable[..., Any]) -> None:
        patched.append((owner, name, owner.__dict__.get(name, _ABSENT)))
        setattr(owner, name, make(getattr(owner, name)))

    try:
        for name in _FACTORIES:
            wrap(torch, name, lambda original, name=name: _factory_wrapper(original, name, watch))
        # __array__ first: np.asarray(x) reaches .numpy() through it, and the first report of a line wins.
        for name, what in _OPAQUE_METHODS.items():
            wrap(torch.Tensor, name, lambda original, what=what: _opaque_wrapper(original, what, watch))
        wrap(torch.Tensor, "__bool__", lambda original: _bool_wrapper(original, watch))
        yield
    finally:
        for owner, name, original in reversed(patched):
            if original is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


_ABSENT = object()


def _factory_wrapper(original: Any, name: str, watch: _EagerWatch) -> Any:
    @functools.wraps(original)
    def factory(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        watch.check_factory(name, kwargs, result)
        return result
    return factory


def _opaque_wrapper(original: Any, what: str, watch: _EagerWatch) -> Any:
    @functools.wraps(original)
    def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        watch.report("opaque-call", f"{what} in forward leaves torch, so the exporter cannot see through it: the "
                                    f"value is frozen from the example input.", _OPAQUE_FIX)
        return original(self, *args, **kwargs)
    return method


def _bool_wrapper(original: Any, watch: _EagerWatch) -> Any:
    @functools.wraps(original)
    def method(self: torch.Tensor) -> bool:
        watch.report("traced-control-flow", "a tensor decides a Python if/while/and/or here (bool(tensor)); tracing "
                                            "keeps only the branch the example input took.", _CONTROL_FLOW_FIX)
        return original(self)
    return method


class _EagerWatch:
    """What the wrapped entry points report, at the user line that called them."""

    def __init__(self, collector: _Collector) -> None:
        self.collector = collector

    def report(self, rule: str, message: str, fix: str) -> None:
        site = _user_site(sys._getframe(), through_torch=False)
        if site is not None:
            self.collector.add(rule, site, message, fix)

    def check_factory(self, name: str, kwargs: dict, result: Any) -> None:
        no_device = kwargs.get("device") is None
        wrong_dtype = (kwargs.get("dtype") is None and isinstance(result, torch.Tensor) and result.is_floating_point()
                       and bool(self.collector.float_dtypes) and result.dtype not in self.collector.float_dtypes)
        if not (no_device or wrong_dtype):
            return
        frame = sys._getframe()
        site = _user_site(frame, through_torch=False)
        if site is None or _inside_module_init(frame):  # a buffer made in __init__ is the right way
            return
        problems = []
        if no_device:
            problems.append("without device= it is made on the CPU whatever device the inputs are on, and tracing "
                            "records it as a CPU constant")
        if wrong_dtype:
            model_dtypes = ", ".join(sorted(str(d).removeprefix("torch.") for d in self.collector.float_dtypes))
            problems.append(f"without dtype= it is {str(result.dtype).removeprefix('torch.')} while the model "
                            f"computes in {model_dtypes}")
        floating = isinstance(result, torch.Tensor) and result.is_floating_point()
        like_x = f"device=x.device{', dtype=x.dtype' if floating else ''}"
        fix = (f"use x.new_{name}(...) (same device and dtype as x) or torch.{name}(..., {like_x})"
               if name in _HAS_NEW_METHOD else f"use torch.{name}(..., {like_x})")
        self.collector.add("tensor-without-device-dtype", site, f"torch.{name}(...) in forward: {'; '.join(problems)}.",
                           f"{fix}, where x is a tensor forward already has; for a constant, register a buffer "
                           f"in __init__.")


class _InputWriteWatch(TorchFunctionMode):
    """Sees every torch call of the forward and names the one after which an input's version
    counter moved (torch's own calls inside one of them are not re-dispatched)."""

    def __init__(self, collector: _Collector, inputs: list[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.collector = collector
        self.inputs = inputs
        self.start_versions = [tensor._version for _, tensor in inputs]
        self.versions = list(self.start_versions)
        self.written: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        self._check_input_writes(func, kwargs)
        return result

    def _check_input_writes(self, func: Any, kwargs: dict) -> None:
        for index, (name, tensor) in enumerate(self.inputs):
            if tensor._version == self.versions[index]:
                continue
            self.versions[index] = tensor._version
            site = _user_site(sys._getframe(), through_torch=True)
            if index in self.written or site is None:
                continue
            self.written.add(index)
            self.collector.add("inplace-on-input", site, _write_message(func, kwargs, name), (
                f"work on a copy ({name} = {name}.clone()) or use the out-of-place op ({name} = {name} + y instead of "
                f"{name}.add_(y), torch.relu({name}), {name} = torch.where(mask, v, {name}) instead of "
                f"{name}[mask] = v)."))

    def report_unlocated_writes(self, model: nn.Module) -> None:
        """An input changed by a call torch did not show us (e.g. inside a custom C++ op): name forward."""
        forward = inspect.unwrap(type(model).forward)
        try:
            file, line = inspect.getsourcefile(forward), forward.__code__.co_firstlineno
        except (TypeError, AttributeError):
            return
        for index, (name, tensor) in enumerate(self.inputs):
            if index not in self.written and tensor._version != self.start_versions[index] and file:
                self.collector.add("inplace-on-input", (file, line), f"forward changes its input `{name}` in place.",
                                   f"work on a copy ({name} = {name}.clone()) or use out-of-place ops.")


def _write_message(func: Any, kwargs: dict, input_name: str) -> str:
    name = getattr(func, "__name__", str(func))
    if name == "__setitem__":
        call = f"item assignment ({input_name}[...] = v)"
    elif kwargs.get("inplace"):
        call = f"{name}(..., inplace=True)"
    else:
        call = f".{name}()" if name.endswith("_") else f"{name}(...)"
    return (f"{call} writes into forward's input `{input_name}` in place: the caller's tensor changes on every call, "
            f"and an exported graph cannot write to its inputs, so the deployed model behaves differently.")


# --- pass 2: torch.jit.trace ----------------------------------------------------------------------

def _trace_pass(model: nn.Module, example_inputs: tuple, collector: _Collector) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with _tracer_warnings_seen(collector, passed_on=False):
            try:
                with torch.no_grad():
                    torch.jit.trace(model, _copy_inputs(example_inputs), check_trace=False, strict=False)
            except Exception:  # noqa: BLE001 - a model tracing cannot handle is the export stage's to report
                pass


@contextlib.contextmanager
def _tracer_warnings_seen(collector: _Collector, *, passed_on: bool) -> Iterator[None]:
    """Each TracerWarning shown while this is active becomes a finding at the user line that caused
    it. With `passed_on`, every warning then goes to the showwarning that was in place (which a
    `warnings.catch_warnings(record=True)` around this records)."""
    previous = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, torch.jit.TracerWarning):
            # A warning raised inside torch (not caused by a user line) is hidden by torch's own
            # default filter (TracerWarning.ignore_lib_warnings); lint hides it too.
            site = _user_site(sys._getframe(1), through_torch=False)
            advice = _tracer_advice(str(message))
            if site is not None and advice is not None:
                collector.add_from_tracer(site, *advice)
        if passed_on:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _tracer_advice(text: str) -> tuple[str, str, str] | None:
    if "registered as constants" in text:
        return None  # torch.tensor(...) in forward: a constant is fine once it has device=; rule 2 covers it
    sentence = text.strip().split(". ")[0].rstrip(".")
    if "Iterating over a tensor" in text:
        return ("traced-control-flow", "a Python loop over a tensor is unrolled when traced: the export runs it as "
                                       "many times as the example input had rows.",
                "use tensor ops over the whole dimension (x.sum(0), torch.cumsum, matmul) instead of a Python loop.")
    if any(words in text for words in _OPAQUE_TRACER_WORDS):
        return "opaque-call", f"tracing warns: {sentence}; the value is frozen from the example input.", _OPAQUE_FIX
    return "traced-control-flow", f"tracing warns: {sentence}.", _CONTROL_FLOW_FIX


_BOUNDARIES.update({_eager_pass.__code__, _locate_input_writes.__code__, _trace_pass.__code__})


# --- leaving the model as it was given ------------------------------------------------------------

def _refill(store: dict[str, Any], before: dict[str, Any]) -> None:
    store.clear()
    store.update(before)


@contextlib.contextmanager
def _model_left_as_given(model: nn.Module) -> Iterator[None]:
    """Eval mode while linting; afterwards every module's attributes and every tensor's values as before."""
    modules = list(model.modules())
    # Copies of every tensor cost one model's memory; deployable models are small, and a forward that
    # writes into its own weights or buffers (a call counter, a cache) must not keep those writes.
    attributes = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in modules]
    values = [(t, t._version, t.detach().clone()) for m in modules
              for t in (*m._parameters.values(), *m._buffers.values())
              if isinstance(t, torch.Tensor) and not nn.parameter.is_lazy(t)]
    cuda = sorted({t.device.index or 0 for t, _, _ in values if t.is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda):
            model.eval()
            yield
    finally:
        for module, saved, parameters, buffers, children in attributes:
            _refill(module._parameters, parameters)
            _refill(module._buffers, buffers)
            _refill(module._modules, children)
            vars(module).clear()
            vars(module).update(saved)
        with torch.no_grad():
            for tensor, version, copy in values:
                if tensor._version != version:
                    tensor.copy_(copy)
