"""Rewrite passes: the base class, the registry, and the one function that applies a pass.

A pass reads in `match` and mutates in `rewrite`; `apply_pass` walks a snapshot of the nodes,
calls both, then runs one `cleanup().toposort()` and reports how many places changed.
`PassGraph` gives a run of passes one shape-annotated graph, re-imported only after a pass
changed it. What a pass reads and builds with (queries, `Builder`, `Refusal`) is in
deploykit/onnx/pass_toolkit.py and importable from here. The invariants every pass keeps are listed
in passes/README.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
import typing
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import Message
from onnx_graphsurgeon.ir.tensor import LazyValues
from pydantic import BaseModel, ConfigDict, ValidationError

from deploykit.core.errors import ConfigError
from deploykit.onnx.pass_toolkit import (SHAPE_ONLY_OPS, Builder, Matched, Refusal, Value, anchor_name, constant_value,  # noqa: F401
                                         dtype_of, integer_input_source, known_shape, known_value, lookup_table, rank,
                                         single_consumer, static_shape)

CONVERTERS = ("pnnx", "onnx2ncnn")
ENTRY_POINT_GROUP = "deploykit.passes"
AUTO = "auto"


class PassArgs(BaseModel):
    """The arguments of a pass, the `args:` of its entry in a config. A pass that takes some
    declares them as a subclass (typed fields with defaults) and sets it as its `Args`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GraphPass:
    """Base of every pass. Subclasses set `name`, `targets` and, when they take arguments, `Args`;
    a pass reads its arguments as `self.args`. It is made from a validated `Args` (as the
    config's `passes:` make it) or from keyword arguments, validated here."""

    name: ClassVar[str] = ""
    targets: ClassVar[tuple[str, ...]] = CONVERTERS
    Args: ClassVar[type[PassArgs]] = PassArgs

    args: PassArgs  # an instance of the class's `Args`; a subclass declares it as that class
    refusals: list[str]
    opset: int = 0  # the default-domain opset of the graph being walked, set by the engine
    graph: Optional[gs.Graph] = None  # the graph being walked, set by the engine; `match` only reads it

    def __init__(self, args: Optional[PassArgs] = None, /, **kwargs: Any) -> None:
        self.args = args if args is not None else parse_args(type(self), kwargs, f"{self.name}.args")

    @classmethod
    def create(cls, args: PassArgs) -> GraphPass:
        """The pass that runs for these arguments: this one, unless a variant of it
        (`@register_pass(variant=...)`) is what the arguments ask for."""
        return cls(args)

    @classmethod
    def summary(cls) -> str:
        """The first line of the class's own docstring, else of its module's."""
        own = cls.__dict__.get("__doc__")
        doc = inspect.cleandoc(own) if own else inspect.getdoc(sys.modules[cls.__module__]) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def walked_graph(self) -> gs.Graph:
        """`graph`, for `match` to read while the engine walks it."""
        if self.graph is None:
            raise RuntimeError(f"{self.name}: no graph is being walked")
        return self.graph

    def match(self, node: gs.Node) -> Matched[Any]:
        """Return what `rewrite` needs, None, or `self.refuse(node, why)` when the reason is worth telling."""
        raise NotImplementedError

    def rewrite(self, graph: gs.Graph, match: Any) -> None:
        raise NotImplementedError

    def refuse(self, node: gs.Node, reason: str) -> Refusal:
        """Record why a node that looked like the pattern was left alone, and return that as the
        `Refusal` that `match` returns."""
        refusal = Refusal(node.op, node.name, reason)
        self.__dict__.setdefault("refusals", []).append(str(refusal))
        return refusal

    def covers(self, node: gs.Node, match: Any) -> list[gs.Node]:
        """The nodes the rewrite of `match` (found at `node`) replaces: what the pre-flight check
        reports as fixed by this pass. The matched node, unless the pass rewrites a chain."""
        return [node]

    def builder(self, graph: gs.Graph, anchor: gs.Node | gs.Tensor, dtype: Any = None,
                output_suffix: str = "") -> Builder:
        """The builder of one rewrite at `anchor`: its names are `<anchor>/<this pass>/<tag>`."""
        return Builder(graph, anchor, self.name, dtype, output_suffix)


