"""Tests for passes/embed_layer.py, on onnxruntime and the pre-flight check for onnx2ncnn; the embed
stage that writes the lookups into the ncnn model is run on the real binary in tests/test_onnx2ncnn.py."""

from __future__ import annotations

import numpy as np
import onnx

from deploykit.passes.embed_layer import EmbedLayerPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, ints, model_from_text

TABLE = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
IDS = np.array([[1, 2, 3, 0, 0, 9]], np.int64)


def test_the_lookup_leaves_the_graph_as_an_in_model_host_lookup():
    model = model_from_text("g (int64[1,6] ids) => (float[1,6,4] z) { e = Gather(t, ids)\n z = Relu(e) }",
                            {"t": TABLE})
    assert findings(model, "onnx2ncnn") == [("Gather", "embed_layer")]
    made = []

    def make():
        made.append(EmbedLayerPass())
        return made[-1]

    rewritten = assert_rewrites(model, make, expected_ops=["Relu"], inputs={"ids": IDS})
    inputs = {i.name: (i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
              for i in rewritten.graph.input}
    assert inputs == {"ids": (onnx.TensorProto.INT64, [1, 6]), "e": (onnx.TensorProto.FLOAT, [1, 6, 4])}
    [lookup] = made[0].host_lookups
    assert (lookup.input, lookup.ids, lookup.shape, lookup.in_model) == ("e", "ids", [1, 6, 4], True)
    np.testing.assert_array_equal(lookup.rows(IDS), TABLE[IDS])
    assert_clean_for(rewritten, "onnx2ncnn")


def test_ids_that_are_not_a_1_t_input_and_rows_that_are_an_output_are_refused():
    reshaped = model_from_text("""g (int64[6] ids) => (float[1,6,4] z) {
        r = Reshape(ids, s)\n e = Gather(t, r)\n z = Relu(e)
    }""", {"t": TABLE, "s": ints(1, 6)})
    output = model_from_text("g (int64[1,6] ids) => (float[1,6,4] e) { e = Gather(t, ids) }", {"t": TABLE})
    batch = model_from_text("g (int64[2,3] ids) => (float[2,3,4] z) { e = Gather(t, ids)\n z = Relu(e) }",
                            {"t": TABLE})
    assert [assert_left_alone(m, EmbedLayerPass())[0].split(": ", 1)[1] for m in (reshaped, output, batch)] == [
        "the ids are not a graph input (Embed reads the ids the app feeds)",
        "the rows are a graph output or have no static shape",
        "the ids are int64 of shape [2, 3], not integers of a static [1, T] (onnx2ncnn drops the batch axis, "
        "Embed reads T ids)"]
