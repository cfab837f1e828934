"""The `deploykit` command: run a config, list passes."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deploykit import __version__
from deploykit.errors import EXIT_CONFIG, ConfigError, DeployError
from deploykit.malloc import reuse_freed_memory


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploykit", description="PyTorch -> ONNX -> NCNN, verified on ncnn.")
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the pipeline of a config and verify the result on ncnn")
    run.add_argument("configs", type=str, nargs="+", metavar="config",
                     help="YAML config(s), e.g. configs/mobile.yaml; several (or a glob) run one process each")
    run.add_argument("-j", "--jobs", type=int, default=1, help="with several configs: how many run at once")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                     help="override a config key (repeatable), e.g. --set export.opset=17")
    run.add_argument("-o", "--output", help="artifact folder (same as --set output=DIR)")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the result line")
    run.add_argument("--force", action="store_true",
                     help="re-run every stage, even those whose inputs did not change since the last run")

    verify = commands.add_parser("verify", help="re-check a run's .param/.bin on ncnn against its saved inputs "
                                                "and reference outputs (no torch needed)")
    verify.add_argument("folder", type=Path, help="the artifact folder of a `deploykit run`")
    verify.add_argument("--param", type=Path, help="another .param to check (default: the run's)")
    verify.add_argument("--bin", dest="weights", type=Path, help="another .bin to check (default: the run's)")
    verify.add_argument("--fp16", action="store_true", help="run ncnn with fp16 storage and arithmetic on")

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
    lint.add_argument("config", type=Path, help="YAML config with a model.factory")
    lint.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    listing = commands.add_parser("passes", help="list the rewrite passes, their targets and summaries")
    listing.add_argument("--plugin", dest="plugins", action="append", default=[],
                         help="also load passes from this module or .py file (repeatable)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    reuse_freed_memory()  # the weights pass through many buffers of their size (deploykit/malloc.py)
    console = Console(stderr=True)
    try:
        if args.command == "run":
            return _run(args, console)
        if args.command == "passes":
            return _passes(args)
        if args.command == "verify":
            return _verify(args, console)
        if args.command == "lint":
            return _lint(args, console)
        if args.command == "check":
            return _check(args, console)
        if args.command == "reduce":
            return _reduce(args, console)
    except DeployError as exc:
        console.print(f"[bold red]deploykit: error[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        console.print("deploykit: interrupted", highlight=False)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    return EXIT_CONFIG


def _run(args: argparse.Namespace, console: Console) -> int:
    import json
    import os

    from deploykit.artifacts import REPORT, failed_folder
    from deploykit.config import load_config
    from deploykit.pipeline import run

    paths = _expand_configs(args.configs)
    if len(paths) > 1:
        from deploykit.batch import run_many

        if args.output:
            raise ConfigError("-o/--output names one folder; with several configs each writes to its own `output:`.",
                              stage="config", hint="drop -o, or run the configs one at a time.")
        return run_many(paths, args.overrides, jobs=args.jobs, console=console, force=args.force)
    if args.output is not None and not str(args.output).strip():
        raise ConfigError("-o/--output is empty.", stage="config", hint="name the artifact folder, or leave -o out "
                                                                        "for artifacts/<config name>.")
    # As a YAML string: a folder named `null`, `yes` or `a: b` is a folder.
    overrides = list(args.overrides) + ([f"output={json.dumps(args.output)}"] if args.output is not None else [])
    config, path = load_config(paths[0], overrides)
    shown = Console(stderr=True, quiet=True) if args.quiet else console
    try:
        code, report = run(config, path, shown, force=args.force)
    except DeployError as exc:
        if not args.quiet and exc.report_file is not None:
            kept = (f" (the verified artifacts of the run before are unchanged in {config.output})"
                    if exc.report_file.parent == failed_folder(Path(os.path.realpath(config.output))) else "")
            console.print(f"report: {escape(str(exc.report_file))}{escape(kept)}", highlight=False, soft_wrap=True)
        raise
    if not args.quiet:
        from deploykit.report import summary_table

        console.print(summary_table(report))
    parity = report["ncnn"]["parity"]
    console.print(f"[bold green]verified on ncnn[/]: max abs error {parity['max_abs']:.2e} over "
                  f"{len(parity['outputs'])} output(s){escape(_release_summary(report))}; artifacts in "
                  f"{escape(str(config.output))}, report in {escape(str(Path(config.output) / REPORT))}",
                  highlight=False, soft_wrap=True)
    return code


def _release_summary(report: dict) -> str:
    """What the release stages verified besides the model at the config's shape, for the last line."""
    stages = {s["name"]: s for s in report["stages"] if s["status"] == "ok"}
    said = ""
    if "int8" in stages and stages["int8"].get("parity"):
        worst = min(out["cosine"] for out in stages["int8"]["parity"]["outputs"])
        said += f"; int8 model {stages['int8']['artifact']} verified too (cosine {worst:.5f} on held-back inputs)"
    return said


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
    table = Table(title=f"{args.folder}: ncnn vs {result.against}", title_justify="left")
    for column in ("output", "verdict", "max abs", "max rel", "cosine", "atol that passes"):
        table.add_column(column, justify="left" if column in ("output", "verdict") else "right")
    for out in result.outputs:
        table.add_row(out.name, "match" if out.passed else "DIFFER", f"{out.max_abs:.2e}", f"{out.max_rel:.2e}",
                      f"{out.cosine:.6f}", f"{out.needed_atol:.2e}")
    Console().print(table)
    if not result.passed:
        console.print("[bold red]deploykit: outputs differ[/]: " + escape("; ".join(o.describe() for o in result.failures())),
                      highlight=False, soft_wrap=True)
        return EXIT_PARITY
    return 0