@dataclass
class PassResult:
    name: str
    changed: int
    refusals: list[str] = field(default_factory=list)


def apply_pass(graph: gs.Graph, graph_pass: GraphPass) -> PassResult:
    graph_pass.refusals = []
    graph_pass.opset = int(graph.opset)
    graph_pass.graph = graph
    changed = 0
    try:
        for node in list(graph.nodes):
            if not node.outputs:  # disconnected by an earlier rewrite in this run
                continue
            found = graph_pass.match(node)
            if found is None or isinstance(found, Refusal):
                continue
            graph_pass.rewrite(graph, found)
            changed += 1
    finally:
        graph_pass.graph = None  # the run keeps its passes; they must not keep a graph and its weights alive
    if changed:
        graph.cleanup().toposort()
    return PassResult(graph_pass.name, changed, list(graph_pass.refusals))


def dry_run(graph: gs.Graph, graph_pass: GraphPass) -> dict[int, tuple[int, Any]]:
    """What `match` says of `graph`, walked as `apply_pass` walks it, with nothing rewritten: node
    index -> (index of the node matched, its match or Refusal), for every node a match covers
    (`covers`) and every node refused. The pass is left as it was."""
    saved: dict[str, Any] = {key: graph_pass.__dict__[key] for key in ("refusals", "opset", "graph")
                             if key in graph_pass.__dict__}
    graph_pass.refusals, graph_pass.opset, graph_pass.graph = [], int(graph.opset), graph
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    found: dict[int, tuple[int, Any]] = {}
    try:
        for node in list(graph.nodes):
            result = graph_pass.match(node) if node.outputs else None
            at = position[id(node)]
            if isinstance(result, Refusal):
                found.setdefault(at, (at, result))
            elif result is not None:
                found.update((position[id(member)], (at, result)) for member in graph_pass.covers(node, result))
    finally:
        for key in ("refusals", "opset", "graph"):
            graph_pass.__dict__.pop(key, None)
        graph_pass.__dict__.update(saved)
    return found


def apply_to_model(model: onnx.ModelProto, graph_pass: GraphPass) -> tuple[onnx.ModelProto, PassResult]:
    """Apply a pass to a ModelProto; the model is returned unchanged when nothing matched."""
    return PassGraph().apply(model, graph_pass)


class PassGraph:
    """The graph a sequence of passes walks. It is imported with shapes once per model and shared
    by every pass that changes nothing; a pass that changes it gets the graph exported as a new
    model, which the next pass imports afresh (with its shapes inferred again).

    Sharing relies on `match` only reading (passes/README.md). The one trace a pass that changed
    nothing leaves, the values of the constants it read, is dropped after it, so that every pass
    sees, and exports, what it would with a freshly imported graph of its own."""

    def __init__(self) -> None:
        self.model: Optional[onnx.ModelProto] = None
        self._graph: Optional[gs.Graph] = None
        self._unread: list[tuple[gs.Constant, LazyValues]] = []

    def apply(self, model: onnx.ModelProto, graph_pass: GraphPass) -> tuple[onnx.ModelProto, PassResult]:
        result = apply_pass(self._graph_of(model), graph_pass)
        if not result.changed:
            self._forget_reads()
            return model, result
        graph, self.model, self._graph, self._unread = self._graph, None, None, []
        return _export(graph, model), result

    def dry_run(self, model: onnx.ModelProto, graph_pass: GraphPass) -> dict[int, tuple[int, Any]]:
        """`dry_run` of the pass on this graph of `model`, which the passes after it share."""
        found = dry_run(self._graph_of(model), graph_pass)
        self._forget_reads()
        return found

    def _graph_of(self, model: onnx.ModelProto) -> gs.Graph:
        if self._graph is None or model is not self.model:
            self.model, self._graph = model, _import_with_shapes(model)
            self._unread = _unread_constants(self._graph)
        return self._graph

    def _forget_reads(self) -> None:
        for constant, values in self._unread:
            constant.values = values


