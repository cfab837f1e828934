"""Tests for passes/embedding_on_host.py: embedding_gather with `on_host: true`."""

import numpy as np
import onnx

from deploykit.core.config import PassEntry
from deploykit.onnx.graph_pass import resolve_passes
from deploykit.passes.embedding_gather import EmbeddingGatherPass
from deploykit.passes.embedding_on_host import EmbeddingOnHostPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, model_from_text, run_on_ncnn
from test_pass_embedding_gather import IDS, POSITIONS, TABLE, VOCAB, ids_reshaped_and_shared_with_an_int_user


def move_to_host(model, expected_ops, inputs, changed=1):
    """assert_rewrites with on_host: true; returns the rewritten model and the pass's host lookups."""
    made = []

    def make():
        made.append(EmbeddingOnHostPass())
        return made[-1]

    rewritten = assert_rewrites(model, make, expected_ops=expected_ops, inputs=inputs, changed=changed)
    return rewritten, made[0].host_lookups


def graph_inputs(model):
    return [(i.name, i.type.tensor_type.elem_type, [d.dim_value for d in i.type.tensor_type.shape.dim])
            for i in model.graph.input]


def test_on_host_the_looked_up_rows_become_an_input_and_the_ids_leave():
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6,4] y) {
            emb = Gather(table, ids)
            y = Add(emb, pos)
        }""", {"table": TABLE, "pos": POSITIONS})
    rewritten, lookups = move_to_host(model, ["Add"], {"ids": IDS})
    assert graph_inputs(rewritten) == [("emb", onnx.TensorProto.FLOAT, [1, 6, 4])]
    [lookup] = lookups
    assert (lookup.input, lookup.ids, lookup.shape) == ("emb", "ids", [1, 6, 4])
    np.testing.assert_array_equal(lookup.table, TABLE)
    assert_clean_for(rewritten, "onnx2ncnn")


def test_on_host_takes_the_pad_mask_lookup_too_and_ncnn_runs_the_rest(tmp_path):
    # The form id_mask_lookup leaves: a [V,1] 0/1 table looked up by the same ids.
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6,4] y, float[1,6] mask) {
            emb = Gather(table, ids)
            y = Add(emb, pos)
            hit = Gather(hit_table, ids)
            mask = Reshape(hit, shape)
        }""", {"table": TABLE, "pos": POSITIONS, "hit_table": (np.arange(VOCAB) == 0).astype(np.float32)[:, None],
               "shape": np.array([1, 6], np.int64)})
    rewritten, lookups = move_to_host(model, ["Add", "Reshape"], {"ids": IDS}, changed=2)
    assert [name for name, _, _ in graph_inputs(rewritten)] == ["emb", "hit"]
    rows = {lookup.input: lookup.rows(IDS) for lookup in lookups}
    assert rows["hit"].shape == (1, 6, 1)
    ncnn_out = run_on_ncnn(rewritten, rows, tmp_path)
    np.testing.assert_array_equal(ncnn_out["mask"].reshape(1, 6), [[0, 0, 0, 1, 1, 0]])
    np.testing.assert_allclose(ncnn_out["y"].reshape(1, 6, 4), TABLE[IDS] + POSITIONS, rtol=1e-6)


def test_on_host_ids_through_a_reshape_and_kept_for_another_user():
    rewritten, [lookup] = move_to_host(ids_reshaped_and_shared_with_an_int_user(), ["Add", "Add"],
                                       {"ids": IDS.reshape(6)})
    assert [name for name, _, _ in graph_inputs(rewritten)] == ["ids", "emb"]
    np.testing.assert_array_equal(lookup.rows(IDS.reshape(6)), TABLE[IDS])  # [6] ids, [1,6,4] rows


def test_on_host_has_no_vocabulary_limit():
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6,4] y) { emb = Gather(table, ids)\n y = Relu(emb) }""", {"table": TABLE})
    move_to_host(model, ["Relu"], {"ids": IDS})
    assert "max_vocab=8" in assert_left_alone(model, EmbeddingGatherPass(max_vocab=8))[0]


def test_on_host_leaves_transposed_ids_and_a_lookup_that_is_a_graph_output():
    model = model_from_text("""
        g (int64[6,1] ids) => (float[1,6,4] y, float[1,6,4] emb2) {
            ids_t = Transpose<perm=[1, 0]>(ids)
            emb = Gather(table, ids_t)
            y = Relu(emb)
            ids_t2 = Transpose<perm=[1, 0]>(ids)
            emb2 = Gather(table, ids_t2)
        }""", {"table": TABLE})
    model = onnx.shape_inference.infer_shapes(model)
    refusals = assert_left_alone(model, EmbeddingOnHostPass())
    assert refusals == ["Gather '': the ids are transposed on the way; the rows would need the same transpose",
                        "Gather '': its result is a graph output, which would become an input of the same name"]


def test_the_argument_on_host_selects_this_variant_under_the_name_embedding_gather():
    [chosen] = resolve_passes([PassEntry(name="embedding_gather", args={"on_host": True})], "pnnx")
    assert isinstance(chosen, EmbeddingOnHostPass) and chosen.name == "embedding_gather"
    [one_hot] = resolve_passes([PassEntry(name="embedding_gather", args={"max_vocab": 8})], "onnx2ncnn")
    assert type(one_hot) is EmbeddingGatherPass and one_hot.args.max_vocab == 8
