"""`deploykit bench`: time a run's ncnn model beside onnxruntime on the same inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.core.report import make_console, print_table


def add(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="time a run's ncnn model (threads, fp32/fp16) beside onnxruntime on "
                                              "the same inputs")
    bench.add_argument("folder", type=Path, help="the artifact folder of a verified `deploykit run`")
    bench.add_argument("--repeat", type=int, default=20, help="timed runs per setting (the median is shown)")
    bench.add_argument("--json", action="store_true", help="print the timings as JSON")
    bench.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    import json

    from deploykit.bench import bench, describe

    with console.status(f"timing {escape(str(args.folder))} ({args.repeat} runs per setting) ..."):
        result = bench(args.folder, repeat=args.repeat)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    console.print(escape(f"{args.folder}: {result['param']} on ncnn, {result['onnx']} on onnxruntime, the same "
                         f"inputs; {result['cores']} core(s), median of {args.repeat} runs"), highlight=False)
    table = Table(title="deploykit bench", title_justify="left")
    for column in ("setting", "median ms", "fastest ms", "vs onnxruntime"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for row in result["settings"]:
        ratio = row["vs_onnxruntime"]
        table.add_row(escape(describe(row)), f"{row['median_ms']:.3f}", f"{row['min_ms']:.3f}",
                      "" if row["runtime"] == "onnxruntime" or ratio is None else f"{ratio:.2f}x")
    print_table(make_console(stderr=False), table)
    console.print(escape(result["note"]), highlight=False, soft_wrap=True)
    return 0
