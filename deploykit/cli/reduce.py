"""`deploykit reduce`: shrink a failing ONNX model to the smallest subgraph that fails the same way."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape


def add(commands: argparse._SubParsersAction) -> None:
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
    reduce.set_defaults(handler=main)


def main(args: argparse.Namespace, console: Console) -> int:
    from deploykit.core.artifacts import OutputFolder
    from deploykit.onnx.onnx_io import load_onnx, save_onnx
    from deploykit.core.processes import signals_interrupt
    from deploykit.tools.reduce import probe, reduce_model, same_failure

    model = load_onnx(args.model, stage="reduce", user_file=True)
    inputs = None if args.inputs is None else run_inputs(args.inputs, model)
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


def run_inputs(path: Path, model: Any) -> dict:
    """The arrays of an inputs.npz, and where it is a run's, with the report.json beside it, the
    inputs that run computes on the host from its saved tables (a stage file after
    `embedding_gather` `on_host: true` takes the rows, not the ids); each input of `model` must be
    among them, in its shape."""
    import json

    from deploykit.core.artifacts import read_arrays
    from deploykit.onnx.host_lookup import run_host_inputs
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
