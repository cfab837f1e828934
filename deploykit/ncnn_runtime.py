"""Loading and running an ncnn model: the one place that does it.

The model runs in a child process: a `.param` that ncnn accepts but cannot execute can crash the
runtime, and that must end as an error message, not as the death of `deploykit`. The child dies
with deploykit, even when deploykit is killed (deploykit/processes.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from deploykit.converters.base import NO_BATCH_AXIS, Blob
from deploykit.errors import StageError
from deploykit.malloc import tool_environment
from deploykit.processes import child_options

PARAM_MAGIC = "7767517"


def read_param_layers(param: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(type, name, input blobs, output blobs) for every layer of a text .param file."""
    lines = param.read_text(encoding="utf-8", errors="replace").split("\n")
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise StageError(f"{param} is not an ncnn text .param (its first line is not {PARAM_MAGIC}).",
                         stage="convert", hint="the converter's log says what it wrote instead.")
    layers = []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if len(fields) < 4:
            continue
        if not (fields[2].isdigit() and fields[3].isdigit()):
            raise StageError(f"{param} line {number} is not an ncnn layer line: its input and output counts "
                             f"({fields[2][:20]!r}, {fields[3][:20]!r}) are not numbers.", stage="convert",
                             hint="a .param edited by hand must keep `type name inputs outputs blobs... params` "
                                  "on each layer line; the converter's log says what it wrote.")
        kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        blobs = fields[4:4 + n_in + n_out]
        layers.append((kind, name, blobs[:n_in], blobs[n_in:]))
    return layers


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
        np.savez(folder / "inputs.npz", **{blob.blob: as_ncnn_dtype(array) for blob, array in feeds})
        request = {"param": str(param), "bin": str(weights), "threads": threads, "fp16": fp16, "light": light,
                   "int8": int8, "inputs": [blob.to_dict() for blob, _ in feeds], "extract": wanted}
        (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-m", "deploykit.ncnn_runtime", str(folder)],
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  env=tool_environment({"OMP_NUM_THREADS": str(threads)}), **child_options())
        except subprocess.TimeoutExpired:
            raise StageError(f"the ncnn runtime did not finish within {timeout:g}s.", stage="verify",
                             hint="check the model for a layer that loops, or raise converter.timeout.") from None
        said = " | ".join(line for line in (done.stderr + done.stdout).strip().splitlines()[-6:])
        if done.returncode < 0:
            raise StageError(f"the ncnn runtime crashed ({signal.Signals(-done.returncode).name}) running "
                             f"{param.name}: {said or 'no message'}", stage="verify",
                             hint="a layer was given a blob shape it cannot handle; compare model.ncnn.param "
                                  "with the last ONNX graph.")
        if done.returncode != 0:
            raise StageError(f"the ncnn runtime could not run {param.name}: {said}", stage="verify",
                             hint="a layer type ncnn does not know means the converter left it behind; "
                                  "`deploykit check` lists the ONNX nodes behind it.")
        with np.load(folder / "outputs.npz") as result:  # saved by index: blob names may hold "/"
            return {spec["blob"]: result[f"b{i}"] for i, spec in enumerate(wanted) if f"b{i}" in result.files}


def as_ncnn_dtype(array: np.ndarray) -> np.ndarray:
    # ncnn stores 32-bit elements; Embed reads its ids as int32.
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.int32))
    return np.ascontiguousarray(array.astype(np.float32))


def load_net(request: dict) -> "ncnn.Net | None":  # noqa: F821 (ncnn is imported in the child only)
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
    results = {}
    for index, spec in enumerate(request["extract"]):
        status, mat = extractor.extract(spec["blob"])
        if status != 0:
            if not spec["required"]:
                continue
            print(f"extracting blob {spec['blob']!r} failed with status {status}", file=sys.stderr)
            return 2
        # Without a batch index: ncnn's own shape, cells read as float32 (int32 ones reinterpreted later).
        array = mat.numpy("f") if spec["batch_index"] is None else mat.numpy(batch_index=spec["batch_index"])
        results[f"b{index}"] = np.array(array)
    np.savez(folder / "outputs.npz", **results)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker(Path(sys.argv[1])))
