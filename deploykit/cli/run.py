"""`deploykit run`: the pipeline of one config (or an .onnx file, or a --factory), or of several configs at once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from deploykit.cli.options import configless, model_options
from deploykit.core.errors import ConfigError, DeployError
from deploykit.core.report import make_console, print_table


def add(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run the pipeline of a config (or of an .onnx file, or a --factory) and "
                                          "verify the result on ncnn")
    run.add_argument("configs", type=str, nargs="*", metavar="config",
                     help="YAML config(s), e.g. configs/mobile.yaml (several, or a glob, run one process each); or "
                          "an .onnx file, whose inputs are taken from its graph")
    model_options(run)
    run.add_argument("-j", "--jobs", type=int, default=1, help="with several configs: how many run at once")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config key (repeatable), e.g. --set export.opset=17")
    run.add_argument("-o", "--output", help="artifact folder (same as --set output=DIR)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the result line")
    run.add_argument("-v", "--verbose", action="store_true", help="also show what each stage ran")
    run.add_argument("--force", action="store_true",
                     help="re-run every stage, even those whose inputs did not change since the last run")
    run.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    import json

    from deploykit import api
    from deploykit.core.artifacts import failed_folder
    from deploykit.core.report import before_after_table, summary_table

    if args.output is not None and not str(args.output).strip():
        raise ConfigError("-o/--output is empty.", stage="config", hint="name the artifact folder, or leave -o out "
                                                                        "for artifacts/<config name>.")
    # As a YAML string: a folder named `null`, `yes` or `a: b` is a folder.
    overrides = list(args.overrides) + ([f"output={json.dumps(args.output)}"] if args.output is not None else [])
    without_file = configless(args, overrides)
    if without_file is None:
        if not args.configs:
            raise ConfigError("no config given.", stage="config",
                              hint="deploykit run configs/mobile.yaml, deploykit run model.onnx, or deploykit run "
                                   "--factory pkg.module:build --input x:float32[1,3,224,224]")
        paths = expand_configs(args.configs)
        onnx_files = [str(p) for p in paths if p.suffix == ".onnx"]
        if onnx_files:
            raise ConfigError(f"{', '.join(onnx_files)}: an .onnx file runs on its own, not among configs.",
                              stage="config", hint=f"deploykit run {onnx_files[0]}, then the configs.")
        if len(paths) > 1:
            from deploykit.batch import run_many

            if args.output:
                raise ConfigError("-o/--output names one folder; with several configs each writes to its own "
                                  "`output:`.", stage="config", hint="drop -o, or run the configs one at a time.")
            return run_many(paths, args.overrides, jobs=args.jobs, console=console, force=args.force,
                            quiet=args.quiet)
    config = without_file or api.load_config(paths[0], overrides)
    shown = make_console(stderr=True, quiet=True) if args.quiet else console
    try:
        result = api.run(config, console=shown, force=args.force, verbose=args.verbose)
    except DeployError as exc:
        if not args.quiet and exc.report_file is not None:
            kept = (f" (the verified artifacts of the run before are unchanged in {config.output})"
                    if exc.report_file.parent == failed_folder(Path(os.path.realpath(config.output_folder))) else "")
            console.print(f"report: {escape(str(exc.report_file))}{escape(kept)}", highlight=False, soft_wrap=True)
        raise
    if not args.quiet:
        print_table(console, summary_table(result.report))
        print_table(console, before_after_table(result.report))
    head, _, rest = result.verdict.partition(":")
    make_console(stderr=False).print(f"[bold green]{escape(head)}[/]:{escape(rest)}", highlight=False, soft_wrap=True)
    return 0


def expand_configs(patterns: list[str]) -> list[Path]:
    """Config paths, with glob patterns expanded (for shells that pass them through)."""
    import glob

    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise ConfigError(f"no config matches {pattern!r}.", stage="config")
        paths += [Path(m) for m in matched]
    return list(dict.fromkeys(paths))
