"""`deploykit check`: the ONNX nodes a converter would refuse or get wrong, with the pass that fixes each."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.core.report import make_console, print_table


def add(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("check", help="list the ONNX nodes a converter would refuse or get wrong, "
                                              "with the pass that fixes each")
    check.add_argument("model", type=Path, help="an .onnx file")
    check.add_argument("--target", choices=("pnnx", "onnx2ncnn"), default="pnnx", help="the converter (default pnnx)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    import json

    from deploykit.onnx.onnx_io import load_onnx
    from deploykit.tools.preflight import check_model

    findings = check_model(load_onnx(args.model, stage="check", user_file=True), args.target)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    elif findings:
        # node names, reasons and fixes come from the graph (`cut_at: [/head/...]`): never read as markup
        table = Table(title=escape(f"{args.model}: {len(findings)} node(s) {args.target} would refuse or get wrong"),
                      title_justify="left")
        for column in ("node", "op", "why", "fix"):
            table.add_column(column, overflow="fold")
        for finding in findings:
            table.add_row(*(escape(text) for text in (finding.node, finding.op, finding.reason, finding.fix)))
        print_table(make_console(stderr=False), table)
    if not args.json:
        console.print(escape(f"{args.model}: " + (f"{len(findings)} finding(s) for {args.target}" if findings
                                                  else f"nothing {args.target} would refuse")), highlight=False)
    return 1 if findings else 0
