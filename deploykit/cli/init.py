"""`deploykit init`: write a commented config for an .onnx file or a --factory."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from deploykit.cli.options import model_options
from deploykit.core.errors import ConfigError


def add(commands: argparse._SubParsersAction) -> None:
    init = commands.add_parser("init", help="write a commented config for an .onnx file or a --factory, with "
                                            "every key of the config reference")
    init.add_argument("model", nargs="?", type=Path, help="an .onnx file (or give --factory and --input)")
    model_options(init)
    init.add_argument("-o", "--output", type=Path, default=Path("deploykit.yaml"),
                      help="the config file to write (default deploykit.yaml); an existing file is not replaced")
    init.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    from deploykit.configless import configless_raw, init_yaml

    if args.model is None and not args.factory:
        raise ConfigError("init needs an .onnx file or --factory with --input.", stage="config",
                          hint="deploykit init model.onnx, or deploykit init --factory pkg.module:build --input "
                               "ids:int64[1,16]")
    if args.model is not None and args.model.suffix != ".onnx":
        raise ConfigError(f"{args.model} is not an .onnx file.", stage="config",
                          hint="give an .onnx file, or --factory pkg.module:build with --input.")
    if args.output.exists():
        raise ConfigError(f"{args.output} exists; init does not replace a file.", stage="config",
                          hint="give another name with -o, or remove it first.")
    raw, _ = configless_raw(onnx_file=args.model, factory=args.factory, inputs=args.inputs, ranges=args.input_ranges)
    text = init_yaml(raw, args.output.absolute().parent)
    try:
        with open(args.output, "x", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.output}: {exc.strerror or exc}.", stage="config") from None
    console.print(f"wrote {escape(str(args.output))}; run it with: deploykit run {escape(str(args.output))}",
                  highlight=False, soft_wrap=True)
    return 0
