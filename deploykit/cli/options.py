"""Option groups and config handling that several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from deploykit.core.errors import ConfigError


def model_options(command: argparse.ArgumentParser) -> None:
    """The options that say which model to run without a config file (run, lint, init)."""
    group = command.add_argument_group("without a config file")
    group.add_argument("--factory", metavar="PKG.MODULE:CALLABLE",
                       help="a callable returning the torch.nn.Module (found in the working directory, then on "
                            "sys.path), instead of a config")
    group.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:DTYPE[SHAPE]",
                       help="an input of the model, in forward() order (repeatable), e.g. ids:int64[1,16]; for an "
                            ".onnx file, replaces what its graph says of that input")
    group.add_argument("--input-range", dest="input_ranges", action="append", default=[], metavar="NAME=LOW:HIGH",
                       help="generated values of an input in [LOW, HIGH), e.g. ids=0:1000")


def configless(args: argparse.Namespace, overrides: list[str]) -> Optional[Any]:
    """The config of `deploykit run model.onnx` or `deploykit run --factory ...`; None for YAML configs."""
    from deploykit.core.config import build_config
    from deploykit.configless import configless_raw

    onnx_file = (Path(args.configs[0]) if len(getattr(args, "configs", [])) == 1
                 and args.configs[0].endswith(".onnx") else None)
    if onnx_file is None and not args.factory:
        if args.inputs or args.input_ranges:
            raise ConfigError("--input and --input-range describe the inputs of an .onnx file or a --factory; a "
                              "config lists them under `inputs:`.", stage="config",
                              hint="use --set inputs.0.shape=[...] with a config.")
        return None
    if onnx_file is not None and args.factory:
        raise ConfigError(f"both {onnx_file} and --factory {args.factory} given.", stage="config",
                          hint="run one model at a time.")
    if getattr(args, "configs", None) and len(args.configs) > (1 if onnx_file else 0):
        raise ConfigError(f"--factory runs one model; {', '.join(args.configs)} given besides it.", stage="config",
                          hint="drop the config, or drop --factory.")
    raw, name = configless_raw(onnx_file=onnx_file, factory=args.factory, inputs=args.inputs, ranges=args.input_ranges)
    return build_config(raw, overrides, source=str(onnx_file or f"--factory {args.factory}"), name=name)