def _export(graph: gs.Graph, model: onnx.ModelProto) -> onnx.ModelProto:
    """The rewritten graph as a model with the ir_version, opsets and producer of `model`."""
    # The exporter hands an unread constant's TensorProto over as it is and renames it in place;
    # a constant the pass renamed gets a copy, so that `model`, which may own it, keeps its names.
    for constant, values in _unread_constants(graph):
        if isinstance(values.tensor, onnx.TensorProto) and values.tensor.name != constant.name:
            copy = onnx.TensorProto()
            copy.CopyFrom(values.tensor)
            constant.values = LazyValues(copy)
    rewritten = gs.export_onnx(graph)
    rewritten.ir_version = model.ir_version
    del rewritten.opset_import[:]
    rewritten.opset_import.extend(model.opset_import)
    rewritten.producer_name, rewritten.producer_version = model.producer_name, model.producer_version
    return rewritten


def _unread_constants(graph: gs.Graph) -> list[tuple[gs.Constant, LazyValues]]:
    """Each constant whose values are still read lazily from a TensorProto, with that reader."""
    constants = []
    for each in (graph, *graph.subgraphs(recursive=True)):
        constants += [t for t in each.tensors().values() if isinstance(t, gs.Constant)]
        constants += [v for node in each.nodes for v in node.attrs.values() if isinstance(v, gs.Constant)]
    # `_values`, as the exporter reads it: the public `values` would load them.
    return [(c, c._values) for c in constants if isinstance(c._values, LazyValues)]


def _import_with_shapes(model: onnx.ModelProto) -> gs.Graph:
    """The model as a graph whose tensors carry the shapes and dtypes that shape inference gives,
    which most `match` constraints read. Its large constants read their values from `model`."""
    inferred, payloads = with_inferred_shapes(model)
    graph = gs.import_onnx(inferred)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and tensor.name in payloads:
            tensor.values = LazyValues(payloads[tensor.name])
    return graph


def with_inferred_shapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """The model with the shapes shape inference gives, as a copy without the values of the large
    initializers (`without_large_payloads`), and those initializers of `model`, by name; `model`
    is left as it is. Where inference fails on the copy, the whole model decides (a copy with
    every value, and no initializers left out), and where it fails on that too, the copy is
    returned as it was, with fewer shapes known."""
    skeleton, payloads = without_large_payloads(model)
    try:
        return onnx.shape_inference.infer_shapes(skeleton, data_prop=True), payloads
    except Exception:  # InferenceError, or a checker or runtime error from inside inference
        pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True), {}
    except Exception:
        return skeleton, payloads


# Shape inference needs only the dims and dtype of an initializer this large: the values it reads
# (Reshape's shape, Slice's starts, Resize's scales, and the shape arithmetic data propagation
# follows) are a few elements each, and data propagation reads 1-D integer tensors only, which
# keep their values at any size. Handing it the values would copy every weight twice (out to the
# inference and back) each time a graph is imported.
_SHAPE_ONLY_ELEMENTS = 1024
_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                  onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
_PAYLOAD_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                   "uint64_data")


