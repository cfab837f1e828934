"""Loading and running an ncnn model: the one place that does it.

The model runs in a child process: a `.param` that ncnn accepts but cannot execute can crash the
runtime, and that must end as an error message, not as the death of `deploykit`. The child dies
with deploykit, even when deploykit is killed (deploykit/core/processes.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from deploykit.core.errors import StageError
from deploykit.core.malloc import tool_environment
from deploykit.core.processes import child_options
from deploykit.ncnn.converters.base import NO_BATCH_AXIS, Blob
from deploykit.ncnn.param import NcnnParam

if TYPE_CHECKING:
    import ncnn  # imported in the child only

PROGRESS = "progress.txt"  # what a replaying worker has computed so far


def read_param_layers(param: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(type, name, input blobs, output blobs) for every layer of a text .param file."""
    return [(layer.kind, layer.name, layer.bottoms, layer.tops) for layer in NcnnParam.read(param).layers]


def unknown_layers(param: Path) -> list[tuple[str, str]]:
    """Layers the ncnn runtime cannot create, as (type, name): types it has never heard of, and
    types it lists but was built without (ArgMax has an index, yet no implementation)."""
    import ncnn

    creatable: dict[str, bool] = {}
    found = []
    for kind, name, _, _ in read_param_layers(param):
        if kind not in creatable:
            creatable[kind] = ncnn.create_layer(kind) is not None
        if not creatable[kind]:
            found.append((kind, name))
    return found


def run_ncnn(param: Path, weights: Path, feeds: list[tuple[Blob, np.ndarray]], outputs: list[Blob],
             *, timeout: float = 300.0, threads: int = 1, fp16: bool = False,
             int8: bool = False) -> dict[str, np.ndarray]:
    """Run once, with fp16 and bf16 off unless `fp16`, and int8 inference on when `int8` (for a
    model ncnn2int8 wrote); returns arrays by ONNX output name, in the ONNX layout (the batch axis
    ncnn dropped is put back)."""
    wanted = [{"blob": b.blob, "batch_index": b.batch_index, "required": True} for b in outputs]
    values = _run_worker(param, weights, feeds, wanted, timeout=timeout, threads=threads, fp16=fp16, light=True,
                         int8=int8)
    return {blob.onnx_name: values[blob.blob] for blob in outputs}


def extract_blobs(param: Path, weights: Path, feeds: list[tuple[Blob, np.ndarray]], blobs: list[str],
                  *, timeout: float = 300.0) -> dict[str, np.ndarray]:
    """Every named blob's values as float32 arrays of ncnn's own shape (fp16 and bf16 off); blobs
    ncnn cannot produce are left out. Intermediate blobs are kept rather than recomputed."""
    wanted = [{"blob": blob, "batch_index": None, "required": False} for blob in blobs]
    return _run_worker(param, weights, feeds, wanted, timeout=timeout, threads=1, fp16=False, light=False)


def _run_worker(param: Path, weights: Path, feeds: list[tuple[Blob, np.ndarray]], wanted: list[dict], *,
                timeout: float, threads: int, fp16: bool, light: bool, int8: bool = False) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="deploykit-ncnn-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "inputs.npz", **{blob.blob: as_ncnn_dtype(array) for blob, array in feeds})  # type: ignore[arg-type]  # numpy: **arrays could name allow_pickle
        request = {"param": str(param), "bin": str(weights), "threads": threads, "fp16": fp16, "light": light,
                   "int8": int8, "inputs": [blob.to_dict() for blob, _ in feeds], "extract": wanted}
        done = _start_worker(folder, request, timeout)
        said = " | ".join(line for line in (done.stderr + done.stdout).strip().splitlines()[-6:])
        if done.returncode < 0:
            crash = signal.Signals(-done.returncode).name
            site = crash_site(folder, request, timeout)
            raise StageError(f"the ncnn runtime crashed ({crash}) running {param.name}"
                             + (f" in {site.describe()}" if site else "") + (f": {said}" if said else "."),
                             stage="verify", hint=_crash_hint(crash, site, param))
        if done.returncode != 0:
            raise StageError(f"the ncnn runtime could not run {param.name}: {said}", stage="verify",
                             hint="a layer type ncnn does not know means the converter left it behind; "
                                  "`deploykit check` lists the ONNX nodes behind it.")
        return read_outputs(folder, wanted)


# The extracted blobs, one after the other as raw bytes, and where each is: an .npz of every blob of
# DeiT-tiny (406 MB) took 1.1 s to write and 1.1 s to read, its CRCs included.
OUTPUTS, OUTPUTS_INDEX = "outputs.bin", "outputs.json"


