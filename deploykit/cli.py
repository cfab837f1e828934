"""The `deploykit` command: run a config, list passes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit.errors import ConfigError, DeployError
from deploykit.malloc import reuse_freed_memory
from deploykit.report import make_console, print_table


def _model_options(command: argparse.ArgumentParser) -> None:
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


class _Versions(argparse.Action):
    """`--version`: deploykit's and every tool's version, and the onnx2ncnn binary where one is set."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions of deploykit and its tools")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from deploykit.report import tool_versions

        versions = tool_versions()
        try:
            from deploykit.converters.onnx2ncnn import Onnx2NcnnConverter

            versions["onnx2ncnn"] = str(Onnx2NcnnConverter().executable())
        except DeployError:
            versions["onnx2ncnn"] = "not configured ($ONNX2NCNN, PATH or converter.path)"
        print("\n".join(f"{name} {value}" for name, value in versions.items()))
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploykit", description="PyTorch -> ONNX -> NCNN, verified on ncnn.")
    parser.add_argument("--version", action=_Versions)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline of a config (or of an .onnx file, or a --factory) and "
                                          "verify the result on ncnn")
    run.add_argument("configs", type=str, nargs="*", metavar="config",
                     help="YAML config(s), e.g. configs/mobile.yaml (several, or a glob, run one process each); or "
                          "an .onnx file, whose inputs are taken from its graph")
    _model_options(run)
    run.add_argument("-j", "--jobs", type=int, default=1, help="with several configs: how many run at once")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config key (repeatable), e.g. --set export.opset=17")
    run.add_argument("-o", "--output", help="artifact folder (same as --set output=DIR)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the result line")
    run.add_argument("-v", "--verbose", action="store_true", help="also show what each stage ran")
    run.add_argument("--force", action="store_true",
                     help="re-run every stage, even those whose inputs did not change since the last run")

    init = commands.add_parser("init", help="write a commented config for an .onnx file or a --factory, with "
                                            "every key of the config reference")
    init.add_argument("model", nargs="?", type=Path, help="an .onnx file (or give --factory and --input)")
    _model_options(init)
    init.add_argument("-o", "--output", type=Path, default=Path("deploykit.yaml"),
                      help="the config file to write (default deploykit.yaml); an existing file is not replaced")

    verify = commands.add_parser("verify", help="re-check a run's .param/.bin on ncnn against its saved inputs "
                                                "and reference outputs (no torch needed)")
    verify.add_argument("folder", type=Path, help="the artifact folder of a `deploykit run`")
    verify.add_argument("--param", type=Path, help="another .param to check (default: the run's; a relative path "
                                                   "is looked for in the artifact folder, then here)")
    verify.add_argument("--bin", dest="weights", type=Path, help="another .bin to check (default: the run's; "
                                                                 "found as --param is)")
    verify.add_argument("--fp16", action="store_true", help="run ncnn with fp16 storage and arithmetic on (judged "
                                                            "under parity.fp16)")

    bench = commands.add_parser("bench", help="time a run's ncnn model (threads, fp32/fp16) beside onnxruntime on "
                                              "the same inputs")
    bench.add_argument("folder", type=Path, help="the artifact folder of a verified `deploykit run`")
    bench.add_argument("--repeat", type=int, default=20, help="timed runs per setting (the median is shown)")
    bench.add_argument("--json", action="store_true", help="print the timings as JSON")

    check = commands.add_parser("check", help="list the ONNX nodes a converter would refuse or get wrong, "
                                              "with the pass that fixes each")
    check.add_argument("model", type=Path, help="an .onnx file")
    check.add_argument("--target", choices=("pnnx", "onnx2ncnn"), default="pnnx", help="the converter (default pnnx)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")

    reduce = commands.add_parser("reduce", help="shrink a failing ONNX model to the smallest subgraph that fails "
                                                "the same way (for a bug report)")
    reduce.add_argument("model", type=Path, help="an .onnx file that fails to convert, load or match on ncnn")
    reduce.add_argument("-o", "--output", type=Path, default=Path("reduced"), help="folder for the results")
    reduce.add_argument("--match", help="a regular expression the failure message must keep matching")
    reduce.add_argument("--converter", choices=("pnnx", "onnx2ncnn"), default="pnnx")
    reduce.add_argument("--inputs", type=Path, help="an inputs.npz of a run to feed (default: random, seeded)")
    reduce.add_argument("--max-probes", type=int, default=400, help="stop after this many conversions")
    reduce.add_argument("--atol", type=float, default=1e-4)
    reduce.add_argument("--rtol", type=float, default=1e-3)

    lint = commands.add_parser("lint", help="find model-writing pitfalls in a config's PyTorch model "
                                            "(layers built in forward, traced control flow...)")
    lint.add_argument("config", type=Path, nargs="?", help="YAML config with a model.factory (or give --factory)")
    _model_options(lint)
    lint.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    listing = commands.add_parser("passes", help="list the rewrite passes, their targets and summaries")
    listing.add_argument("--plugin", dest="plugins", action="append", default=[],
                         help="also load passes from this module or .py file (repeatable)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    reuse_freed_memory()  # the weights pass through many buffers of their size (deploykit/malloc.py)
    console = make_console(stderr=True)
    commands = {"run": _run, "init": _init, "passes": _passes, "verify": _verify, "bench": _bench, "lint": _lint,
                "check": _check, "reduce": _reduce}
    try:
        return commands[args.command](args, console)
    except DeployError as exc:
        console.print(f"[bold red]deploykit: error[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        console.print("deploykit: interrupted", highlight=False)
        return 128 + getattr(exc, "signum", signal.SIGINT)


def _run(args: argparse.Namespace, console: Console) -> int:
    import json

    from deploykit import api
    from deploykit.artifacts import failed_folder
    from deploykit.report import before_after_table, summary_table

    if args.output is not None and not str(args.output).strip():
        raise ConfigError("-o/--output is empty.", stage="config", hint="name the artifact folder, or leave -o out "
                                                                        "for artifacts/<config name>.")
    # As a YAML string: a folder named `null`, `yes` or `a: b` is a folder.
    overrides = list(args.overrides) + ([f"output={json.dumps(args.output)}"] if args.output is not None else [])
    configless = _configless(args, overrides)
    if configless is None:
        if not args.configs:
            raise ConfigError("no config given.", stage="config",
                              hint="deploykit run configs/mobile.yaml, deploykit run model.onnx, or deploykit run "
                                   "--factory pkg.module:build --input x:float32[1,3,224,224]")
        paths = _expand_configs(args.configs)
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
    config = configless or api.load_config(paths[0], overrides)
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


def _configless(args: argparse.Namespace, overrides: list[str]) -> Optional[Any]:
    """The config of `deploykit run model.onnx` or `deploykit run --factory ...`; None for YAML configs."""
    from deploykit.config import build_config
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


def _init(args: argparse.Namespace, console: Console) -> int:
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


def _expand_configs(patterns: list[str]) -> list[Path]:
    """Config paths, with glob patterns expanded (for shells that pass them through)."""
    import glob

    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matched:
            raise ConfigError(f"no config matches {pattern!r}.", stage="config")
        paths += [Path(m) for m in matched]
    return list(dict.fromkeys(paths))


def _verify(args: argparse.Namespace, console: Console) -> int:
    from deploykit.errors import EXIT_PARITY
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


def _bench(args: argparse.Namespace, console: Console) -> int:
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


def _check(args: argparse.Namespace, console: Console) -> int:
    import json

    from deploykit.onnx_io import load_onnx
    from deploykit.preflight import check_model

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


def _reduce(args: argparse.Namespace, console: Console) -> int:
    from deploykit.artifacts import OutputFolder
    from deploykit.onnx_io import load_onnx, save_onnx
    from deploykit.processes import signals_interrupt
    from deploykit.reduce import probe, reduce_model, same_failure

    model = load_onnx(args.model, stage="reduce", user_file=True)
    inputs = None if args.inputs is None else _run_inputs(args.inputs, model)
    settings = dict(converter=args.converter, atol=args.atol, rtol=args.rtol, inputs=inputs)
    folder = OutputFolder(args.output, reads=[args.model, args.inputs], option="-o")
    with signals_interrupt(), folder.staging() as out, out.scratch() as scratch:
        first = probe(model, workdir=Path(scratch), **settings)
        if first is None:
            console.print(escape(f"{args.model} converts with {args.converter}, loads on ncnn and matches "
                                 "onnxruntime: nothing to reduce."), highlight=False)
            return 0
        console.print(f"fails ({first.kind}): {escape(first.detail)}", highlight=False, soft_wrap=True)
        result = reduce_model(model, matches=same_failure(first, args.match), first=first, workdir=Path(scratch),
                              max_probes=args.max_probes, progress=lambda text: console.print(escape(text)),
                              **settings)
        save_onnx(out, "reduced.onnx", result.smallest_failing)
        out.write_arrays("reduced_inputs.npz", result.inputs)
        if result.largest_passing is not None:
            save_onnx(out, "passing.onnx", result.largest_passing)
        folder.commit(out, verified=True)
    ops = ", ".join(node.op_type for node in result.smallest_failing.graph.node)
    said = (f"reduced {len(model.graph.node)} -> {len(result.smallest_failing.graph.node)} node(s) ({ops}) in "
            f"{result.probes} probe(s){' (stopped at --max-probes)' if result.stopped_early else ''}; "
            f"fails ({result.failure.kind}): {result.failure.detail}. Written: {args.output / 'reduced.onnx'}, "
            "reduced_inputs.npz" + (", passing.onnx (the largest graph that still converts and matches)"
                                    if result.largest_passing is not None else ""))
    console.print(escape(said), highlight=False, soft_wrap=True)
    return 0


def _run_inputs(path: Path, model: Any) -> dict:
    """The arrays of an inputs.npz, and where it is a run's, with the report.json beside it, the
    inputs that run computes on the host from its saved tables (a stage file after
    `embedding_gather` `on_host: true` takes the rows, not the ids); each input of `model` must be
    among them, in its shape."""
    import json

    from deploykit.artifacts import read_arrays
    from deploykit.host_lookup import run_host_inputs
    from deploykit.stages.export import check_inputs_fit

    inputs = read_arrays(path, stage="reduce")
    report = path.parent / "report.json"
    if report.is_file():
        try:
            stages = json.loads(report.read_text(encoding="utf-8")).get("stages", [])
        except (ValueError, OSError, AttributeError):
            stages = []  # without a readable report, the arrays alone
        inputs.update(run_host_inputs(stages, path.parent, inputs, stage="reduce"))
    check_inputs_fit(model, inputs, path, stage="reduce", exact=False,
                     hint="give the inputs.npz of the run that wrote this model (its artifact folder), or leave "
                          "--inputs out for random inputs.")
    return inputs


def _lint(args: argparse.Namespace, console: Console) -> int:
    import torch

    from deploykit.config import load_config
    from deploykit.errors import ConfigError, user_code
    from deploykit.inputs import make_inputs
    from deploykit.lint import lint_module
    from deploykit.stages.export import build_torch_model

    config = _configless(argparse.Namespace(**{**vars(args), "configs": []}), args.overrides)
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


def _passes(args: argparse.Namespace, console: Console) -> int:
    from deploykit.graph_pass import describe_args, listing_order, load_plugins

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


if __name__ == "__main__":
    sys.exit(main())
