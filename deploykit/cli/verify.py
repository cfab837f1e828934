"""`deploykit verify`: check a run's .param/.bin on ncnn again against its saved inputs and reference."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.core.report import make_console, print_table


def add(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser("verify", help="re-check a run's .param/.bin on ncnn against its saved inputs "
                                                "and reference outputs (no torch needed)")
    verify.add_argument("folder", type=Path, help="the artifact folder of a `deploykit run`")
    verify.add_argument("--param", type=Path, help="another .param to check (default: the run's; a relative path "
                                                   "is looked for in the artifact folder, then here)")
    verify.add_argument("--bin", dest="weights", type=Path, help="another .bin to check (default: the run's; "
                                                                 "found as --param is)")
    verify.add_argument("--fp16", action="store_true", help="run ncnn with fp16 storage and arithmetic on (judged "
                                                            "under parity.fp16)")
    verify.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    from deploykit.core.errors import EXIT_PARITY
    from deploykit.stages.verify import reverify

    result = reverify(args.folder, param=args.param, weights=args.weights, fp16=args.fp16)
    table = Table(title=escape(f"{args.folder}: ncnn vs {result.against}"), title_justify="left")
    for column in ("output", "verdict", "max abs", "max rel", "cosine", "atol that passes"):
        table.add_column(column, justify="left" if column in ("output", "verdict") else "right")
    for out in result.outputs:
        table.add_row(escape(out.name), "match" if out.passed else "DIFFER", f"{out.max_abs:.2e}", f"{out.max_rel:.2e}",
                      f"{out.cosine:.6f}", f"{out.needed_atol:.2e}")
    print_table(make_console(stderr=False), table)
    if not result.passed:
        differ = "; ".join(o.describe() for o in result.failures())
        console.print("[bold red]deploykit: outputs differ[/]: " + escape(differ),
                      highlight=False, soft_wrap=True)
        return EXIT_PARITY
    return 0
