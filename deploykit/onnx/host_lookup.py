"""Table lookups the app does on the host instead of the ncnn model.

A pass that moves `Gather(table, ids)` out of the graph (`embedding_gather` with `on_host: true`)
makes the looked-up rows a new graph input and lists a `HostLookup` for each in its
`host_lookups`. The run writes each table as `host_table_<k>.npy`, records the recipe in the
stage's record (`host_lookups` in report.json, copied to deploykit.json), and computes the new
input from the config's ids with `HostLookup.rows`, exactly as the app will: for every check after
the pass, for a stage restored from the last run, and for `deploykit verify`.

A lookup with `in_model` set is one the ncnn model does after all: the ONNX stages are checked
the same way, and after the conversion the `embed` stage (deploykit/stages/embed.py) writes it
into the .param/.bin as ncnn's Embed layer reading the ids; the app never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from collections.abc import Iterable, Mapping

import numpy as np

from deploykit.core.errors import ConfigError

if TYPE_CHECKING:
    from deploykit.onnx.graph_pass import GraphPass
    from deploykit.stages.context import RunContext

RECIPE = "table[ids].reshape(onnx_shape)"
TABLE_FILE = "host_table_{index}.npy"


@dataclass
class HostLookup:
    """One graph input whose values are rows of a constant table, looked up by an integer input."""

    input: str  # the graph input that now carries the rows
    ids: str  # the integer graph input (from the config's `inputs:`) whose values index the table
    table: np.ndarray  # [V, D]
    shape: list[int]  # of `input`
    in_model: bool = False  # the embed stage puts the lookup back into the ncnn model

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.table[ids].reshape(self.shape)


def take_up_host_lookups(ctx: RunContext, graph_pass: GraphPass) -> Optional[list[dict]]:
    """After a pass changed the graph: save the tables of the lookups it moved to the host, add
    their rows to the inputs every later check runs on, and return them as the stage's record
    holds them (None: the pass moved none)."""
    lookups = getattr(graph_pass, "host_lookups", ())
    if not lookups:
        return None
    start = len(recorded(record.result.to_report() for record in ctx.reporter.stages))
    entries: list[dict] = []
    written: list[tuple[np.ndarray, str]] = []  # one file per distinct table (tied embeddings share one)
    for index, found in enumerate(lookups, start):
        name = next((file for table, file in written if table.dtype == found.table.dtype
                     and np.array_equal(table, found.table)), None)
        if name is None:
            path = ctx.artifacts.write_npy(TABLE_FILE.format(index=index), found.table)
            ctx.wrote(path)
            name = path.name
            written.append((found.table, name))
        entries.append({"input": found.input, "onnx_shape": list(found.shape), "dtype": found.table.dtype.name,
                        "ids": found.ids, "table": name, "table_shape": list(found.table.shape),
                        "rows": RECIPE, "in_model": found.in_model})
    # From the files just written: what a restored stage, `deploykit verify` and the app compute.
    ctx.inputs.update(host_inputs(entries, ctx.artifacts.path, ctx.inputs))
    return entries


def host_inputs(entries: Iterable[Mapping[str, Any]], folder: Path,
                inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The value of each recorded host input, from its table file in `folder` and the ids in `inputs`."""
    values = {}
    for entry in entries:
        table = np.load(folder / entry["table"], allow_pickle=False)
        values[entry["input"]] = HostLookup(entry["input"], entry["ids"], table, entry["onnx_shape"]).rows(
            inputs[entry["ids"]])
    return values


def run_host_inputs(stages: Iterable[Mapping[str, Any]], folder: Path, inputs: Mapping[str, np.ndarray], *,
                    stage: str) -> dict[str, np.ndarray]:
    """The inputs the run in `folder` computes on the host (as its report's `stages` record them),
    from its saved tables and the ids in `inputs`; a table missing from the folder is a ConfigError."""
    lookups = recorded(stages)
    for entry in lookups:
        table = folder / entry["table"]
        if not table.is_file():
            raise ConfigError(f"{table} does not exist: the run computes its input {entry['input']!r} on the host "
                              "from it.", stage=stage, hint="keep the run's artifact folder whole.")
    return host_inputs(lookups, folder, inputs)


def recorded(stages: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Every host lookup recorded in a run's stage records (report.json's `stages`)."""
    return [entry for stage in stages for entry in stage.get("host_lookups") or []]


def on_host(stages: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The recorded lookups the app does: those the embed stage did not put into the model."""
    return [entry for entry in recorded(stages) if not entry.get("in_model")]
