"""The `deploykit` command. Each subcommand is a module of this package with `add`, which declares
its options, and `main(args, console)`, which runs it; COMMANDS is their order in `--help`."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Sequence
from typing import Any, Optional

from rich.markup import escape

from deploykit.cli import bench, check, init, lint, passes, reduce, run, verify
from deploykit.core.errors import DeployError
from deploykit.core.malloc import reuse_freed_memory
from deploykit.core.report import make_console

COMMANDS = (run, init, verify, bench, check, reduce, lint, passes)


class _Versions(argparse.Action):
    """`--version`: deploykit's and every tool's version, and the onnx2ncnn binary where one is set."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions of deploykit and its tools")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from deploykit.core.report import tool_versions

        versions = tool_versions()
        try:
            from deploykit.ncnn.converters.onnx2ncnn import Onnx2NcnnConverter

            versions["onnx2ncnn"] = str(Onnx2NcnnConverter().executable())
        except DeployError:
            versions["onnx2ncnn"] = "not configured ($ONNX2NCNN, PATH or converter.path)"
        print("\n".join(f"{name} {value}" for name, value in versions.items()))
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploykit", description="PyTorch -> ONNX -> NCNN, verified on ncnn.")
    parser.add_argument("--version", action=_Versions)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    reuse_freed_memory()  # the weights pass through many buffers of their size (deploykit/core/malloc.py)
    console = make_console(stderr=True)
    try:
        return args.handler(args, console)
    except DeployError as exc:
        console.print(f"[bold red]deploykit: error[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        console.print("deploykit: interrupted", highlight=False)
        return 128 + getattr(exc, "signum", signal.SIGINT)