def write_outputs(folder: Path, arrays: dict[int, np.ndarray]) -> None:
    index, offset = [], 0
    with open(folder / OUTPUTS, "wb") as out:
        for position, array in arrays.items():
            array = np.ascontiguousarray(array)
            out.write(array.data.cast("B") if array.size else b"")
            index.append({"at": position, "dtype": array.dtype.str, "shape": list(array.shape), "offset": offset})
            offset += array.nbytes
    (folder / OUTPUTS_INDEX).write_text(json.dumps(index), encoding="utf-8")


def read_outputs(folder: Path, wanted: list[dict]) -> dict[str, np.ndarray]:
    """What write_outputs wrote, by blob name (saved by position in `wanted`: names may hold "/")."""
    data = np.fromfile(folder / OUTPUTS, dtype=np.uint8)
    found = {}
    for entry in json.loads((folder / OUTPUTS_INDEX).read_text(encoding="utf-8")):
        dtype = np.dtype(entry["dtype"])
        count = int(np.prod(entry["shape"], dtype=np.int64))
        raw = data[entry["offset"]:entry["offset"] + count * dtype.itemsize]
        found[wanted[entry["at"]]["blob"]] = raw.view(dtype).reshape(entry["shape"])
    return found


def _start_worker(folder: Path, request: dict, timeout: float) -> subprocess.CompletedProcess:
    (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
    try:
        return subprocess.run([sys.executable, "-m", "deploykit.ncnn.runtime", str(folder)],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=tool_environment({"OMP_NUM_THREADS": str(request["threads"])}), **child_options())
    except subprocess.TimeoutExpired:
        raise StageError(f"the ncnn runtime did not finish within {timeout:g}s.", stage="verify",
                         hint="check the model for a layer that loops, or raise converter.timeout.") from None


# ---------------------------------------------------------------------------------------------
# Where it crashed


@dataclass
class CrashSite:
    """The layer the ncnn runtime died in, and the shapes its input blobs had then."""

    index: int                               # in .param order, from 0
    layers: int                              # how many the .param has
    kind: str
    name: str
    inputs: dict[str, list[list[int]]]       # blob -> its [w, h, d, c] each time it was computed, the last as fed

    def describe(self) -> str:
        shapes = []
        for blob, seen in self.inputs.items():
            if not seen:
                continue
            shapes.append(f"{blob!r} {_shown(seen[-1])}")
            earlier = next((shape for shape in seen if 0 not in shape), None)
            if 0 in seen[-1] and earlier is not None:
                shapes[-1] += (f" (it was {_shown(earlier)} when an earlier output needed it: light mode had "
                               f"released it)")
        fed = f", fed {'; '.join(shapes)}" if shapes else ""
        return f"layer {self.kind} {self.name!r} (layer {self.index + 1} of {self.layers} in the .param){fed}"


def _shown(shape: list[int]) -> str:
    return "empty (0 elements)" if 0 in shape else "w={} h={} d={} c={}".format(*shape)


def crash_site(folder: Path, request: dict, timeout: float) -> Optional[CrashSite]:
    """Run the request again in a child that, before each blob it was asked for, computes that blob's
    layers one at a time in .param order, writing down each layer it starts and each shape it got: the
    layer started and never finished is the one the runtime died in. None when that run did not crash."""
    progress = folder / PROGRESS
    progress.unlink(missing_ok=True)
    try:
        done = _start_worker(folder, {**request, "replay": True}, timeout)
    except StageError:
        return None
    if done.returncode >= 0 or not progress.is_file():
        return None
    started, shapes = None, defaultdict(list)
    for line in progress.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if fields[0] == "start" and len(fields) == 2:
            started = int(fields[1])
        elif fields[0] == "shape" and len(fields) == 6:
            shapes[fields[1]].append([int(v) for v in fields[2:]])
            started = None
    layers = read_param_layers(Path(request["param"]))
    if started is None or started >= len(layers):
        return None
    kind, name, inputs, _ = layers[started]
    return CrashSite(started, len(layers), kind, name, {blob: shapes.get(blob, []) for blob in inputs})


def _crash_hint(crash: str, site: Optional[CrashSite], param: Path) -> str:
    if site is None:
        where = (f"a run that computed the layers one at a time did not crash, so the layer is not known; compare "
                 f"{param.name} with the last ONNX graph")
    else:
        where = f"compare the line of {site.name!r} in {param.name} with the ONNX node it comes from"
    cause = ("an integer division by zero: usually an empty input blob, or a size of 0 along an axis the layer's "
             "parameters name (ncnn drops the batch axis, so an ONNX axis can point one axis too far)"
             if crash == "SIGFPE" else
             "a read or write out of bounds: the layer's parameters do not fit the shape of its input blob")
    return (f"{crash} is {cause}; {where}, and shrink the model to a small case for a bug report with "
            f"`deploykit reduce` on the last .onnx file.")


def as_ncnn_dtype(array: np.ndarray) -> np.ndarray:
    # ncnn stores 32-bit elements; Embed reads its ids as int32.
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.int32))
    return np.ascontiguousarray(array.astype(np.float32))