def without_large_payloads(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """A copy of the model whose large initializers keep name, dtype and dims but no values, and
    those initializers of `model` itself (not copies), by name."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip=("graph",))
    _copy_fields(model.graph, skeleton.graph, skip=("initializer",))
    payloads = {}
    for initializer in model.graph.initializer:
        if _shape_only(initializer):
            _copy_fields(initializer, skeleton.graph.initializer.add(), skip=_PAYLOAD_FIELDS)
            payloads[initializer.name] = initializer
        else:
            skeleton.graph.initializer.append(initializer)
    return skeleton, payloads


def _shape_only(initializer: onnx.TensorProto) -> bool:
    if initializer.data_location == onnx.TensorProto.EXTERNAL:
        return False
    if len(initializer.dims) <= 1 and initializer.data_type in _INTEGER_TYPES:
        return False
    return int(np.prod(initializer.dims, dtype=np.int64)) >= _SHAPE_ONLY_ELEMENTS


def _copy_fields(source: Message, target: Message, skip: tuple[str, ...]) -> None:
    """Copy the fields set in `source` to `target`, leaving out the fields named in `skip`."""
    for descriptor, value in source.ListFields():
        if descriptor.name in skip:
            continue
        if isinstance(value, MutableSequence):  # a repeated field
            getattr(target, descriptor.name).extend(value)
        elif descriptor.message_type is not None:
            getattr(target, descriptor.name).CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


# ---------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, type[GraphPass]] = {}
_VARIANTS: dict[tuple[str, str], type[GraphPass]] = {}  # (pass name, variant) -> its class
_loaded_builtins = False


def register_pass(cls: Optional[type[GraphPass]] = None, *, override: bool = False, variant: str = ""):
    """Class decorator adding a pass under its `name`; a second pass of one name is an error
    unless it says `override=True`. With `variant`, the class is another form of the pass of its
    name, which that pass's `create` picks by its arguments (`variant(name, key)`)."""

    def add(pass_cls: type[GraphPass]) -> type[GraphPass]:
        if variant:
            _VARIANTS[(pass_cls.name, variant)] = pass_cls
            return pass_cls
        name = pass_cls.name
        if not name or not name.replace("_", "").isalnum():
            raise ConfigError(f"pass class {pass_cls.__qualname__} needs a `name` of letters, digits and _.",
                              stage="passes")
        unknown = set(pass_cls.targets) - set(CONVERTERS)
        if unknown:
            raise ConfigError(f"pass {name!r}: unknown target(s) {sorted(unknown)}; targets are {list(CONVERTERS)}.",
                              stage="passes")
        existing = _REGISTRY.get(name)
        reloaded = existing is not None and _origin(existing) == _origin(pass_cls)
        if existing is not None and existing is not pass_cls and not reloaded and not override:
            raise ConfigError(
                f"two passes are named {name!r}: {_origin(existing)} and {_origin(pass_cls)}.", stage="passes",
                hint="rename one, or register the new one with @register_pass(override=True).")
        _REGISTRY[name] = pass_cls
        return pass_cls

    return add(cls) if cls is not None else add


def variant(name: str, key: str) -> type[GraphPass]:
    """The class registered with `@register_pass(variant=key)` for the pass `name`."""
    _load_builtins()
    return _VARIANTS[(name, key)]


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registry() -> dict[str, type[GraphPass]]:
    _load_builtins()
    return dict(_REGISTRY)


def _load_builtins() -> None:
    global _loaded_builtins
    if not _loaded_builtins:
        _loaded_builtins = True
        import deploykit.passes  # noqa: F401  (registers the built-in passes)
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            _import_plugin(entry.value.split(":")[0], f"entry point {entry.name!r}")


def load_plugins(plugins: list[str]) -> None:
    """Import the config's `plugins:`: module names, or paths to .py files."""
    _load_builtins()
    for plugin in plugins:
        _import_plugin(plugin, f"plugins: {plugin}")


def _import_plugin(plugin: str, where: str) -> None:
    try:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise ConfigError(f"{where}: file not found.", stage="passes")
            module_name = f"deploykit_plugin_{path.stem}"
            loaded = sys.modules.get(module_name)
            if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
                return
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None, f"no module spec for {path}"
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(plugin)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"{where}: importing it raised {type(exc).__name__}: {exc}.", stage="passes",
                          hint="run `python -c 'import <module>'` to see the full error.") from None


def resolve_passes(entries: Optional[list], converter: str) -> list[GraphPass]:
    """Instantiate the configured passes in order; `None` (auto) picks the built-ins for `converter`
    (a plugin's pass runs only where the config names it). In a list with `auto`, an entry naming
    a pass that `auto` runs configures that pass in its place: `args` set its arguments,
    `enabled: false` leaves it out."""
    available = registry()
    built_ins = auto_passes(converter)
    if entries is None:
        return [cls.create(cls.Args()) for cls in built_ins]
    with_auto = any(entry.name == AUTO and entry.enabled for entry in entries)
    in_auto = {cls.name for cls in built_ins} if with_auto else set()
    passes: list[GraphPass] = []
    auto_at, configured = None, {}
    for index, entry in enumerate(entries):
        if entry.name == AUTO:  # `auto` inside a list: the built-ins go here
            if entry.enabled and auto_at is None:
                auto_at = len(passes)
            continue
        cls = available.get(entry.name)
        if cls is None:
            raise ConfigError(f"passes[{index}]: unknown pass {entry.name!r}.", stage="config",
                              hint=f"`deploykit passes` lists them; known: {', '.join(sorted(available))}.")
        if entry.name in in_auto:
            configured[entry.name] = (index, entry)
        elif entry.enabled:
            passes.append(_instantiate(cls, index, entry))
    if auto_at is not None:
        chosen = [(cls, *configured.get(cls.name, (None, None))) for cls in built_ins]
        passes[auto_at:auto_at] = [cls.create(cls.Args()) if entry is None else _instantiate(cls, index, entry)
                                   for cls, index, entry in chosen if entry is None or entry.enabled]
    return passes


