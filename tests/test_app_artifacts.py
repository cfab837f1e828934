"""What a verified run gives an app engineer: deploykit.json with goldens, `deploykit bench`, and
report.html, rendered by a real headless Chromium. One run of the shipped encoder, made through
deploykit.load_config and deploykit.run."""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import deploykit
from conftest import REPO
from deploykit.cli import main
from deploykit.core.report_html import render_html

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


@pytest.fixture(scope="module")
def mobile_run(tmp_path_factory) -> deploykit.Result:
    out = tmp_path_factory.mktemp("app") / "mobile"
    config = deploykit.load_config(REPO / "configs" / "mobile.yaml", {"output": str(out)})
    return deploykit.run(config, quiet=True)


@pytest.mark.slow
def test_load_config_and_run_give_the_verified_result(mobile_run):
    assert mobile_run.verified and mobile_run.parity["max_abs"] < 1e-4
    assert (mobile_run.param.name, mobile_run.bin.name) == ("model.ncnn.param", "model.ncnn.bin")
    assert mobile_run.param.is_file() and mobile_run.manifest.is_file()
    assert mobile_run.report == json.loads(mobile_run.report_file.read_text())
    assert mobile_run.verdict.startswith(f"verified on ncnn: max abs error {mobile_run.parity['max_abs']:.2e} over 2 "
                                         "output(s); artifacts in ")
    assert mobile_run.warnings == [] and "warning" not in mobile_run.verdict


@pytest.mark.slow
def test_the_goldens_are_raw_little_endian_values_of_what_ncnn_was_fed_and_gave(mobile_run):
    folder = mobile_run.output
    manifest = json.loads(mobile_run.manifest.read_text())
    ids = np.load(folder / "inputs.npz")["ids"]
    [entry] = manifest["inputs"]
    assert entry["golden"]["shape"] == [16] and entry["golden"]["dtype"] == "int32"
    raw = (folder / entry["golden"]["file"]).read_bytes()
    assert raw == struct.pack("<16i", *ids.reshape(-1).tolist())  # ids as the int32 ncnn's Embed reads
    reference = np.load(folder / "reference.npz")
    for entry in manifest["outputs"]:
        values = np.frombuffer((folder / entry["golden"]["file"]).read_bytes(), dtype="<f4")
        np.testing.assert_array_equal(values.reshape(entry["golden"]["shape"]),
                                      reference[entry["onnx_name"]].reshape(entry["mat_shape"]))
    assert [e["golden"]["shape"] for e in manifest["outputs"]] == [[16, 64], [4, 16, 16]]


@pytest.mark.slow
def test_the_manifest_says_how_the_verdict_was_reached(mobile_run):
    manifest = json.loads(mobile_run.manifest.read_text())
    verified = manifest["verified"]
    assert verified["ncnn_options"] == {"use_fp16_storage": False, "use_fp16_arithmetic": False,
                                        "use_fp16_packed": False, "use_bf16_storage": False, "num_threads": 1,
                                        "light_mode": True}
    assert (verified["atol"], verified["rtol"], verified["metric"]) == (1e-4, 1e-3, "allclose")
    assert set(verified["outputs"]) == {"hidden", "attention"} and "host CPU" in verified["where"]
    # the ids: the range they were verified in and the padding id the model compares them with
    assert manifest["inputs"][0]["preprocess"] == {"id_range": [0, 1000], "pad_id": 0}
    assert manifest["host_tail"] is None


@pytest.mark.slow
def test_bench_times_every_setting_beside_onnxruntime(mobile_run, capsys, monkeypatch):
    assert main(["bench", str(mobile_run.output), "--repeat", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    cores = os.cpu_count()
    expected = [("ncnn", t, fp16) for fp16 in (False, True) for t in dict.fromkeys((1, cores))]
    expected += [("onnxruntime", t, None) for t in dict.fromkeys((1, cores))]
    assert [(r["runtime"], r["threads"], r.get("fp16")) for r in result["settings"]] == expected
    assert (result["param"], result["onnx"]) == ("model.ncnn.param", "02_id_mask_lookup.onnx")
    for row in result["settings"]:
        assert row["runs"] == 2 and 0 < row["min_ms"] <= row["median_ms"]
        if row["runtime"] == "ncnn":
            assert row["light_mode"] is True
            ort = next(r for r in result["settings"] if r["runtime"] == "onnxruntime" and r["threads"] == row["threads"])
            assert row["vs_onnxruntime"] == round(row["median_ms"] / ort["median_ms"], 3)
    import deploykit.bench

    monkeypatch.setattr(deploykit.bench, "bench", lambda folder, repeat: result)  # the same timings, as a table
    assert main(["bench", str(mobile_run.output), "--repeat", "2"]) == 0
    table = " ".join(capsys.readouterr().out.split())
    assert "ncnn, 1 thread(s), fp32, light mode" in table and "onnxruntime, 1 thread(s)" in table


def test_bench_of_a_folder_without_a_run_is_a_config_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 2
    assert "has no report.json" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "nowhere")]) == 2
    assert f"[bench] {tmp_path / 'nowhere'} does not exist or is not a folder." in capsys.readouterr().err