def load_net(request: dict) -> ncnn.Net | None:
    """An ncnn.Net with the options of a request (fp16 and bf16 off unless `fp16`, `threads`,
    int8 inference where asked), the model loaded; None, said on stderr, when ncnn cannot load it."""
    import ncnn

    net = ncnn.Net()
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage",
                 "use_bf16_packed"):
        if hasattr(net.opt, flag):
            setattr(net.opt, flag, bool(request["fp16"]) and "fp16" in flag)
    net.opt.num_threads = int(request["threads"])
    if request.get("int8"):
        net.opt.use_int8_inference = True
    if net.load_param(request["param"]) != 0:
        print(f"ncnn could not load {Path(request['param']).name}", file=sys.stderr)
        return None
    if net.load_model(request["bin"]) != 0:
        print(f"ncnn could not load the weights {Path(request['bin']).name}", file=sys.stderr)
        return None
    return net


def _worker(folder: Path) -> int:
    import ncnn

    request = json.loads((folder / "request.json").read_text(encoding="utf-8"))
    net = load_net(request)
    if net is None:
        return 2
    known_blobs = set(net.input_names()) | set(net.output_names())
    extractor = net.create_extractor()
    extractor.set_light_mode(bool(request["light"]))  # off: keep every intermediate blob
    with np.load(folder / "inputs.npz") as arrays:
        for spec in request["inputs"]:
            array = arrays[spec["blob"]]
            if spec["batch_index"] != NO_BATCH_AXIS and (array.ndim == 0 or array.shape[0] != 1):
                print(f"input {spec['onnx_name']!r} has batch size {array.shape[0] if array.ndim else 0}; "
                      f"the ncnn model takes one sample at a time", file=sys.stderr)
                return 2
            mat = ncnn.Mat(array, batch_index=spec["batch_index"]).clone()
            if extractor.input(spec["blob"], mat) != 0:
                print(f"the model has no input blob {spec['blob']!r} (it has {sorted(known_blobs)})", file=sys.stderr)
                return 2
    results: dict[int, np.ndarray] = {}
    replay = _Replay(Path(request["param"]), folder / PROGRESS) if request.get("replay") else None
    for index, spec in enumerate(request["extract"]):
        if replay is not None:
            replay.up_to(extractor, spec["blob"])
        status, mat = extractor.extract(spec["blob"])
        if status != 0:
            if not spec["required"]:
                continue
            print(f"extracting blob {spec['blob']!r} failed with status {status}", file=sys.stderr)
            return 2
        # Without a batch index: ncnn's own shape, cells read as float32 (int32 ones reinterpreted later).
        array = mat.numpy("f") if spec["batch_index"] is None else mat.numpy(batch_index=spec["batch_index"])
        results[index] = np.array(array)
    write_outputs(folder, results)
    return 0


class _Replay:
    """In the worker: compute a blob's layers one at a time, in .param order, and note each layer
    started and each shape computed in a file that outlives a crash."""

    def __init__(self, param: Path, progress: Path) -> None:
        self.layers = read_param_layers(param)
        self.producer = {blob: index for index, (_, _, _, outs) in enumerate(self.layers) for blob in outs}
        self.fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def up_to(self, extractor: Any, blob: str) -> None:
        for index in self._layers_of(blob):
            os.write(self.fd, f"start\t{index}\n".encode())
            for out in self.layers[index][3]:
                _, mat = extractor.extract(out)
                os.write(self.fd, f"shape\t{out}\t{mat.w}\t{mat.h}\t{mat.d}\t{mat.c}\n".encode())
                del mat  # a Mat held here would change what ncnn does in place

    def _layers_of(self, blob: str) -> list[int]:
        found: set[int] = set()
        stack = [self.producer[blob]] if blob in self.producer else []
        while stack:
            index = stack.pop()
            if index not in found:
                found.add(index)
                stack += [self.producer[b] for b in self.layers[index][2] if b in self.producer]
        return sorted(found)


if __name__ == "__main__":
    raise SystemExit(_worker(Path(sys.argv[1])))
