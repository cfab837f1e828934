"""The fixed inputs every parity check is run on, made from the config's `inputs:` entries."""

from __future__ import annotations

import numpy as np

from deploykit.core.config import InputSpec
from deploykit.core.errors import ConfigError

DEFAULT_INT_RANGE = (0, 10)


def make_inputs(specs: list[InputSpec], seed: int) -> dict[str, np.ndarray]:
    """Same specs and seed, same arrays: reports stay reproducible."""
    return {spec.name: _make_one(spec, index, seed) for index, spec in enumerate(specs)}


def _make_one(spec: InputSpec, index: int, seed: int) -> np.ndarray:
    where = f"inputs[{index}] ({spec.name})"
    if spec.file is not None:
        array = _load_npy(spec, where)
    elif spec.data is not None:
        try:
            array = np.asarray(spec.data, dtype=spec.dtype)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.data: cannot be read as a {spec.dtype} array ({exc}).", stage="inputs",
                              hint="write `data` as a nested list of numbers with equal-length rows.") from None
    else:
        array = _random(spec, np.random.default_rng([seed, index]))
    if spec.shape is not None and list(array.shape) != list(spec.shape):
        raise ConfigError(f"{where}: the values have shape {list(array.shape)} but `shape` says {spec.shape}.",
                          stage="inputs", hint="make them agree, or leave `shape` out.")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        # Every output computed from a NaN is NaN: no stage could be told right from wrong.
        first = [int(i) for i in np.argwhere(np.isnan(array))[0]]
        raise ConfigError(f"{where}: {int(np.isnan(array).sum())} of the values are NaN (the first at {first}); every "
                          "check compares outputs computed from them, and NaN makes those outputs meaningless.",
                          stage="inputs", hint="give numbers (an Inf is kept: it is a value a model can take).")
    return np.ascontiguousarray(array)


def _load_npy(spec: InputSpec, where: str) -> np.ndarray:
    assert spec.file is not None, f"{where} has no file"
    try:
        array = np.load(spec.file, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"{where}.file: {spec.file} does not exist.", stage="inputs",
                          hint="paths are relative to the YAML file that names them.") from None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{where}.file: {spec.file} is not a .npy array ({exc}).", stage="inputs",
                          hint="save it with numpy.save.") from None
    if array.dtype != np.dtype(spec.dtype):
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise ConfigError(f"{where}.file: {spec.file} holds {array.dtype}, but `dtype` is {spec.dtype}.",
                              stage="inputs", hint="save the array with the dtype the model takes.")
        array = array.astype(spec.dtype)
    return array


def _random(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(spec.shape or ())
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        low, high = spec.range or DEFAULT_INT_RANGE
        return rng.integers(int(low), int(high), size=shape, dtype=dtype)
    if spec.range is not None:
        low, high = spec.range
        return rng.uniform(low, high, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)
