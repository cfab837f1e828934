"""report.html: report.json as one self-contained page (no scripts, no files it loads) for people:
the stages, what each step made of the model, every parity check with its error histogram, the
passes' refusals and, for a failed run, where the outputs first went wrong."""

from __future__ import annotations

from html import escape
from typing import Any

from deploykit.core.report import before_after

REPORT_HTML = "report.html"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; } th, td { padding: .2em .7em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { padding: .7em 1em; border-radius: 6px; font-weight: 600; }
.verified { background: #e3f6e5; color: #14532d; } .failed { background: #fde8e8; color: #7f1d1d; }
.ok { color: #15803d; } .bad { color: #b91c1c; font-weight: 600; } .dim { color: #888; }
.bar { display: inline-block; height: .8em; background: #60a5fa; vertical-align: middle; }
.error { white-space: pre-wrap; background: #fff5f5; border-left: 4px solid #b91c1c; padding: .7em 1em; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
"""


def render_html(report: dict[str, Any]) -> str:
    """The page for a report (verified or failed)."""
    verified = report.get("status") == "verified"
    parts = [f"<h1>deploykit run: {escape(str(report.get('config_file') or 'made without a config file'))}</h1>",
             _verdict(report, verified)]
    if report.get("error"):
        parts.append(_failure(report))
    parts += [_stages(report), _before_after(report), _parity(report), _refusals(report), _warnings(report)]
    body = "\n".join(part for part in parts if part)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>deploykit report: "
            f"{'verified' if verified else 'failed'}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n"
            f"<p class=\"dim\">deploykit {escape(str(report.get('versions', {}).get('deploykit', '')))}, "
            f"{escape(str(report.get('created', '')))}; every figure is in report.json.</p>\n</body></html>\n")


def _verdict(report: dict, verified: bool) -> str:
    if verified:
        parity = report["ncnn"]["parity"]
        said = (f"verified on ncnn: max abs error {parity['max_abs']:.2e} over {len(parity['outputs'])} "
                f"output(s)")
    else:
        error = report.get("error") or {}
        said = f"failed at stage {error.get('stage', '?')} (exit code {report.get('exit_code')})"
    warned = len(report.get("warnings") or [])
    if warned:
        said += f"; {warned} warning(s)"
    return f"<p id=\"verdict\" class=\"verdict {'verified' if verified else 'failed'}\">{escape(said)}</p>"


def _failure(report: dict) -> str:
    error = report["error"]
    parts = ["<h2 id=\"failure\">What went wrong</h2>",
             f"<div class=\"error\">[{escape(error.get('stage') or '')}] {escape(error.get('message') or '')}"
             + (f"\nTry: {escape(error['hint'])}" if error.get("hint") else "") + "</div>"]
    failing = next((s for s in report["stages"] if s["name"] == error.get("stage")), None) or {}
    divergence = failing.get("divergence")
    if isinstance(divergence, dict) and "where" in divergence:
        rows = [("first diverging", "ncnn layer " + divergence.get("layer", "") if divergence["where"] == "ncnn"
                 else "ONNX tensor " + divergence.get("tensor", "")),
                ("ncnn layer type", divergence.get("layer_type", "")), ("ncnn blob", divergence.get("blob", "")),
                ("ONNX tensor", divergence.get("tensor", "")), ("ONNX node", f"{divergence.get('node', '')} "
                                                                             f"({divergence.get('op', '')})"),
                ("max abs error", _number(divergence.get("statistics", {}).get("max_abs"))),
                ("cosine", _number(divergence.get("statistics", {}).get("cosine"), "{:.6f}")),
                ("compared before it, matching",
                 f"{divergence.get('matched', '')} of {divergence.get('compared', '')}")]
        parts.append("<table id=\"divergence\">" + "".join(
            f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows if str(v).strip()) + "</table>")
    culprit = failing.get("culprit")
    if isinstance(culprit, dict) and culprit:
        parts.append("<table id=\"culprit\">" + "".join(
            f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in culprit.items()) + "</table>")
    return "\n".join(parts)


def _stages(report: dict) -> str:
    rows = []
    for stage in report["stages"]:
        if stage["status"] == "unchanged":
            continue
        parity = stage.get("parity")
        verdict = "" if not parity else (f"<span class=\"ok\">match</span> {parity['max_abs']:.2e}" if parity["passed"]
                                         else f"<span class=\"bad\">differ</span> {parity['max_abs']:.2e}")
        status = escape(stage["status"]) + (" (cached)" if stage.get("cached") else "")
        size = (stage.get("graph") or {}).get("nodes") or (sum(stage["layers"].values()) if stage.get("layers") else "")
        rows.append(f"<tr><td>{escape(stage['name'])}</td><td class=\"{'bad' if stage['status'] == 'failed' else ''}\">"
                    f"{status}</td><td>{escape(stage.get('artifact') or '')}</td><td class=\"n\">{size}</td>"
                    f"<td class=\"n\">{stage.get('changed', '')}</td><td>{verdict}</td>"
                    f"<td class=\"n\">{stage['seconds']:.1f}s</td></tr>")
    idle = [s["name"].removeprefix("pass:") for s in report["stages"] if s["status"] == "unchanged"]
    note = (f"<p class=\"dim\">{len(idle)} pass(es) matched nothing: {escape(', '.join(idle))}</p>" if idle else "")
    return ("<h2>Stages</h2><table id=\"stages\"><tr><th>stage</th><th>status</th><th>artifact</th>"
            "<th>nodes / layers</th><th>changed</th><th>parity max abs</th><th>time</th></tr>"
            + "".join(rows) + "</table>" + note)


def _before_after(report: dict) -> str:
    columns, groups = before_after(report)
    if not columns:
        return ""
    head = "<tr><th>op / layer</th>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr>"
    body = []
    for group in (g for g in groups if g):
        for label, cells in group:
            body.append(f"<tr><td>{escape(label)}</td>" + "".join(f"<td class=\"n\">{escape(c)}</td>" for c in cells)
                        + "</tr>")
        body.append(f"<tr><td colspan=\"{len(columns) + 1}\"></td></tr>")
    return ("<h2>What each step made of the model</h2><p class=\"dim\">ONNX ops by type, then the ncnn layers; "
            "the ncnn parameter count is the weight file's size in values.</p>"
            f"<table id=\"before-after\">{head}{''.join(body)}</table>")


def _parity(report: dict) -> str:
    sections = []
    for stage in report["stages"]:
        parity = stage.get("parity")
        if not parity:
            continue
        for out in parity["outputs"]:
            histogram = out.get("histogram") or {}
            total = sum(histogram.values()) or 1
            bars = "".join(f"<tr><td>{escape(str(bucket))}</td><td class=\"n\">{count}</td><td><span class=\"bar\" "
                           f"style=\"width:{max(1, round(300 * count / total))}px\"></span></td></tr>"
                           for bucket, count in histogram.items())
            verdict = "<span class=\"ok\">match</span>" if out["passed"] else "<span class=\"bad\">DIFFER</span>"
            sections.append(
                f"<div class=\"parity\"><h3>{escape(stage['name'])}: {escape(out['name'])} vs "
                f"{escape(parity['against'])} {verdict}</h3><p>max abs {_number(out.get('max_abs'))}, max rel "
                f"{_number(out.get('max_rel'))}, cosine {_number(out.get('cosine'), '{:.6f}')}; tolerances atol "
                f"{_number(out.get('atol'))}, rtol {_number(out.get('rtol'))} ({escape(str(out.get('metric')))})</p>"
                + (f"<table class=\"histogram\"><tr><th>abs error</th><th>elements</th><th></th></tr>{bars}</table>"
                   if bars else "") + "</div>")
    return "<h2>Parity after each stage</h2>" + "".join(sections) if sections else ""


def _refusals(report: dict) -> str:
    rows = [f"<tr><td>{escape(stage['name'].removeprefix('pass:'))}</td><td>{escape(refusal)}</td></tr>"
            for stage in report["stages"] for refusal in stage.get("refusals") or []]
    if not rows:
        return "<h2>Refusals of the passes</h2><p id=\"refusals\">No pass refused a node.</p>"
    return ("<h2>Refusals of the passes</h2><table id=\"refusals\"><tr><th>pass</th><th>node and reason</th></tr>"
            + "".join(rows) + "</table>")


def _warnings(report: dict) -> str:
    warnings = report.get("warnings") or []
    if not warnings:
        return ""
    return ("<h2>Warnings</h2><ul id=\"warnings\">" + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul>")


def _number(value: Any, form: str = "{:.2e}") -> str:
    return form.format(value) if isinstance(value, (int, float)) else ""
