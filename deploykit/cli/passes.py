"""`deploykit passes`: the rewrite passes, their targets, summaries and arguments."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.core.report import make_console, print_table


def add(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("passes", help="list the rewrite passes, their targets and summaries")
    listing.add_argument("--plugin", dest="plugins", action="append", default=[],
                         help="also load passes from this module or .py file (repeatable)")
    listing.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    from deploykit.onnx.graph_pass import describe_args, listing_order, load_plugins

    load_plugins(args.plugins)
    passes = listing_order()
    table = Table(title="rewrite passes (in `passes: auto` order)", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max(len(cls.name) for cls in passes))
    for column in ("targets", "summary", "arguments"):
        table.add_column(column)
    for cls in passes:
        table.add_row(escape(cls.name), ", ".join(cls.targets), escape(cls.summary()),
                      escape("\n".join(describe_args(cls))))
    print_table(make_console(stderr=False), table)
    return 0
