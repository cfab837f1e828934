"""Benchmarks for deploykit: what converts, how fast the result runs, what the pipeline costs.

    python scripts/bench.py coverage [--json out.json] [--models a,b] [--torchvision] [--transformers]
    python scripts/bench.py speed [--runs 200] [--rounds 3]
    python scripts/bench.py pipeline-cost [--repeats 3]
    python scripts/bench.py int8 [--torchvision] [--calibration 32]   (needs ncnn's tools: NCNN_TOOLS)
    python scripts/bench.py all --json bench.json

Every number is reported against a baseline measured in the same run, on the same machine:

- coverage: per zoo model (scripts/zoo.py), does the route end with an ncnn model that loads
  and reproduces the PyTorch outputs (allclose, atol 1e-4, rtol 1e-3)? Routes:
    deploykit         `deploykit.pipeline.run`, pnnx target, `passes: auto`, config built in code
    deploykit+recipe  the same with the model's documented recipe (e.g. `cut_at` for an argmax);
                      only for models that have one
    bare_pnnx         what a user does without deploykit: `torch.onnx.export(dynamo=False)`,
                      `pnnx model.onnx inputshape=... fp16=0`, load with ncnn
    pnnx_torch        `pnnx.export(model, path, inputs, fp16=False)` straight from PyTorch
    onnx2ncnn         the deploykit route with `converter: onnx2ncnn` (the binary from $ONNX2NCNN,
                      PATH, or `--set converter.path=...`)
    bare_onnx2ncnn    the road the article deploykit grew from took: `torch.onnx.export`, onnxsim,
                      `onnx2ncnn model.onnx model.param model.bin`, load with ncnn
  Every route's ncnn model is run by the same runner and judged against the same torch outputs.
- speed: ncnn latency (1 thread, fp32, median of N runs, one subprocess per measurement) of
  deploykit's model / the bare-pnnx model, with onnxruntime (1 thread) on the plain export as
  the reference point.
- pipeline-cost: wall time and peak memory of `deploykit run` / the bare route, on the encoder
  in three sizes: the largest process's peak RSS (ru_maxrss, via wait4) and the peak of the
  whole process tree's summed RSS (sampled every 50 ms).

The Python API (`coverage()`, `speed()`, `pipeline_cost()`) returns the same dicts the JSON holds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # `import zoo`, and the `zoo:...` factories deploykit imports

import numpy as np  # noqa: E402

import zoo  # noqa: E402

ROUTES = ("deploykit", "deploykit+recipe", "onnx2ncnn", "bare_pnnx", "pnnx_torch", "bare_onnx2ncnn")
SPEED_ROUTES = ("deploykit", "bare_pnnx", "pnnx_torch", "onnx2ncnn")  # the routes `speed` times
ATOL, RTOL = 1e-4, 1e-3  # the judge for every route: |ncnn - torch| <= ATOL + RTOL * |torch|
OPSET = 13  # both ONNX routes export at deploykit's default opset, so only deploykit's stages differ
CONVERT_TIMEOUT = 600.0
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {"python": platform.python_version()}
    for name in ("deploykit", "torch", "onnx", "onnxruntime", "onnxsim", "pnnx", "ncnn", "torchvision", "timm",
                 "transformers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "memory_gib": memory,
            "system": f"{platform.system()} {platform.release()}", "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "versions": versions}


def describe_machine(info: dict[str, Any]) -> str:
    v = info["versions"]
    tools = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "pnnx", "ncnn") if k in v)
    return (f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
            f"{info['memory_gib']} GiB, {info['system']}; python {v['python']}, {tools}; {info['date']}")


# ---------------------------------------------------------------------------------------------
# Inputs, the torch reference, the judge


def model_inputs(entry: zoo.ZooModel) -> dict[str, np.ndarray]:
    """The arrays deploykit itself makes from the entry's `inputs:` (so every route gets the same)."""
    from deploykit.core.config import Config
    from deploykit.core.inputs import make_inputs

    config = Config.model_validate(entry.config(output="unused"))
    return make_inputs(config.inputs, config.seed)