def auto_passes(converter: str) -> list[type[GraphPass]]:
    """The built-in passes `passes: auto` runs for `converter`, in the order of passes/__init__.py."""
    from deploykit.passes import AUTO

    available = registry()
    chosen = [available[name] for name in AUTO if name in available]
    return [cls for cls in chosen if converter in cls.targets and is_builtin(cls)]


def listing_order() -> list[type[GraphPass]]:
    """Every registered pass: the built-ins in their `passes: auto` order, then the others by name."""
    from deploykit.passes import AUTO

    available = registry()
    return sorted(available.values(), key=lambda cls: (AUTO.index(cls.name) if cls.name in AUTO and is_builtin(cls)
                                                       else len(AUTO), cls.name))


def _instantiate(cls: type[GraphPass], index: int, entry: Any) -> GraphPass:
    if not _takes_keywords(cls):
        return cls.create(parse_args(cls, entry.args, f"passes[{index}].args"))
    try:
        return cls(**entry.args)
    except TypeError as exc:
        raise ConfigError(f"passes[{index}] ({entry.name}).args: {exc}.", stage="config",
                          hint=f"the pass takes: {', '.join(describe_args(cls)) or 'no arguments'}.") from None


def parse_args(cls: type[GraphPass], raw: dict[str, Any], where: str) -> PassArgs:
    """`raw` validated as the pass's `Args`; a wrong one is a config error naming `<where>.<key>`."""
    try:
        return cls.Args.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"])
            if err["type"] == "extra_forbidden":
                message = "unknown argument"
            else:
                message = err["msg"].removeprefix("Value error, ")
                if not isinstance(err.get("input"), (dict, list)):
                    message += f", got {err['input']!r}"
            problems.append(f"{where}.{key}: {message}")
        raise ConfigError("; ".join(dict.fromkeys(problems)) + f" (pass {cls.name!r}).", stage="config",
                          hint=f"{cls.name} takes {', '.join(describe_args(cls)) or 'no arguments'}.") from None


def _takes_keywords(cls: type[GraphPass]) -> bool:
    """A plugin written before passes declared `Args`: its own `__init__` takes the arguments."""
    return cls.Args is PassArgs and cls.__init__ is not GraphPass.__init__


def is_builtin(cls: type[GraphPass]) -> bool:
    """Built-in passes are the ones `passes: auto` chooses from; plugins are listed by name."""
    return cls.__module__.startswith("deploykit.passes.")


def describe_args(cls: type[GraphPass]) -> list[str]:
    """The arguments of a pass, each with its type and default: `max_vocab: int > 0 = 4096`."""
    if _takes_keywords(cls):
        return [str(p) for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    return [f"{name}: {_type_name(field.annotation, field.metadata)} = {field.get_default(call_default_factory=True)!r}"
            for name, field in cls.Args.model_fields.items()]


def _type_name(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    origin, parts = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(parts[0], [*parts[1:], *metadata])
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(_type_name(part) for part in parts if part is not type(None))
        text += " or None" if type(None) in parts else ""
    elif origin is not None:
        text = f"{origin.__name__}[{', '.join(_type_name(part) for part in parts)}]"
    else:
        text = getattr(annotation, "__name__", str(annotation))
    for constraint in metadata:
        for attribute, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(constraint, attribute, None) is not None:
                text += f" {symbol} {getattr(constraint, attribute)}"
        if getattr(constraint, "allow_inf_nan", True) is False:
            text += ", finite"
    return text