def _check(args: argparse.Namespace, console: Console) -> int:
    import json

    from deploykit.onnx_io import load_onnx
    from deploykit.preflight import check_model

    findings = check_model(load_onnx(args.model, stage="check", user_file=True), args.target)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    elif findings:
        table = Table(title=f"{args.model}: {len(findings)} node(s) {args.target} would refuse or get wrong",
                      title_justify="left")
        for column in ("node", "op", "why", "fix"):
            table.add_column(column, overflow="fold")
        for finding in findings:
            table.add_row(finding.node, finding.op, finding.reason, finding.fix)
        Console().print(table)
    if not args.json:
        console.print(f"{args.model}: " + (f"{len(findings)} finding(s) for {args.target}" if findings
                                           else f"nothing {args.target} would refuse"), highlight=False)
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
            console.print(f"{args.model} converts with {args.converter}, loads on ncnn and matches onnxruntime: "
                          "nothing to reduce.", highlight=False)
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
    console.print(f"reduced {len(model.graph.node)} -> {len(result.smallest_failing.graph.node)} node(s) ({ops}) in "
                  f"{result.probes} probe(s){' (stopped at --max-probes)' if result.stopped_early else ''}; "
                  f"fails ({result.failure.kind}): {escape(result.failure.detail)}. Written: "
                  f"{args.output / 'reduced.onnx'}, reduced_inputs.npz"
                  + (", passing.onnx (the largest graph that still converts and matches)"
                     if result.largest_passing is not None else ""), highlight=False, soft_wrap=True)
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

    config, path = load_config(args.config, args.overrides)
    if config.model.factory is None:
        raise ConfigError(f"{path}: lint needs a PyTorch model (model.factory); this config starts from ONNX.",
                          stage="lint")
    inputs = make_inputs(config.inputs, config.seed)
    model = build_torch_model(config.model)
    with user_code("the model's forward()", stage="lint"):
        findings = lint_module(model, tuple(torch.from_numpy(inputs[s.name]) for s in config.inputs))
    for finding in findings:
        Console().print(str(finding), highlight=False, markup=False, soft_wrap=True)
    console.print(f"{len(findings)} finding(s) in {config.model.factory}", highlight=False)
    return 1 if findings else 0


def _passes(args: argparse.Namespace) -> int:
    from deploykit.graph_pass import describe_args, listing_order, load_plugins

    load_plugins(args.plugins)
    passes = listing_order()
    table = Table(title="rewrite passes (in `passes: auto` order)", title_justify="left")
    table.add_column("name", no_wrap=True, min_width=max(len(cls.name) for cls in passes))
    for column in ("targets", "summary", "arguments"):
        table.add_column(column)
    for cls in passes:
        table.add_row(cls.name, ", ".join(cls.targets), escape(cls.summary()), escape("\n".join(describe_args(cls))))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
