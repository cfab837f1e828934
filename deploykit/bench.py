"""`deploykit bench ARTIFACT_DIR`: the speed of a run's ncnn model, beside onnxruntime on the same inputs.

Each setting (ncnn at 1 thread and at every core, fp32 and fp16, light mode on; onnxruntime at 1
thread and at every core) is timed in a child process of its own, so that one setting's thread
pool and caches do not carry over to the next: a few warm-up runs, then `repeat` timed runs, of
which the median is reported (and the fastest).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.core.errors import ConfigError, StageError
from deploykit.core.malloc import tool_environment
from deploykit.core.processes import child_options
from deploykit.stages.verify import saved_run

WARMUP = 3
TIMEOUT = 600.0  # seconds for one setting's child


def bench(folder: Path, *, repeat: int = 20) -> dict[str, Any]:
    """Time the model a run shipped under every setting; the result as JSON-ready data."""
    if repeat < 1:
        raise ConfigError(f"--repeat {repeat}: time the model at least once.", stage="bench")
    run = saved_run(folder, stage="bench")
    onnx_file = _converted_onnx(run.report, folder)
    cores = os.cpu_count() or 1
    settings = [{"runtime": "ncnn", "threads": threads, "fp16": fp16, "light_mode": True}
                for fp16 in (False, True) for threads in dict.fromkeys((1, cores))]
    settings += [{"runtime": "onnxruntime", "threads": threads} for threads in dict.fromkeys((1, cores))]
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        work = Path(tmp)
        np.savez(work / "ncnn_inputs.npz", **{f"b{i}": array for i, (_, array) in enumerate(run.feeds)})  # type: ignore[arg-type]  # numpy: **arrays could name allow_pickle
        np.savez(work / "onnx_inputs.npz", **run.onnx_feeds)  # type: ignore[arg-type]  # numpy: **arrays could name allow_pickle
        rows = [{**setting, **_time_in_child(work, setting, run, onnx_file, repeat)} for setting in settings]
    for row in rows:  # ncnn against onnxruntime at the same number of threads
        ort = next(r for r in rows if r["runtime"] == "onnxruntime" and r["threads"] == row["threads"])
        row["vs_onnxruntime"] = round(row["median_ms"] / ort["median_ms"], 3) if ort["median_ms"] else None
    return {"folder": str(folder), "param": run.param.name, "onnx": onnx_file.name, "repeat": repeat,
            "cpu": platform.processor() or platform.machine(), "cores": cores,
            "versions": {k: run.report.get("versions", {}).get(k) for k in ("ncnn", "onnxruntime")},
            "note": "median of the timed runs, each setting in a child process of its own; fp16 is used only where "
                    "the CPU supports it (else ncnn runs fp32), and the device's figures will differ",
            "settings": rows}


def _converted_onnx(report: dict, folder: Path) -> Path:
    """The ONNX graph the converter was given (the last stage file before `convert`)."""
    files = []
    for stage in report["stages"]:
        if stage["name"] == "convert":
            break
        if (stage.get("artifact") or "").endswith(".onnx"):
            files.append(stage["artifact"])
    if not files or not (folder / files[-1]).is_file():
        raise ConfigError(f"{folder} has no ONNX stage file before the conversion to time onnxruntime on.",
                          stage="bench", hint="keep the run's artifact folder whole.")
    return folder / files[-1]


def _time_in_child(work: Path, setting: dict, run: Any, onnx_file: Path, repeat: int) -> dict[str, Any]:
    request = {**setting, "repeat": repeat, "param": str(run.param.absolute()), "bin": str(run.bin.absolute()),
               "onnx": str(onnx_file.absolute()), "inputs": [blob.to_dict() for blob in run.inputs],
               "outputs": [blob.blob for blob in run.outputs], "work": str(work)}
    path = work / "request.json"
    path.write_text(json.dumps(request), encoding="utf-8")
    try:
        done = subprocess.run([sys.executable, "-m", "deploykit.bench", str(path)], capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                              env=tool_environment({"OMP_NUM_THREADS": str(setting["threads"])}), **child_options())
    except subprocess.TimeoutExpired:
        raise StageError(f"timing {describe(setting)} took more than {TIMEOUT:g}s.", stage="bench",
                         hint="lower --repeat.") from None
    if done.returncode != 0:
        said = " | ".join((done.stderr + done.stdout).strip().splitlines()[-4:])
        raise StageError(f"timing {describe(setting)} failed: {said or f'exit code {done.returncode}'}", stage="bench",
                         hint="`deploykit verify` the folder first: the model must still load and run.")
    times = json.loads((work / "times.json").read_text(encoding="utf-8"))
    return {"median_ms": round(statistics.median(times) * 1e3, 3), "min_ms": round(min(times) * 1e3, 3),
            "runs": len(times)}


def describe(setting: dict) -> str:
    if setting["runtime"] == "ncnn":
        return f"ncnn, {setting['threads']} thread(s), {'fp16' if setting['fp16'] else 'fp32'}, light mode"
    return f"onnxruntime, {setting['threads']} thread(s)"


def _child(request_file: Path) -> int:
    request = json.loads(request_file.read_text(encoding="utf-8"))
    work = Path(request["work"])
    run_once = _ncnn_runner(request, work) if request["runtime"] == "ncnn" else _onnxruntime_runner(request, work)
    if run_once is None:
        return 2
    for _ in range(WARMUP):
        run_once()
    times = []
    for _ in range(request["repeat"]):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    (work / "times.json").write_text(json.dumps(times), encoding="utf-8")
    return 0


def _ncnn_runner(request: dict, work: Path) -> Any:
    import ncnn

    from deploykit.ncnn.runtime import as_ncnn_dtype, load_net

    net = load_net(request)
    if net is None:
        return None
    with np.load(work / "ncnn_inputs.npz") as arrays:
        mats = [(spec["blob"], ncnn.Mat(as_ncnn_dtype(arrays[f"b{i}"]), batch_index=spec["batch_index"]).clone())
                for i, spec in enumerate(request["inputs"])]

    def run_once() -> None:
        extractor = net.create_extractor()
        extractor.set_light_mode(bool(request["light_mode"]))
        for blob, mat in mats:
            extractor.input(blob, mat)
        for blob in request["outputs"]:
            status, _ = extractor.extract(blob)
            if status != 0:
                raise RuntimeError(f"extracting blob {blob!r} failed with status {status}")

    return run_once


def _onnxruntime_runner(request: dict, work: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = int(request["threads"])
    options.log_severity_level = 3
    session = ort.InferenceSession(request["onnx"], options, providers=["CPUExecutionProvider"])
    with np.load(work / "onnx_inputs.npz") as arrays:
        feed = {i.name: arrays[i.name] for i in session.get_inputs()}
    return lambda: session.run(None, feed)


if __name__ == "__main__":
    raise SystemExit(_child(Path(sys.argv[1])))
