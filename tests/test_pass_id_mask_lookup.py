import numpy as np
import pytest

from deploykit.core.parity import run_onnx
from deploykit.onnx.graph_pass import apply_to_model, resolve_passes
from deploykit.passes.id_mask_lookup import IdMaskLookupPass
from deploykit.passes.mask_arithmetic import WhereToArithmeticPass
from passkit import (as_fed, assert_clean_for, assert_left_alone, assert_rewrites, host_rows, model_from_text, op_list,
                     run_on_ncnn)


VOCAB, WIDTH = 10, 4
TABLE = np.random.default_rng(0).standard_normal((VOCAB, WIDTH)).astype(np.float32)
IDS = np.array([[3, 9, 1, 0, 0, 7]], dtype=np.int64)
PAD = {"pad": np.array(0, dtype=np.int64)}


def encoder_mask(mask_ops: str):
    return model_from_text(f"""
        g (int64[1,6] ids) => (float[1,6,4] emb, float[1,6] mask) {{
            emb = Gather(table, ids)
            {mask_ops}
        }}""", {"table": TABLE, **PAD})


def test_equal_cast_becomes_a_lookup_that_pnnx_turns_into_embed(tmp_path):
    model = encoder_mask("eq = Equal(ids, pad)\n mask = Cast<to=1>(eq)")
    rewritten = assert_rewrites(model, IdMaskLookupPass, expected_ops=["Gather", "Gather", "Reshape"],
                                inputs={"ids": IDS})
    table = next(i for i in rewritten.graph.initializer if i.name.endswith("/table"))
    assert list(table.dims) == [VOCAB, 1]
    ncnn_out = run_on_ncnn(rewritten, {"ids": IDS}, tmp_path)
    np.testing.assert_array_equal(ncnn_out["mask"].reshape(1, 6), [[0, 0, 0, 1, 1, 0]])


def test_not_equal_negates_the_table():
    model = encoder_mask("eq = Equal(pad, ids)\n ne = Not(eq)\n mask = Cast<to=1>(ne)")
    rewritten = assert_rewrites(model, IdMaskLookupPass, expected_ops=["Gather", "Gather", "Reshape"],
                                inputs={"ids": IDS})
    table = next(i for i in rewritten.graph.initializer if i.name.endswith("/table"))
    assert np.frombuffer(table.raw_data, dtype=np.float32).tolist() == [0.0] + [1.0] * (VOCAB - 1)


CAUSAL_OR_PAD = """
    g (int64[1,6] ids, float[1,6] scores) => (float[1,6,4] emb, float[1,6] y) {
        emb = Gather(table, ids)
        eq = Equal(ids, pad)
        masked = Or(eq, causal)
        y = Where(masked, fill, scores)
    }"""


def test_a_mask_used_as_a_boolean_becomes_a_cast_lookup():
    model = model_from_text(CAUSAL_OR_PAD, {"table": TABLE, "fill": np.array(-1e4, np.float32),
                                            "causal": np.array([[0, 0, 1, 1, 0, 1]], bool), **PAD})
    rewritten = assert_rewrites(model, IdMaskLookupPass, expected_ops=["Gather", "Gather", "Reshape", "Cast", "Or", "Where"],
                                inputs={"ids": IDS, "scores": np.arange(6, dtype=np.float32).reshape(1, 6)})
    assert [n.op_type for n in rewritten.graph.node if n.output[0] == "eq"] == ["Cast"]


def test_with_where_to_arithmetic_a_pad_or_causal_mask_runs_on_ncnn(tmp_path):
    # `causal | (ids == pad)` then masked_fill: integer ids compared at run time are refused by
    # where_to_arithmetic; after the lookup, it and pnnx turn the rest into layers ncnn runs.
    model = model_from_text(CAUSAL_OR_PAD, {"table": TABLE, "fill": np.array(-1e4, np.float32),
                                            "causal": np.array([[0, 0, 1, 1, 0, 1]], bool), **PAD})
    scores = np.arange(6, dtype=np.float32).reshape(1, 6)
    assert assert_left_alone(model, WhereToArithmeticPass())  # refused: run-time integer ids
    looked_up, _ = apply_to_model(model, IdMaskLookupPass())
    arithmetic, result = apply_to_model(looked_up, WhereToArithmeticPass())
    assert result.changed == 1, result.refusals
    assert not {"Equal", "Or", "Where", "Cast"} & set(op_list(arithmetic))
    got = run_on_ncnn(arithmetic, {"ids": IDS, "scores": scores}, tmp_path)
    # masked where ids == 0 (positions 3, 4) or causal (2, 3, 5)
    np.testing.assert_array_equal(got["y"].reshape(1, 6), [[0, 1, -1e4, -1e4, -1e4, -1e4]])


