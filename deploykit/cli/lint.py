"""`deploykit lint`: model-writing pitfalls in a PyTorch model."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from deploykit.cli.options import configless, model_options
from deploykit.core.report import make_console


def add(commands: argparse._SubParsersAction) -> None:
    lint = commands.add_parser("lint", help="find model-writing pitfalls in a config's PyTorch model "
                                            "(layers built in forward, traced control flow...)")
    lint.add_argument("config", type=Path, nargs="?", help="YAML config with a model.factory (or give --factory)")
    model_options(lint)
    lint.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    lint.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    import torch

    from deploykit.core.config import load_config
    from deploykit.core.errors import ConfigError, user_code
    from deploykit.core.inputs import make_inputs
    from deploykit.tools.lint import lint_module
    from deploykit.stages.export import build_torch_model

    config = configless(argparse.Namespace(**{**vars(args), "configs": []}), args.overrides)
    if config is None:
        if args.config is None:
            raise ConfigError("lint needs a config or --factory with --input.", stage="lint",
                              hint="deploykit lint configs/mobile.yaml, or deploykit lint --factory pkg.module:build "
                                   "--input x:float32[1,8]")
        config, _ = load_config(args.config, args.overrides)
    if config.model.factory is None:
        raise ConfigError(f"{args.config}: lint needs a PyTorch model (model.factory); this config starts from ONNX.",
                          stage="lint")
    inputs = make_inputs(config.inputs, config.seed)
    model = build_torch_model(config.model)
    with user_code("the model's forward()", stage="lint"):
        findings = lint_module(model, tuple(torch.from_numpy(inputs[s.name]) for s in config.inputs))
    for finding in findings:
        make_console(stderr=False).print(str(finding), highlight=False, markup=False, soft_wrap=True)
    console.print(escape(f"{len(findings)} finding(s) in {config.model.factory}"), highlight=False)
    return 1 if findings else 0
