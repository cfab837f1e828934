"""Table lookups the app does on the host instead of the ncnn model.

A pass that moves `Gather(table, ids)` out of the graph (`embedding_gather` with `on_host: true`)
makes the looked-up rows a new graph input and lists a `HostLookup` for each in its
`host_lookups`: the app (and every check after the pass) computes that input with
`HostLookup.rows`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HostLookup:
    """One graph input whose values are rows of a constant table, looked up by an integer input."""

    input: str  # the graph input that now carries the rows
    ids: str  # the integer graph input (from the config's `inputs:`) whose values index the table
    table: np.ndarray  # [V, D]
    shape: list[int]  # of `input`

    def rows(self, ids: np.ndarray) -> np.ndarray:
        return self.table[ids].reshape(self.shape)