# --- report.html in a real browser -----------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "Chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must render report.html")
        pytest.skip(reason)
    return found


def render(chromium: str, page: Path, tmp_path: Path) -> tuple[str, list[list[tuple[int, int, int]]]]:
    """The DOM Chromium built from the page, and a screenshot of it as rows of RGB pixels."""
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    # the whole page at a quarter of its size: solid areas keep their exact colours
    done = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,8000",
                           "--force-device-scale-factor=0.25", page.as_uri()],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return dom.stdout, read_png(shot)


def read_png(path: Path) -> list[list[tuple[int, int, int]]]:
    """The pixels of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks += body
        position += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0
    size = 3 if colour == 2 else 4
    raw, stride, rows, previous = zlib.decompress(chunks), width * size, [], bytearray(width * size)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append([tuple(line[x * size:x * size + 3]) for x in range(width)])
        previous = line
    return rows


def count(pixels: list[list[tuple[int, int, int]]], colour: tuple[int, int, int]) -> int:
    return sum(row.count(colour) for row in pixels)


@pytest.mark.slow
def test_report_html_of_a_verified_run_renders_its_stages_ops_and_histograms(mobile_run, chromium, tmp_path):
    page = mobile_run.output / "report.html"
    assert "report.html" in mobile_run.report["artifacts"]
    dom, pixels = render(chromium, page, tmp_path)
    text = " ".join(dom.split())
    assert '<p id="verdict" class="verdict verified">verified on ncnn: max abs error' in text
    stages = [s for s in mobile_run.report["stages"] if s["status"] != "unchanged"]
    assert dom.count("<tr><td>") >= len(stages)
    for stage in stages:
        assert f"<td>{stage['name']}</td>" in dom
    assert "<td>nodes / layers</td><td class=\"n\">126</td><td class=\"n\">95</td><td class=\"n\">95</td>" \
           "<td class=\"n\">65</td>" in text
    assert text.count('<table class="histogram">') == 8  # 2 outputs x (export, simplify, pass, verify)
    idle = [s for s in mobile_run.report["stages"] if s["status"] == "unchanged"]
    assert len(idle) > 10 and f"{len(idle)} pass(es) matched nothing" in text and "No pass refused a node." in text
    assert "<script" not in dom and "http" not in (page.read_text().split("<body>")[0])  # nothing to load
    # rendered: the green verdict banner across the page, and the histograms' bars
    assert count(pixels, (0xe3, 0xf6, 0xe5)) > 5_000
    assert count(pixels, (0x60, 0xa5, 0xfa)) > 1_000
    assert count(pixels, (0xfd, 0xe8, 0xe8)) == 0


@pytest.mark.slow
def test_report_html_of_a_failed_run_shows_the_error_and_the_first_diverging_layer(mobile_run, chromium, tmp_path):
    report = copy.deepcopy(mobile_run.report)
    verify = next(s for s in report["stages"] if s["name"] == "verify")
    verify["status"], verify["parity"]["passed"] = "failed", False
    verify["parity"]["outputs"][0]["passed"] = False
    verify["divergence"] = {"where": "ncnn", "tensor": "/layers.0/attention/Softmax_output_0",
                            "node": "/layers.0/attention/Softmax", "op": "Softmax",
                            "statistics": {"max_abs": 0.173, "cosine": 0.8227}, "compared": 25, "matched": 24,
                            "layer": "softmax_12 <script>", "layer_type": "Softmax", "blob": "23"}
    report.update(status="failed", exit_code=4, error={"stage": "verify", "message": "outputs differ from the export "
                                                       "(on ncnn) beyond tolerance", "hint": "see report.json"})
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    dom, pixels = render(chromium, page, tmp_path)
    text = " ".join(dom.split())
    assert '<p id="verdict" class="verdict failed">failed at stage verify (exit code 4)</p>' in text
    assert "[verify] outputs differ from the export (on ncnn) beyond tolerance" in text
    assert "<th>first diverging</th><td>ncnn layer softmax_12 &lt;script&gt;</td>" in text  # escaped, not run
    assert "<th>ONNX node</th><td>/layers.0/attention/Softmax (Softmax)</td>" in text
    assert count(pixels, (0xfd, 0xe8, 0xe8)) > 5_000 and count(pixels, (0xe3, 0xf6, 0xe5)) == 0