def test_unbounded_ids_need_num_ids():
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6] mask) {
            eq = Equal(ids, pad)
            mask = Cast<to=1>(eq)
        }""", PAD)
    refusals = assert_left_alone(model, IdMaskLookupPass())
    assert "num_ids" in refusals[0]
    assert_rewrites(model, lambda: IdMaskLookupPass(num_ids=VOCAB), expected_ops=["Gather", "Reshape"],
                    inputs={"ids": IDS})


@pytest.mark.parametrize("pad", [np.array(0.0, np.float32), np.array([0, 1], np.int64)], ids=["float", "vector"])
def test_a_non_scalar_or_float_comparison_is_not_a_pad_mask(pad):
    model = model_from_text(f"""
        g (int64[1,6] ids) => (float[1,6,4] emb, float[1,6] y) {{
            emb = Gather(table, ids)
            f = Cast<to=1>(ids)
            eq = Equal(f, pad)
            y = Cast<to=1>(eq)
        }}""" if pad.dtype == np.float32 else """
        g (int64[1,2] ids) => (float[1,2] y) {
            eq = Equal(ids, pad)
            y = Cast<to=1>(eq)
        }""", {"table": TABLE, "pad": pad} if pad.dtype == np.float32 else {"pad": pad})
    assert_left_alone(model, IdMaskLookupPass(num_ids=VOCAB))


def test_for_onnx2ncnn_the_auto_passes_leave_a_pad_or_causal_mask_clean():
    # where_to_arithmetic must see the mask as a lookup in a 0/1 table, before embedding_gather
    # turns that lookup into a one-hot product it cannot prove whole.
    model = model_from_text(CAUSAL_OR_PAD, {"table": TABLE, "fill": np.array(-1e4, np.float32),
                                            "causal": np.array([[0, 0, 1, 1, 0, 1]], bool), **PAD})
    inputs = {"ids": IDS, "scores": np.arange(6, dtype=np.float32).reshape(1, 6)}
    expected = run_onnx(model, inputs, stage="test")
    for graph_pass in resolve_passes(None, "onnx2ncnn"):
        model, _ = apply_to_model(model, graph_pass)
        inputs.update(host_rows(graph_pass, inputs))  # embed_layer's lookups, as the pipeline feeds them
    assert_clean_for(model, "onnx2ncnn")
    got = run_onnx(model, as_fed(model, inputs), stage="test")
    np.testing.assert_array_equal(got["y"], expected["y"])
    np.testing.assert_allclose(got["emb"], expected["emb"], rtol=0, atol=1e-6)


def test_two_unnamed_masks_get_names_of_their_own():
    # Unnamed nodes are named after their first output: two masks of one pass share no name,
    # which onnxruntime would refuse ("two nodes with same node name") and cleanup would merge.
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6,4] emb, float[1,6] pad_mask, float[1,6] one_mask) {
            emb = Gather(table, ids)
            eq = Equal(ids, pad)
            pad_mask = Cast<to=1>(eq)
            eq1 = Equal(ids, one)
            one_mask = Cast<to=1>(eq1)
        }""", {"table": TABLE, "one": np.array(1, np.int64), **PAD})
    assert [n.name for n in model.graph.node] == ["", "", "", "", ""]
    rewritten = assert_rewrites(model, IdMaskLookupPass, expected_ops=["Gather"] * 3 + ["Reshape"] * 2,
                                inputs={"ids": IDS}, changed=2)
    assert sorted(n.name for n in rewritten.graph.node)[1:] == [
        "eq/id_mask_lookup/lookup", "eq/id_mask_lookup/reshape", "eq1/id_mask_lookup/lookup", "eq1/id_mask_lookup/reshape"]
    tables = {i.name: np.frombuffer(i.raw_data, np.float32).tolist() for i in rewritten.graph.initializer
              if i.name.endswith("/table")}
    assert tables == {"eq/id_mask_lookup/table": [1.0] + [0.0] * (VOCAB - 1),
                      "eq1/id_mask_lookup/table": [0.0, 1.0] + [0.0] * (VOCAB - 2)}