def torch_outputs(model: Any, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        result = model(*(torch.from_numpy(a) for a in inputs.values()))
    flat = list(result) if isinstance(result, (tuple, list)) else [result]
    return [t.detach().numpy() for t in flat]


def judge(reference: list[np.ndarray], actual: list[np.ndarray]) -> dict[str, Any]:
    """allclose(ATOL, RTOL) of every output, with its max abs error; a shape that differs only by
    size-1 axes is compared reshaped (ncnn drops the batch axis), any other difference fails."""
    worst, ok, notes = 0.0, len(reference) == len(actual), []
    for index, (ref, got) in enumerate(zip(reference, actual)):
        got = np.asarray(got)
        if ref.shape != got.shape:
            if ref.size != got.size:
                ok = False
                notes.append(f"output {index}: shape {list(got.shape)}, torch {list(ref.shape)}")
                continue
            got = got.reshape(ref.shape)
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        diff = np.abs(got64 - ref64)
        diff = np.where(np.isnan(diff), np.inf, diff)
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        if not np.all(diff <= ATOL + RTOL * np.abs(ref64)):
            ok = False
    if len(reference) != len(actual):
        notes.append(f"{len(actual)} output(s), torch has {len(reference)}")
    return {"passed": ok, "max_abs": worst, "notes": notes}


def _result(route: str) -> dict[str, Any]:
    return {"route": route, "status": "failed", "stage": None, "reason": "", "max_abs": None, "seconds": 0.0,
            "converted": False, "ran": False, "verified": False, "leftover_layers": [], "files": {}}


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _captured_fds(log: Path) -> Iterator[None]:
    """Send this process's fd 1 and 2 (what pnnx's binary and torch's C++ print) to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _run_on_ncnn(result: dict[str, Any], param: Path, weights: Path, script: Path, input_names: list[str],
                 inputs: dict[str, np.ndarray], output_names: list[str], reference: list[np.ndarray],
                 tail: Optional[Callable[[dict[str, np.ndarray]], list[np.ndarray]]] = None,
                 blobs: Optional[dict[str, list[dict[str, Any]]]] = None) -> None:
    """Load and run a .param/.bin with the one runner every route shares, then judge it. The blob
    names come from `blobs` (a deploykit report's `ncnn` entry, as the conversion named them), or
    else from the `*_ncnn.py` script pnnx wrote."""
    from deploykit.ncnn.converters.base import Blob
    from deploykit.ncnn.converters.pnnx import read_ncnn_script
    from deploykit.core.errors import DeployError
    from deploykit.ncnn.runtime import run_ncnn, unknown_layers

    if not (param.is_file() and weights.is_file()):
        result.update(stage="convert", reason=result["reason"] or "the converter wrote no .param/.bin")
        return
    result["converted"] = True
    result["files"] = {"param": str(param), "bin": str(weights), "script": str(script)}
    try:
        result["leftover_layers"] = sorted({kind for kind, _ in unknown_layers(param)})
        if blobs is not None:
            blobs_in, blobs_out = ([Blob(**b) for b in blobs[kind]] for kind in ("inputs", "outputs"))
        else:
            blobs_in, blobs_out = read_ncnn_script(script, input_names, output_names)
        outputs = run_ncnn(param, weights, [(b, inputs[b.onnx_name]) for b in blobs_in], blobs_out, timeout=300)
    except DeployError as exc:
        result.update(status="no-load", stage="load", reason=_short(exc.message))
        if result["leftover_layers"]:
            result["reason"] = f"layers ncnn lacks: {', '.join(result['leftover_layers'])}; " + result["reason"]
        return
    result["ran"] = True
    result["blobs"] = {"inputs": [b.to_dict() for b in blobs_in], "outputs": [b.to_dict() for b in blobs_out]}
    actual = tail(outputs) if tail else [outputs[name] for name in output_names]
    verdict = judge(reference, actual)
    result["max_abs"] = verdict["max_abs"]
    if verdict["passed"]:
        result.update(status="verified", stage=None, verified=True)
    else:
        result.update(status="mismatch", stage="verify",
                      reason=_short("; ".join(verdict["notes"]) or f"max abs error {verdict['max_abs']:.3g} vs torch"))


# ---------------------------------------------------------------------------------------------
# The routes


def route_deploykit(entry: zoo.ZooModel, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                    folder: Path, recipe: bool = False, overrides: Optional[dict[str, Any]] = None,
                    route: str = "deploykit") -> dict[str, Any]:
    """`deploykit.pipeline.run` with a config built in code (plus `overrides`, merged deeply);
    then its ncnn model is judged against torch like every other route's, fed the blobs the
    conversion named (with a cut, the host tail runs on onnxruntime after ncnn)."""
    from deploykit.core.config import deep_merge
    from deploykit.core.errors import DeployError

    result = _result("deploykit+recipe" if recipe else route)
    raw = deep_merge(entry.config(output=str(folder), recipe=recipe), overrides or {})
    start = time.perf_counter()
    try:
        report = _run_deploykit(raw, folder)
    except DeployError as exc:
        result["seconds"] = time.perf_counter() - start
        result.update(stage=exc.stage or "?", reason=_short(exc.message))
        report = _read_json(folder / "report.json") or {}
        convert = next((s for s in report.get("stages", []) if s.get("name") == "convert"), {})
        result["converted"] = convert.get("status") == "ok"
        if (folder / "model.ncnn.param").is_file():
            from deploykit.ncnn.runtime import unknown_layers

            with contextlib.suppress(DeployError):
                result["leftover_layers"] = sorted({kind for kind, _ in unknown_layers(folder / "model.ncnn.param")})
        result["status"] = "mismatch" if exc.exit_code == 4 else "failed"
        return result
    except Exception as exc:  # a crash inside deploykit is a finding too
        result["seconds"] = time.perf_counter() - start
        result.update(stage="crash", reason=_short(f"{type(exc).__name__}: {exc}"),
                      traceback=traceback.format_exc(limit=6))
        return result
    result["seconds"] = time.perf_counter() - start
    result["stages"] = {s["name"]: s["seconds"] for s in report["stages"]}
    result["passes_changed"] = _passes_changed(report)
    ncnn = report["ncnn"]
    tail = None
    cut = next((s.get("cut") for s in report["stages"] if s["name"] == "cut"), None)
    head_outputs = [b["onnx_name"] for b in ncnn["outputs"]]
    if cut:
        tail = _host_tail(folder / cut["tail"], inputs, entry.output_names)
    fed = {name: array.astype(ncnn["input_dtypes"].get(name, array.dtype)) for name, array in inputs.items()}
    _run_on_ncnn(result, folder / ncnn["param"], folder / ncnn["bin"], folder / "model_ncnn.py", list(inputs),
                 fed, head_outputs, reference, tail, blobs=ncnn)
    result["deploykit_max_abs"] = ncnn["parity"]["max_abs"]  # its own verdict, against the ONNX export
    return result


def _run_deploykit(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`deploykit.pipeline.run` on the config mapping `raw` (written beside `folder` as YAML), with
    what it and the tools it starts print kept in a log beside `folder`; returns report.json."""
    import yaml
    from rich.console import Console

    from deploykit.core.config import Config
    from deploykit.pipeline import run

    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder.parent / f"{folder.name}.yaml"
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with _captured_fds(folder.parent / f"{folder.name}.log"):
        return run(Config.model_validate(raw), config_path, Console(file=io.StringIO(), width=200))[1]


def _passes_changed(report: dict[str, Any]) -> list[str]:
    return [s["name"].removeprefix("pass:") for s in report.get("stages", [])
            if s["name"].startswith("pass:") and s.get("changed")]


def route_onnx2ncnn(entry: zoo.ZooModel, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                    folder: Path, overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The deploykit route with `converter: onnx2ncnn` (`passes: auto` picks its passes), judged
    the same way."""
    from deploykit.core.config import deep_merge

    converter = deep_merge({"converter": {"name": "onnx2ncnn"}}, overrides or {})
    return route_deploykit(entry, inputs, reference, folder, overrides=converter, route="onnx2ncnn")


def _host_tail(path: Path, inputs: dict[str, np.ndarray], outputs: list[str]):
    import onnxruntime as ort

    def run_tail(head: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {**inputs, **head}
        values = session.run(outputs, {i.name: feed[i.name] for i in session.get_inputs()})
        return list(values)

    return run_tail


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _shape_arg(array: np.ndarray) -> str:
    suffix = {"float32": "f32", "int64": "i64", "int32": "i32", "float16": "f16", "uint8": "u8", "int8": "i8",
              "float64": "f64", "bool": "b"}[array.dtype.name]
    return "[" + ",".join(map(str, array.shape)) + "]" + suffix


def pnnx_binary() -> str:
    import pnnx

    return os.environ.get("PNNX") or pnnx.EXEC_PATH


def route_bare(entry: zoo.ZooModel, inputs: dict[str, np.ndarray], reference: list[np.ndarray], folder: Path,
               opset: Optional[int] = None) -> dict[str, Any]:
    """torch.onnx.export(dynamo=False) -> `pnnx model.onnx inputshape=... fp16=0` -> ncnn."""
    import torch

    result = _result("bare_pnnx")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        model = entry.build()
        with _captured_fds(folder / "export.log"), torch.no_grad():
            torch.onnx.export(model, tuple(torch.from_numpy(a) for a in inputs.values()), str(folder / "model.onnx"),
                              dynamo=False, opset_version=opset or entry.opset, input_names=list(inputs),
                              output_names=list(entry.output_names))
    except Exception as exc:
        result.update(stage="export", reason=_short(f"{type(exc).__name__}: {exc}"),
                      seconds=time.perf_counter() - start)
        return result
    command = [pnnx_binary(), "model.onnx", "inputshape=" + ",".join(_shape_arg(a) for a in inputs.values()), "fp16=0"]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=CONVERT_TIMEOUT,
                              stdin=subprocess.DEVNULL)
        (folder / "convert.log").write_text(" ".join(command) + "\n" + done.stdout + done.stderr, encoding="utf-8")
        if done.returncode != 0:
            result["reason"] = _short(f"pnnx exited {done.returncode}: "
                                      + " | ".join((done.stderr + done.stdout).strip().splitlines()[-2:]))
    except subprocess.TimeoutExpired:
        result["reason"] = f"pnnx ran longer than {CONVERT_TIMEOUT:g}s"
    _run_on_ncnn(result, folder / "model.ncnn.param", folder / "model.ncnn.bin", folder / "model_ncnn.py",
                 list(inputs), inputs, list(entry.output_names), reference)
    result["seconds"] = time.perf_counter() - start
    return result


def route_pnnx_torch(entry: zoo.ZooModel, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                     folder: Path) -> dict[str, Any]:
    """pnnx.export(model, "model.pt", inputs, fp16=False): TorchScript trace -> pnnx -> ncnn."""
    import pnnx
    import torch

    result = _result("pnnx_torch")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cwd = os.getcwd()
    try:
        os.chdir(folder)  # pnnx.export runs the binary in the working directory
        with _captured_fds(folder / "convert.log"), torch.no_grad():
            pnnx.export(entry.build(), str(folder / "model.pt"), tuple(torch.from_numpy(a) for a in inputs.values()),
                        fp16=False)
    except Exception as exc:
        # pnnx.export imports the model_pnnx.py it wrote last; the ncnn files may still be there
        result["reason"] = _short(f"pnnx.export raised {type(exc).__name__}: {exc}")
        if not (folder / "model.pt").is_file():
            result.update(stage="export", seconds=time.perf_counter() - start)
            return result
    finally:
        os.chdir(cwd)
    _run_on_ncnn(result, folder / "model.ncnn.param", folder / "model.ncnn.bin", folder / "model_ncnn.py",
                 list(inputs), inputs, list(entry.output_names), reference)
    result["seconds"] = time.perf_counter() - start
    return result


def route_bare_onnx2ncnn(entry: zoo.ZooModel, inputs: dict[str, np.ndarray], reference: list[np.ndarray],
                         folder: Path, opset: Optional[int] = None,
                         overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """torch.onnx.export(dynamo=False) -> onnxsim.simplify -> `onnx2ncnn model.onnx model.ncnn.param
    model.ncnn.bin` -> ncnn, blobs named after the ONNX tensors as onnx2ncnn names them, batch axis
    dropped. The binary: `converter.path` of the overrides, else $ONNX2NCNN, else PATH."""
    import onnx
    import onnxsim
    import torch

    result = _result("bare_onnx2ncnn")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with _captured_fds(folder / "export.log"), torch.no_grad():
            torch.onnx.export(entry.build(), tuple(torch.from_numpy(a) for a in inputs.values()),
                              str(folder / "model.onnx"), dynamo=False, opset_version=opset or entry.opset,
                              input_names=list(inputs), output_names=list(entry.output_names))
            simplified, _ = onnxsim.simplify(onnx.load(str(folder / "model.onnx")))
        onnx.save(simplified, str(folder / "model_sim.onnx"))
    except Exception as exc:
        result.update(stage="export", reason=_short(f"{type(exc).__name__}: {exc}"),
                      seconds=time.perf_counter() - start)
        return result
    binary = ((overrides or {}).get("converter") or {}).get("path") or os.environ.get("ONNX2NCNN") \
        or shutil.which("onnx2ncnn")
    if not binary:
        result.update(stage="convert", reason="no onnx2ncnn binary: set ONNX2NCNN", seconds=time.perf_counter() - start)
        return result
    command = [str(binary), "model_sim.onnx", "model.ncnn.param", "model.ncnn.bin"]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=CONVERT_TIMEOUT,
                              stdin=subprocess.DEVNULL)
        said = done.stdout + done.stderr
        (folder / "convert.log").write_text(" ".join(command) + "\n" + said, encoding="utf-8")
        problems = [line.strip() for line in said.splitlines()
                    if "not supported" in line or line.startswith(("Unsupported", "Unknown data type"))]
        result["reason"] = _short("onnx2ncnn said: " + "; ".join(dict.fromkeys(problems))) if problems else ""
    except subprocess.TimeoutExpired:
        result["reason"] = f"onnx2ncnn ran longer than {CONVERT_TIMEOUT:g}s"
    blobs = {"inputs": [{"onnx_name": name, "blob": name, "batch_index": 0} for name in inputs],
             "outputs": [{"onnx_name": name, "blob": name, "batch_index": 0} for name in entry.output_names]}
    _run_on_ncnn(result, folder / "model.ncnn.param", folder / "model.ncnn.bin", folder / "model_ncnn.py",
                 list(inputs), inputs, list(entry.output_names), reference, blobs=blobs)
    result["seconds"] = time.perf_counter() - start
    return result


def run_route(route: str, entry: zoo.ZooModel, folder: Path, bare_opset: Optional[int] = None,
              overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """One route on one model into `folder` (which it creates); `overrides` go to deploykit's config."""
    inputs = model_inputs(entry)
    reference = torch_outputs(entry.build(), inputs)
    folder.mkdir(parents=True, exist_ok=True)
    if route == "deploykit":
        return route_deploykit(entry, inputs, reference, folder, overrides=overrides)
    if route == "deploykit+recipe":
        return route_deploykit(entry, inputs, reference, folder, recipe=True, overrides=overrides)
    if route == "onnx2ncnn":
        return route_onnx2ncnn(entry, inputs, reference, folder, overrides=overrides)
    if route == "bare_pnnx":
        return route_bare(entry, inputs, reference, folder, opset=bare_opset)
    if route == "pnnx_torch":
        return route_pnnx_torch(entry, inputs, reference, folder)
    if route == "bare_onnx2ncnn":
        return route_bare_onnx2ncnn(entry, inputs, reference, folder, opset=bare_opset, overrides=overrides)
    raise ValueError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")


# ---------------------------------------------------------------------------------------------
# coverage


def _pick(names: Optional[list[str]], groups: tuple[str, ...]) -> list[zoo.ZooModel]:
    return zoo.models(groups=groups, names=tuple(names or ()))


def coverage(names: Optional[list[str]] = None, groups: tuple[str, ...] = ("default",),
             routes: tuple[str, ...] = ROUTES, workdir: Optional[Path] = None, bare_opset: Optional[int] = None,
             overrides: Optional[dict[str, Any]] = None, log: Log = lambda text: None) -> dict[str, Any]:
    """Convert every chosen zoo model by every route and judge each result on ncnn against torch.
    `overrides` (a nested mapping of config keys) change deploykit's config for every model.

    Artifacts go to `workdir/<model>/<route>/` (a temporary folder, removed, when None).
    Returns {"machine", "judge", "routes", "models": [{name, group, pattern, routes: {route: result}}],
    "headline": {route: {"verified": n, "of": m}}}."""
    entries = _pick(names, groups)
    with _workdir(workdir) as root:
        models = []
        for entry in entries:
            row: dict[str, Any] = {"name": entry.name, "group": entry.group, "pattern": entry.pattern,
                                   "opset": entry.opset, "routes": {}}
            for route in routes:
                if route == "deploykit+recipe" and not entry.recipe:
                    continue
                started = time.perf_counter()
                try:
                    result = run_route(route, entry, root / entry.name / route.replace("+", "_"), bare_opset,
                                       overrides)
                except Exception as exc:  # the harness itself must not stop on one model
                    result = _result(route)
                    result.update(stage="harness", reason=_short(f"{type(exc).__name__}: {exc}"))
                result["wall_seconds"] = round(time.perf_counter() - started, 2)
                row["routes"][route] = result
                log(f"  {entry.name:<18} {route:<17} {cell(result)}")
            if entry.recipe:
                row["recipe"] = entry.recipe
            models.append(row)
    summary = {"machine": machine(), "judge": {"atol": ATOL, "rtol": RTOL, "against": "torch"},
               "bare_opset": bare_opset, "deploykit_overrides": overrides or {}, "routes": list(routes),
               "models": models}
    summary["headline"] = headline(summary)
    return summary


@contextlib.contextmanager
def _workdir(workdir: Optional[Path]) -> Iterator[Path]:
    if workdir is not None:
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        yield Path(tmp)


def headline(summary: dict[str, Any]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    total = len(summary["models"])
    for route in summary["routes"]:
        if route == "deploykit+recipe":
            # a model without a recipe counts as its plain deploykit result
            verified = sum(1 for m in summary["models"]
                           if (m["routes"].get(route) or m["routes"].get("deploykit") or {}).get("verified"))
        else:
            verified = sum(1 for m in summary["models"] if m["routes"].get(route, {}).get("verified"))
        counts[route] = {"verified": verified, "of": total}
    return counts


def cell(result: dict[str, Any]) -> str:
    status = result["status"]
    if status == "verified":
        return f"verified ({result['max_abs']:.1e})"
    if status == "mismatch":
        shown = f" {result['max_abs']:.1e}" if result.get("max_abs") is not None else ""
        return f"WRONG NUMBERS{shown}"
    if status == "no-load":
        layers = result.get("leftover_layers") or []
        return "no-load" + (f": {', '.join(layers[:3])}" if layers else "")
    layers = result.get("leftover_layers") or []
    return f"failed@{result['stage']}" + (f": {', '.join(layers[:3])}" if layers else "")


BARE_ROUTES = ("bare_pnnx", "pnnx_torch")  # what a user tries without deploykit


def _bare_verified(model: dict[str, Any]) -> bool:
    return any(model["routes"].get(route, {}).get("verified") for route in BARE_ROUTES)


def _opsets(summary: dict[str, Any]) -> str:
    other = [f"{m['name']} {m['opset']}" for m in summary["models"] if m.get("opset", OPSET) != OPSET]
    text = f"ONNX routes export at opset {OPSET}" + (f" ({', '.join(other)})" if other else "")
    if summary.get("bare_opset"):
        text += f"; bare_pnnx at opset {summary['bare_opset']}"
    return text


def format_coverage(summary: dict[str, Any]) -> str:
    routes = summary["routes"]
    lines = [describe_machine(summary["machine"]),
             f"judge: ncnn output vs torch, allclose atol {ATOL:g} rtol {RTOL:g}; " + _opsets(summary)]
    if summary.get("deploykit_overrides"):
        lines.append(f"deploykit config overrides: {json.dumps(summary['deploykit_overrides'])}")
    lines.append("")
    bare = [r for r in BARE_ROUTES if r in routes]
    union = ["bare union"] if len(bare) > 1 else []
    lines.append("| model | pattern | " + " | ".join(routes + union) + " |")
    lines.append("| --- | --- | " + " | ".join("---" for _ in routes + union) + " |")
    for m in summary["models"]:
        cells = [cell(m["routes"][r]) if r in m["routes"] else "(no recipe)" for r in routes]
        if union:
            cells.append("verified" if _bare_verified(m) else "-")
        pattern = m["pattern"].replace("|", "\\|")
        lines.append(f"| {m['name']} | {pattern} | " + " | ".join(cells) + " |")
    lines.append("")
    head = summary["headline"]
    parts = [f"{route} {c['verified']}/{c['of']}" for route, c in head.items()]
    lines.append("models verified on ncnn: " + ", ".join(parts))
    if union and "deploykit" in routes:
        either = [m["name"] for m in summary["models"] if _bare_verified(m)]
        missed = [n for n in either if not next(m for m in summary["models"] if m["name"] == n)["routes"]
                  ["deploykit"]["verified"]]
        lines.append(f"  either bare route ({' or '.join(bare)}): {len(either)}/{len(summary['models'])}; "
                     f"deploykit verifies {len(either) - len(missed)} of them"
                     + (f" (not: {', '.join(missed)})" if missed else ""))
    if "deploykit" in head:
        dk = head["deploykit"]["verified"]
        for route, c in head.items():
            if route.startswith("deploykit") or route in ("onnx2ncnn", "bare_onnx2ncnn"):
                continue
            ratio = f"{dk / c['verified']:.2f}x" if c["verified"] else "inf (baseline verified none)"
            lines.append(f"  deploykit / {route}: {dk} vs {c['verified']} -> {ratio}")
    if "onnx2ncnn" in head and "bare_onnx2ncnn" in head:
        ours, bare = head["onnx2ncnn"]["verified"], head["bare_onnx2ncnn"]["verified"]
        ratio = f"{ours / bare:.2f}x" if bare else "inf (baseline verified none)"
        lines.append(f"  onnx2ncnn / bare_onnx2ncnn: {ours} vs {bare} -> {ratio}")
    changed = [f"{m['name']}: {', '.join(m['routes']['deploykit']['passes_changed']) or '-'}"
               for m in summary["models"] if m["routes"].get("deploykit", {}).get("passes_changed") is not None]
    if changed:
        lines.append("deploykit passes that changed the graph: " + "; ".join(changed))
    lines.append("")
    lines.append("why the others did not verify:")
    for m in summary["models"]:
        for route, r in m["routes"].items():
            if not r["verified"]:
                lines.append(f"- {m['name']} / {route}: {r['status']} at {r['stage']}: {r['reason']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# speed


def _latency_child(request: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(request, handle)
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_latency", handle.name],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        raise RuntimeError(f"latency child failed ({done.returncode}): {_short(done.stderr[-600:])}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _latency_worker(path: str) -> int:
    """Child process: time one model on one runtime; prints {"median_ms", "p10_ms", "p90_ms", ...}."""
    request = json.loads(Path(path).read_text(encoding="utf-8"))
    with np.load(request["inputs"]) as saved:
        arrays = {name: saved[name] for name in saved.files}
    runs, warmup = int(request["runs"]), int(request["warmup"])
    timings = []
    if request["kind"] == "ncnn":
        import ncnn

        from deploykit.ncnn.runtime import as_ncnn_dtype

        net = ncnn.Net()
        for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                     "use_bf16_packed"):
            if hasattr(net.opt, flag):
                setattr(net.opt, flag, False)
        net.opt.use_vulkan_compute = False
        net.opt.num_threads = int(request.get("threads", 1))
        if net.load_param(request["param"]) != 0 or net.load_model(request["bin"]) != 0:
            print("ncnn could not load the model", file=sys.stderr)
            return 2
        mats = [(b["blob"], ncnn.Mat(as_ncnn_dtype(arrays[b["onnx_name"]]), batch_index=b["batch_index"]).clone())
                for b in request["blobs"]["inputs"]]
        outs = [b["blob"] for b in request["blobs"]["outputs"]]
        for i in range(warmup + runs):
            start = time.perf_counter_ns()
            ex = net.create_extractor()
            for blob, mat in mats:
                ex.input(blob, mat)
            for blob in outs:
                status, _ = ex.extract(blob)
                if status != 0:
                    print(f"extract {blob} failed", file=sys.stderr)
                    return 2
            elapsed = time.perf_counter_ns() - start
            del ex
            if i >= warmup:
                timings.append(elapsed / 1e6)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(request.get("threads", 1))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(request["onnx"], options, providers=["CPUExecutionProvider"])
        feed = {i.name: arrays[i.name] for i in session.get_inputs()}
        for i in range(warmup + runs):
            start = time.perf_counter_ns()
            session.run(None, feed)
            elapsed = time.perf_counter_ns() - start
            if i >= warmup:
                timings.append(elapsed / 1e6)
    timings.sort()
    print(json.dumps({"median_ms": statistics.median(timings), "p10_ms": timings[len(timings) // 10],
                      "p90_ms": timings[(len(timings) * 9) // 10], "runs": len(timings)}))
    return 0


def speed(names: Optional[list[str]] = None, groups: tuple[str, ...] = ("default",), runs: int = 200,
          warmup: int = 20, rounds: int = 3, covered: Optional[dict[str, Any]] = None,
          workdir: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None,
          log: Log = lambda text: None, threads: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """ncnn latency of deploykit's model and the bare-pnnx model (and pnnx_torch's and the onnx2ncnn
    route's when they ran), onnxruntime on the plain export as the reference; each a median of
    `runs` in its own process, then the median over `rounds` rounds that alternate the order of the
    routes. One row per model and thread count (ncnn's num_threads, onnxruntime's intra-op threads).
    A model is timed when deploykit's model runs and the bare route's or onnx2ncnn's does.

    Uses the artifacts of `covered` (a coverage() result whose workdir still exists; with `names`,
    only those models), or runs coverage for the chosen models first into `workdir`."""
    with _workdir(workdir) as root:
        if covered is None:
            log("converting (coverage) first...")
            covered = coverage(names, groups, routes=SPEED_ROUTES, workdir=root, overrides=overrides, log=log)
        rows = []
        for m in covered["models"]:
            if names and m["name"] not in names:
                continue
            ran = {route: r for route, r in m["routes"].items() if route in SPEED_ROUTES and r["ran"]}
            if "deploykit" not in ran or not {"bare_pnnx", "onnx2ncnn"} & set(ran):
                log(f"  {m['name']:<18} skipped: not every route gave a model ncnn runs")
                continue
            folder = Path(ran["deploykit"]["files"]["param"]).parent
            inputs_npz = folder / "bench_inputs.npz"
            np.savez(inputs_npz, **model_inputs(zoo.by_name(m["name"])))
            plain = (Path(ran["bare_pnnx"]["files"]["param"]).parent / "model.onnx" if "bare_pnnx" in ran
                     else folder / "00_export.onnx")  # the torch export before any deploykit stage
            for count in threads:
                requests = {route: {"kind": "ncnn", "param": r["files"]["param"], "bin": r["files"]["bin"],
                                    "blobs": r["blobs"], "inputs": str(inputs_npz), "runs": runs, "warmup": warmup,
                                    "threads": count}
                            for route, r in ran.items()}
                requests["onnxruntime"] = {"kind": "ort", "onnx": str(plain), "inputs": str(inputs_npz),
                                           "runs": runs, "warmup": warmup, "threads": count}
                samples: dict[str, list[float]] = {route: [] for route in requests}
                order = list(requests)
                for round_index in range(rounds):
                    for route in (order if round_index % 2 == 0 else order[::-1]):
                        samples[route].append(_latency_child(requests[route])["median_ms"])
                median = {route: statistics.median(values) for route, values in samples.items()}
                row = {"name": m["name"], "threads": count, "ms": median, "samples_ms": samples,
                       "verified": {route: m["routes"][route]["verified"] for route in requests
                                    if route in m["routes"]},
                       "deploykit_vs_onnxruntime": median["deploykit"] / median["onnxruntime"]}
                if "bare_pnnx" in median:
                    row.update(deploykit_vs_bare=median["deploykit"] / median["bare_pnnx"],
                               bare_vs_onnxruntime=median["bare_pnnx"] / median["onnxruntime"])
                    # byte-identical .param and .bin: any difference between the two is measurement noise
                    row["identical_to_bare"] = all(
                        _digest(ran["deploykit"]["files"][k]) == _digest(ran["bare_pnnx"]["files"][k])
                        for k in ("param", "bin"))
                    if "pnnx_torch" in median:
                        row["pnnx_torch_vs_bare"] = median["pnnx_torch"] / median["bare_pnnx"]
                if "onnx2ncnn" in median:  # deploykit's onnx2ncnn model against its pnnx one
                    row["onnx2ncnn_vs_deploykit"] = median["onnx2ncnn"] / median["deploykit"]
                rows.append(row)
                log(f"  {m['name']:<18} {count} thread(s): "
                    + ", ".join(f"{route} {ms:.3f} ms" for route, ms in median.items()))
    return {"machine": machine(), "settings": {"threads": list(threads), "precision": "fp32", "runs": runs,
                                               "warmup": warmup, "rounds": rounds},
            "deploykit_overrides": covered.get("deploykit_overrides", {}), "models": rows}


def _digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def format_speed(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [describe_machine(result["machine"]),
             f"latency: {'/'.join(map(str, s['threads']))} thread(s), fp32, median of {s['runs']} runs "
             f"(after {s['warmup']} warm-up) per process, median of {s['rounds']} processes; baselines: "
             "bare pnnx on ncnn, and for the onnx2ncnn route deploykit's pnnx model"
             + (f"; deploykit config overrides: {json.dumps(result['deploykit_overrides'])}"
                if result.get("deploykit_overrides") else ""), "",
             "| model | threads | deploykit ncnn ms | bare pnnx ncnn ms | deploykit / bare | pnnx_torch / bare | "
             "onnx2ncnn ncnn ms | onnx2ncnn / deploykit | onnxruntime ms | deploykit / onnxruntime |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def mark(row: dict[str, Any], route: str) -> str:
        return "" if row["verified"].get(route) else " (wrong numbers)"

    def ms(row: dict[str, Any], route: str) -> str:
        return f"{row['ms'][route]:.3f}{mark(row, route)}" if route in row["ms"] else "-"

    def ratio(row: dict[str, Any], key: str, suffix: str = "") -> str:
        return f"{row[key]:.2f}x{suffix}" if key in row else "-"

    for row in result["models"]:
        same = " (same files)" if row.get("identical_to_bare") else ""
        lines.append(f"| {row['name']} | {row.get('threads', 1)} | {ms(row, 'deploykit')} | {ms(row, 'bare_pnnx')} | "
                     f"{ratio(row, 'deploykit_vs_bare', same)} | "
                     f"{ratio(row, 'pnnx_torch_vs_bare', mark(row, 'pnnx_torch'))} | {ms(row, 'onnx2ncnn')} | "
                     f"{ratio(row, 'onnx2ncnn_vs_deploykit')} | {row['ms']['onnxruntime']:.3f} | "
                     f"{row['deploykit_vs_onnxruntime']:.2f}x |")
    if not result["models"]:
        lines.append("| (no model converted by deploykit and a baseline route) | | | | | | | | | |")
    if any(row.get("identical_to_bare") for row in result["models"]):
        lines.append("")
        lines.append("(same files): deploykit and the bare route wrote byte-identical .param/.bin, so their ratio "
                     "shows the measurement noise of this machine")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# pipeline-cost


# Runs in a small Python of its own: a child forked straight from the benchmark would inherit the
# benchmark's (large, torch-laden) peak RSS, since Linux carries a process's high-water mark
# across fork and exec. wait4's rusage is the child's and its waited-for descendants', so
# ru_maxrss is the largest resident set of any one process in the tree (pnnx, the ncnn runner).
# Processes that run at the same time (deploykit's onnxsim beside its export, or the Python
# process holding the model while pnnx converts it) add up, so a thread also samples the sum of
# the resident sets of the whole tree from /proc every 50 ms: tree_peak_mib.
_LAUNCHER = """
import json, os, subprocess, sys, threading, time
command, log, timeout = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root):
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    stat = handle.read()
                parents[int(entry.name)] = int(stat[stat.rfind(b")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    tree, grown = {root}, True
    while grown:
        found = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= found
        grown = bool(found)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


with open(log, "wb") as sink:
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    timer = threading.Timer(timeout, child.kill)
    timer.start()
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], tree_rss(child.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "tree_peak_mib": peak[0] / 2**20,
                  "exit_code": child.returncode}))
"""


def _timed_child(command: list[str], cwd: Path, timeout: float = 1800) -> dict[str, Any]:
    """Wall seconds, peak RSS (MiB) and exit code of `command`, run by a small launcher process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(command), str(cwd / "child.log"), str(timeout)],
                          cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"the launcher failed: {_short(done.stderr[-600:])}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# What the launcher measures of each run, and the suffix of its ratio to the bare route in a row.
_MEASURED = {"seconds": "time", "peak_rss_mib": "rss", "tree_peak_mib": "tree"}


def pipeline_cost(names: Optional[list[str]] = None, repeats: int = 3, warmup: int = 1,
                  routes: tuple[str, ...] = ("deploykit", "bare_pnnx", "pnnx_torch"),
                  workdir: Optional[Path] = None, overrides: Optional[dict[str, Any]] = None,
                  log: Log = lambda text: None, groups: tuple[str, ...] = ("default",)) -> dict[str, Any]:
    """Wall time and peak memory of a whole conversion per route, each run a fresh child process:
    `deploykit run <config> --force -q` versus this script's bare route (export, pnnx, ncnn check
    against torch) and pnnx_torch route; medians over `repeats`, order alternating. After each
    measured deploykit run, the same command without --force times the re-run that reuses every
    stage (caching). Every child runs under scripts/timed_parts.py, which splits its time into the
    tools', the model build's and the rest (`parts` in each sample; see cost_parts).

    Without `names`: the encoder in three sizes, or with optional `groups`, every model of those."""
    optional = tuple(g for g in groups if g != "default")
    entries = _pick(names or (None if optional else ["encoder_s", "encoder_m", "encoder_l"]), optional or ("default",))
    rows = []
    with _workdir(workdir) as root:
        for entry in entries:
            samples: dict[str, list[dict[str, Any]]] = {route: [] for route in routes}
            reruns: list[dict[str, Any]] = []
            stages = None
            for index in range(warmup + repeats):
                for route in (routes if index % 2 == 0 else routes[::-1]):
                    folder = root / entry.name / f"{route}_{index}"
                    if folder.exists():
                        shutil.rmtree(folder)
                    folder.mkdir(parents=True)
                    if route == "deploykit":
                        import yaml

                        config = folder / "bench.yaml"
                        from deploykit.core.config import deep_merge

                        raw = deep_merge(entry.config(output=str(folder / "out")), overrides or {})
                        config.write_text(yaml.safe_dump(raw, sort_keys=False))
                        command = [sys.executable, str(TIMED_PARTS), str(folder / "parts.json"), "deploykit", "run",
                                   str(config), "--force", "-q"]
                    else:
                        command = [sys.executable, str(TIMED_PARTS), str(folder / "parts.json"), "bench", "_route",
                                   route, entry.name, str(folder / "out")]
                    measured = _timed_child(command, folder)
                    measured["parts"] = _read_json(folder / "parts.json")
                    if measured["exit_code"] not in (0, 1) or (route == "deploykit" and measured["exit_code"]):
                        log(f"  {entry.name} {route}: exit {measured['exit_code']} (see {folder / 'child.log'})")
                    if route == "deploykit":
                        report = _read_json(folder / "out" / "report.json") or {}
                        stages = {s["name"]: s["seconds"] for s in report.get("stages", [])}
                        measured["stages"] = stages
                        measured["parameters"] = next((s["graph"]["parameters"] for s in report.get("stages", [])
                                                       if s["name"] == "export" and s.get("graph")), None)
                    if index >= warmup:
                        samples[route].append(measured)
                    if route == "deploykit" and index >= warmup:  # the same run again: every stage reused
                        rerun = [str(folder / "parts_rerun.json") if c == str(folder / "parts.json") else c
                                 for c in command if c != "--force"]
                        again = _timed_child(rerun, folder)
                        again["parts"] = _read_json(folder / "parts_rerun.json")
                        report = _read_json(folder / "out" / "report.json") or {}
                        again["all_cached"] = bool(report.get("stages")) and all(  # `check` always runs
                            stage["cached"] for stage in report["stages"] if stage["name"] != "check")
                        reruns.append(again)
            median = {route: {**{key: statistics.median(s[key] for s in values) for key in _MEASURED},
                              "exit_codes": sorted({s["exit_code"] for s in values})}
                      for route, values in samples.items()}
            row = {"name": entry.name, "group": entry.group, "pattern": entry.pattern, "median": median,
                   "samples": samples, "deploykit_stage_seconds": stages,
                   "parameters": next((s["parameters"] for s in samples.get("deploykit", []) if s.get("parameters")),
                                      None),
                   "parts": {route: cost_parts(values, route) for route, values in samples.items()}}
            if reruns:
                row["deploykit_rerun"] = {"seconds": statistics.median(r["seconds"] for r in reruns),
                                          "all_cached": all(r["all_cached"] for r in reruns), "samples": reruns}
                row["rerun_vs_first"] = row["deploykit_rerun"]["seconds"] / median["deploykit"]["seconds"]
            for route in routes:
                if route != "bare_pnnx" and "bare_pnnx" in median:
                    for key, ratio in _MEASURED.items():
                        row[f"{route}_vs_bare_{ratio}"] = median[route][key] / median["bare_pnnx"][key]
            rows.append(row)
            log(f"  {entry.name:<10} " + ", ".join(f"{r} {v['seconds']:.2f}s {v['peak_rss_mib']:.0f} MiB "
                                                   f"(tree {v['tree_peak_mib']:.0f} MiB)" for r, v in median.items()))
    return {"machine": machine(), "settings": {"repeats": repeats, "warmup": warmup, "routes": list(routes)},
            "deploykit_overrides": overrides or {}, "models": rows}


TIMED_PARTS = HERE / "timed_parts.py"
# How a run's seconds are attributed. Tools: what the bare route runs too. The model build (the
# user's code, with its library's imports) and the first `import torch` are paid by both routes.
TOOL_PARTS = ("exporter", "onnxsim", "pnnx", "ncnn")
SHARED_PARTS = ("import torch", "build")


def cost_parts(samples: list[dict[str, Any]], route: str) -> dict[str, float]:
    """Median seconds per part of a route's runs (from scripts/timed_parts.py), and `own`: the rest
    of the run (start-up, deploykit's stages, checks, hashing, I/O; in the bare route, its
    reference forward and judge). For deploykit, onnxsim's part is the simplify stage (the wait for
    its process, which runs beside the export), `lint` and `onnxruntime` are its checks, `passes`
    the pass stages."""
    def split(sample: dict[str, Any]) -> dict[str, float]:
        timed = sample.get("parts") or {}
        parts = {key: float(value) for key, value in (timed.get("parts") or {}).items()}
        children = timed.get("children") or {}
        for kind in ("pnnx", "ncnn"):
            parts[kind] = float(children.get(kind, 0.0))
        if route == "deploykit":
            stages = sample.get("stages") or {}
            parts["onnxsim"] = float(stages.get("simplify", 0.0))
            parts["passes"] = sum(v for k, v in stages.items() if k.startswith("pass:"))
        parts["own"] = sample["seconds"] - sum(v for k, v in parts.items())
        return parts

    split_samples = [split(sample) for sample in samples]
    keys = sorted({key for parts in split_samples for key in parts})
    return {key: statistics.median(parts.get(key, 0.0) for parts in split_samples) for key in keys}


def format_cost_parts(result: dict[str, Any]) -> str:
    """Per model: the ratio to the bare route against model size, each stage's share of deploykit's
    time, and where both routes' seconds go (tools, model build, deploykit's own work)."""
    lines = ["| model | parameters (M) | deploykit s | bare s | deploykit / bare | without the model build | "
             "re-run / first | export | simplify | check + passes | convert | verify | outside stages |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(result["models"], key=lambda r: r.get("parameters") or 0):
        dk, bare = row["median"]["deploykit"], row["median"].get("bare_pnnx")
        stages = row.get("deploykit_stage_seconds") or {}
        total = dk["seconds"]
        shares = [stages.get("export", 0.0), stages.get("simplify", 0.0),
                  stages.get("check", 0.0) + sum(v for k, v in stages.items() if k.startswith("pass:")),
                  stages.get("convert", 0.0), stages.get("verify", 0.0)]
        shares.append(total - sum(shares))
        ratio = f"{row['deploykit_vs_bare_time']:.2f}x" if bare else "-"
        if bare:  # the model build (the user's code) and the first import of torch are the same work in both
            shared = {route: sum(row["parts"][route].get(k, 0.0) for k in SHARED_PARTS) for route in row["parts"]}
            ratio += (f" | {(total - shared['deploykit']) / (bare['seconds'] - shared['bare_pnnx']):.2f}x"
                      if "bare_pnnx" in shared and bare["seconds"] > shared["bare_pnnx"] else " | -")
        else:
            ratio += " | -"
        rerun = f"{row['rerun_vs_first']:.2f}x" if "rerun_vs_first" in row else "-"
        size = f"{row['parameters'] / 1e6:.2f}" if row.get("parameters") else "-"
        failed = "" if dk["exit_codes"] == [0] else " (not verified)"
        lines.append(f"| {row['name']}{failed} | {size} | {total:.2f} | {bare['seconds']:.2f} | {ratio} | {rerun} | "
                     if bare else f"| {row['name']}{failed} | {size} | {total:.2f} | - | - | {rerun} | ")
        lines[-1] += " | ".join(f"{100 * v / total:.0f}%" for v in shares) + " |"
    lines += ["", "Where the seconds go (median of the runs; tools = what both routes run; own = the rest: "
                  "start-up, deploykit's stages, checks, hashing and I/O, or the bare script's reference forward):", "",
              "| model | route | total s | import torch + build | exporter | onnxsim | pnnx | ncnn | lint | "
              "onnxruntime checks | passes | own | tools' share |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in sorted(result["models"], key=lambda r: r.get("parameters") or 0):
        for route, parts in row["parts"].items():
            total = row["median"][route]["seconds"]
            tools = sum(parts.get(k, 0.0) for k in TOOL_PARTS)
            cells = [sum(parts.get(k, 0.0) for k in SHARED_PARTS)] + [parts.get(k, 0.0) for k in TOOL_PARTS] + \
                    [parts.get(k, 0.0) for k in ("lint", "onnxruntime", "passes", "own")]
            lines.append(f"| {row['name']} | {route} | {total:.2f} | " + " | ".join(f"{v:.2f}" for v in cells)
                         + f" | {100 * tools / total:.0f}% |")
    return "\n".join(lines)


def _rerun_cells(row: dict[str, Any]) -> str:
    """The re-run's time and its ratio to the first run; "(not all reused)" if a stage ran again."""
    rerun = row.get("deploykit_rerun")
    if not rerun:
        return "- | -"
    flag = "" if rerun["all_cached"] else " (not all reused)"
    return f"{rerun['seconds']:.2f} | {row['rerun_vs_first']:.2f}x{flag}"


def format_cost(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [describe_machine(result["machine"]),
             f"whole conversion in a fresh process, median of {s['repeats']} (after {s['warmup']} warm-up); "
             "baseline = the bare route (torch.onnx.export + pnnx + one ncnn check against torch); a route that "
             "ends without a verified model is timed to that end", "",
             "| model | deploykit s | bare s | deploykit / bare time | pnnx_torch / bare time | "
             "deploykit MiB | bare MiB | deploykit / bare peak RSS | deploykit tree MiB | bare tree MiB | "
             "deploykit / bare tree | re-run s | re-run / first | not verified |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["models"]:
        med = row["median"]
        dk, bare = med["deploykit"], med["bare_pnnx"]
        torch_ratio = f"{row['pnnx_torch_vs_bare_time']:.2f}x" if "pnnx_torch_vs_bare_time" in row else "-"
        failed = [r for r, v in med.items() if v["exit_codes"] != [0]]
        lines.append(f"| {row['name']} | {dk['seconds']:.2f} | {bare['seconds']:.2f} | "
                     f"{row['deploykit_vs_bare_time']:.2f}x | {torch_ratio} | {dk['peak_rss_mib']:.0f} | "
                     f"{bare['peak_rss_mib']:.0f} | {row['deploykit_vs_bare_rss']:.2f}x | {dk['tree_peak_mib']:.0f} | "
                     f"{bare['tree_peak_mib']:.0f} | {row['deploykit_vs_bare_tree']:.2f}x | {_rerun_cells(row)} | "
                     f"{', '.join(failed) or '-'} |")
    lines.append("")
    for row in result["models"]:
        if row.get("deploykit_stage_seconds"):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in row["deploykit_stage_seconds"].items())
            lines.append(f"deploykit stages, {row['name']} (s): {parts}")
    if all(row.get("parts") for row in result["models"]):
        lines += ["", format_cost_parts(result)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command line


def _route_child(route: str, name: str, folder: str) -> int:
    """Child process for pipeline-cost: one route on one model; exit 0 only when it verified."""
    result = run_route(route, zoo.by_name(name), Path(folder))
    Path(folder, "bench_result.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    return 0 if result["verified"] else 1


# ---------------------------------------------------------------------------------------------
# int8: size and latency of the int8 model against the fp32 one it was made from


def is_cnn(entry: zoo.ZooModel) -> bool:
    """One float image input [1, C, H, W]: what ncnn2table calibrates and ncnn2int8 quantizes best."""
    specs = entry.inputs
    return len(specs) == 1 and specs[0].get("dtype", "float32") == "float32" and len(specs[0].get("shape", [])) == 4


def int8(names: Optional[list[str]] = None, groups: tuple[str, ...] = ("default",), calibration: int = 32,
         runs: int = 100, warmup: int = 10, rounds: int = 3, workdir: Optional[Path] = None,
         log: Log = lambda text: None) -> dict[str, Any]:
    """For each CNN of the zoo: `deploykit run` with converter.optimize and quantize.int8
    (calibrated on `calibration` generated inputs, a quarter more held back), then the ncnn
    latency (1 thread) of the int8 model and of the fp32 model it was made from, measured in
    alternating order, and the sizes of their weights."""
    from deploykit.core.config import deep_merge
    from deploykit.core.errors import DeployError

    chosen = [e for e in _pick(names, groups) if names or is_cnn(e)]
    rows = []
    with _workdir(workdir) as root:
        for entry in chosen:
            folder = root / entry.name
            raw = deep_merge(entry.config(output=str(folder)), {
                "converter": {"optimize": True},
                "quantize": {"int8": True, "calibration": {"generate": calibration, "held_back": 0.25}}})
            row: dict[str, Any] = {"name": entry.name}
            try:
                report = _run_deploykit(raw, folder)
            except DeployError as exc:
                row.update(status="failed", stage=exc.stage, reason=_short(exc.message))
                failed = next((st for st in (_read_json(folder / "report.json") or {}).get("stages", [])
                               if st["name"] == "int8" and st.get("parity")), None)
                if failed is not None:  # int8 was made but missed parity.int8: by how much
                    row.update(cosine_vs_reference=min(o["cosine"] for o in failed["parity"]["outputs"]),
                               size_ratio=failed["size_ratio"], quantized=len(failed["quantized_layers"]))
                rows.append(row)
                log(f"  {entry.name:<18} failed at {exc.stage}: {_short(exc.message, 160)}")
                continue
            stage = next(s for s in report["stages"] if s["name"] == "int8")
            blobs = {"inputs": report["ncnn"]["inputs"], "outputs": report["ncnn"]["outputs"]}
            inputs_npz = folder / "bench_inputs.npz"
            np.savez(inputs_npz, **model_inputs(entry))
            models = {"fp32": (folder / report["ncnn"]["param"], folder / report["ncnn"]["bin"]),
                      "int8": (folder / "model.int8.param", folder / "model.int8.bin")}
            requests = {kind: {"kind": "ncnn", "param": str(param), "bin": str(weights), "blobs": blobs,
                               "inputs": str(inputs_npz), "runs": runs, "warmup": warmup}
                        for kind, (param, weights) in models.items()}
            samples: dict[str, list[float]] = {kind: [] for kind in requests}
            for round_index in range(rounds):
                for kind in (list(requests) if round_index % 2 == 0 else list(requests)[::-1]):
                    samples[kind].append(_latency_child(requests[kind])["median_ms"])
            ms = {kind: statistics.median(values) for kind, values in samples.items()}
            size = {kind: weights.stat().st_size for kind, (_, weights) in models.items()}
            held = stage["int8_cost"]["held_back"]
            row.update(status="verified", ms=ms, samples_ms=samples, bytes=size,
                       latency_ratio=ms["int8"] / ms["fp32"], size_ratio=size["fp32"] / size["int8"],
                       quantized=len(stage["quantized_layers"]),
                       quantized_types=sorted({layer["type"] for layer in stage["quantized_layers"]}),
                       cosine_vs_reference=min(o["cosine"] for o in stage["parity"]["outputs"]),
                       cosine_vs_fp32=min(entry_["worst_sample_cosine"] for entry_ in held.values()),
                       held_back=stage["calibration"]["held_back"] + 1)
            rows.append(row)
            log(f"  {entry.name:<18} int8 {ms['int8']:.3f} ms vs fp32 {ms['fp32']:.3f} ms "
                f"({row['latency_ratio']:.2f}x), {row['size_ratio']:.2f}x smaller, cosine "
                f"{row['cosine_vs_reference']:.5f} on {row['held_back']} held-back inputs")
    return {"machine": machine(), "settings": {"threads": 1, "runs": runs, "warmup": warmup, "rounds": rounds,
                                               "calibration": f"{calibration} generated inputs, "
                                                              f"{max(1, -(-calibration // 4))} more held back",
                                               "method": "kl"}, "models": rows}


def format_int8(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [describe_machine(result["machine"]),
             f"int8 vs fp32 (ncnnoptimize, then ncnn2table {s['method']} on {s['calibration']}, ncnn2int8); "
             f"latency: 1 thread, median of {s['runs']} runs per process, median of {s['rounds']} processes", "",
             "| model | verified | int8 cosine (held back) | layers quantized | weights fp32 -> int8 | smaller | "
             "int8 / fp32 latency |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in result["models"]:
        if row["status"] != "verified" and "cosine_vs_reference" in row:
            lines.append(f"| {row['name']} | no: cosine below parity.int8 | {row['cosine_vs_reference']:.5f} | "
                         f"{row['quantized']} | | {row['size_ratio']:.2f}x | |")
            continue
        if row["status"] != "verified":
            lines.append(f"| {row['name']} | failed at {row['stage']}: {row['reason'][:80]} | | | | | |")
            continue
        b = row["bytes"]
        lines.append(f"| {row['name']} | yes | {row['cosine_vs_reference']:.5f} | {row['quantized']} "
                     f"({', '.join(row['quantized_types'])}) | {b['fp32'] / 1e6:.2f} MB -> {b['int8'] / 1e6:.2f} MB | "
                     f"{row['size_ratio']:.2f}x | {row['latency_ratio']:.2f}x ({row['ms']['int8']:.2f} / "
                     f"{row['ms']['fp32']:.2f} ms) |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--models", help="comma-separated zoo names (default: every model of the chosen groups)")
        sub.add_argument("--torchvision", action="store_true", help="add the torchvision models (if importable)")
        sub.add_argument("--timm", action="store_true", help="add the timm models (if importable)")
        sub.add_argument("--transformers", action="store_true", help="add the transformers models (if importable)")
        sub.add_argument("--workdir", type=Path, help="keep the artifacts here (default: a temporary folder)")
        sub.add_argument("--json", type=Path, help="write the results as JSON here")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                         help="change deploykit's config for every model (repeatable; value read as YAML), "
                              "e.g. --set simplify.skip_optimizers=[fuse_qkv]")

    cov = commands.add_parser("coverage", help="which zoo models convert and verify, per route")
    common(cov)
    cov.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated, from {', '.join(ROUTES)}")
    cov.add_argument("--bare-opset", type=int, help="opset of the bare export (default: the model's, as deploykit)")
    spd = commands.add_parser("speed", help="ncnn latency, deploykit vs bare pnnx, onnxruntime as reference")
    common(spd)
    spd.add_argument("--runs", type=int, default=200)
    spd.add_argument("--warmup", type=int, default=20)
    spd.add_argument("--rounds", type=int, default=3)
    spd.add_argument("--threads", default="1", help="comma-separated ncnn thread counts, e.g. 1,2")
    spd.add_argument("--from-coverage", type=Path, metavar="COVERAGE.json",
                     help="time the models a coverage --json run converted (its --workdir must still exist) "
                          "instead of converting again")
    cost = commands.add_parser("pipeline-cost", help="wall time and peak memory, deploykit run vs the bare route")
    cost.add_argument("--models", help="comma-separated zoo names (default: encoder_s,encoder_m,encoder_l, or "
                                       "every model of the optional groups given)")
    for group in ("torchvision", "timm", "transformers"):
        cost.add_argument(f"--{group}", action="store_true", help=f"the {group} models (if importable)")
    cost.add_argument("--routes", default="deploykit,bare_pnnx,pnnx_torch",
                      help="comma-separated, from deploykit, bare_pnnx, pnnx_torch")
    cost.add_argument("--repeats", type=int, default=3)
    cost.add_argument("--warmup", type=int, default=1)
    cost.add_argument("--workdir", type=Path)
    cost.add_argument("--json", type=Path)
    cost.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    quant = commands.add_parser("int8", help="int8 vs fp32 on the zoo's CNNs: accuracy, size and ncnn latency")
    common(quant)
    quant.add_argument("--calibration", type=int, default=32, help="generated calibration inputs per model")
    quant.add_argument("--runs", type=int, default=100)
    quant.add_argument("--warmup", type=int, default=10)
    quant.add_argument("--rounds", type=int, default=3)
    every = commands.add_parser("all", help="coverage, speed and pipeline-cost in one go")
    common(every)
    every.add_argument("--runs", type=int, default=200)
    every.add_argument("--rounds", type=int, default=3)
    every.add_argument("--repeats", type=int, default=3)
    return parser


def _groups(args: argparse.Namespace) -> tuple[str, ...]:
    groups = ["default"]
    for group in ("torchvision", "timm", "transformers"):
        if getattr(args, group, False):
            if zoo.group_available(group):
                groups.append(group)
            else:
                print(f"note: {group} is not importable; its models are skipped (see scripts/README.md)",
                      file=sys.stderr)
    return tuple(groups)


def _names(args: argparse.Namespace) -> Optional[list[str]]:
    return [n.strip() for n in args.models.split(",") if n.strip()] if getattr(args, "models", None) else None


def _route_list(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=value` items -> {"a": {"b": value}}, values read as YAML."""
    import yaml

    nested: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected key.path=value")
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(text)
    return nested


def _write(path: Optional[Path], data: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        print(f"wrote {path}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_latency"]:
        return _latency_worker(argv[1])
    if argv[:1] == ["_route"]:
        return _route_child(argv[1], argv[2], argv[3])
    args = _parser().parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.command == "coverage":
        result = coverage(_names(args), _groups(args), _route_list(args.routes), args.workdir, args.bare_opset,
                          _overrides(args.overrides), log=log)
        print(format_coverage(result))
        _write(args.json, result)
    elif args.command == "speed":
        covered = json.loads(args.from_coverage.read_text(encoding="utf-8")) if args.from_coverage else None
        result = speed(_names(args), _groups(args), args.runs, args.warmup, args.rounds, covered=covered,
                       workdir=args.workdir, overrides=_overrides(args.overrides), log=log,
                       threads=tuple(int(t) for t in _route_list(args.threads)))
        print(format_speed(result))
        _write(args.json, result)
    elif args.command == "int8":
        result = int8(_names(args), _groups(args), args.calibration, args.runs, args.warmup, args.rounds,
                      workdir=args.workdir, log=log)
        print(format_int8(result))
        _write(args.json, result)
    elif args.command == "pipeline-cost":
        result = pipeline_cost(_names(args), args.repeats, args.warmup, _route_list(args.routes),
                               workdir=args.workdir, overrides=_overrides(args.overrides), log=log,
                               groups=_groups(args))
        print(format_cost(result))
        _write(args.json, result)
    else:
        with _workdir(args.workdir) as root:
            overrides = _overrides(args.overrides)
            covered = coverage(_names(args), _groups(args), ROUTES, root / "coverage", overrides=overrides, log=log)
            print(format_coverage(covered), "\n", flush=True)
            fast = speed(covered=covered, runs=args.runs, rounds=args.rounds, log=log)
            print(format_speed(fast), "\n", flush=True)
        cost = pipeline_cost(repeats=args.repeats, overrides=overrides, log=log)
        print(format_cost(cost))
        _write(args.json, {"coverage": covered, "speed": fast, "pipeline_cost": cost})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
