"""A crash of the ncnn runtime names the layer it died in: hand-written .param files that crash ncnn
the same way on every run (an empty input blob reaching a layer that divides by its packing, or
reads past it)."""

import numpy as np
import pytest

from deploykit.core.errors import StageError
from deploykit.ncnn.converters.base import Blob
from deploykit.ncnn.runtime import extract_blobs, run_ncnn

# Reshape divides by the packing of its input, which is 0 for an empty blob: SIGFPE.
RESHAPE_FIRST = """7767517
3 3
Input            in0   0 1 in0
Reshape          flat  1 1 in0 flat 0=1 1=16
ReLU             relu  1 1 flat out0
"""
# BinaryOp reads the empty blob's missing data: SIGSEGV.
BINARY_FIRST = """7767517
3 3
Input            in0   0 1 in0
BinaryOp         shift 1 1 in0 shifted 0=0 1=1 2=1.0
Reshape          flat  1 1 shifted out0 0=1 1=16
"""


def crash(tmp_path, text, extract=False):
    param, weights = tmp_path / "model.ncnn.param", tmp_path / "model.ncnn.bin"
    param.write_text(text)
    weights.write_bytes(b"")
    feeds = [(Blob("x", "in0"), np.zeros((1, 0), np.float32))]
    with pytest.raises(StageError) as caught:
        if extract:
            extract_blobs(param, weights, feeds, ["out0"])
        else:
            run_ncnn(param, weights, feeds, [Blob("y", "out0")])
    return caught.value


def test_a_sigfpe_names_the_layer_and_its_empty_input(tmp_path):
    error = crash(tmp_path, RESHAPE_FIRST)
    assert error.message.startswith("the ncnn runtime crashed (SIGFPE) running model.ncnn.param in layer Reshape "
                                    "'flat' (layer 2 of 3 in the .param), fed 'in0' empty (0 elements)"), error.message
    assert "integer division by zero" in error.hint
    assert "the line of 'flat' in model.ncnn.param" in error.hint and "`deploykit reduce`" in error.hint


def test_a_sigsegv_names_the_layer(tmp_path):
    error = crash(tmp_path, BINARY_FIRST)
    assert "crashed (SIGSEGV) running model.ncnn.param in layer BinaryOp 'shift' (layer 2 of 3" in error.message
    assert "out of bounds" in error.hint


def test_a_crash_while_extracting_every_blob_is_located_too(tmp_path):
    error = crash(tmp_path, RESHAPE_FIRST, extract=True)
    assert "in layer Reshape 'flat' (layer 2 of 3" in error.message
