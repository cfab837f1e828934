import numpy as np
import onnx

from deploykit.passes.embedding_gather import EmbeddingGatherPass
from passkit import assert_clean_for, assert_left_alone, assert_rewrites, findings, model_from_text

VOCAB, WIDTH = 10, 4
TABLE = np.random.default_rng(0).standard_normal((VOCAB, WIDTH)).astype(np.float32)
TABLE[3] = [-0.0, 1e-40, -3e38, 7.0]  # signed zero, subnormal and huge values
IDS = np.array([[3, 9, 1, 0, 0, 7]], dtype=np.int64)
POSITIONS = np.arange(24, dtype=np.float32).reshape(1, 6, 4)
CHAIN = ["Reshape", "Sub", "Abs", "Neg", "Add", "Relu", "MatMul"]


def assert_exact_rewrite(model, expected_ops, inputs, changed=1, **args):
    """assert_rewrites with the pass's arguments; the rewritten model is fed its ids as floats."""
    return assert_rewrites(model, lambda: EmbeddingGatherPass(**args), expected_ops=expected_ops, inputs=inputs,
                           changed=changed)


def test_lookup_becomes_an_exact_one_hot_product_of_ops_onnx2ncnn_maps():
    model = model_from_text("g (int64[1,6] ids) => (float[1,6,4] emb) { emb = Gather(table, ids) }", {"table": TABLE})
    # embed_layer, which `auto` runs first, leaves a lookup whose rows are a graph output
    assert findings(model, "onnx2ncnn") == [("Gather", "embedding_gather")]
    rewritten = assert_exact_rewrite(model, CHAIN, {"ids": IDS})
    assert rewritten.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert_clean_for(rewritten, "onnx2ncnn")


def ids_reshaped_and_shared_with_an_int_user():
    return onnx.shape_inference.infer_shapes(model_from_text("""
        g (int64[6] ids) => (float[1,6,4] y, int64[6] twice) {
            shape = Constant<value = int64[2] {1, 6}>()
            ids2 = Reshape(ids, shape)
            emb = Gather(table, ids2)
            y = Add(emb, pos)
            twice = Add(ids, ids)
        }""", {"table": TABLE, "pos": POSITIONS}))


def test_ids_through_a_reshape_and_shared_with_an_int_user():
    rewritten = assert_exact_rewrite(ids_reshaped_and_shared_with_an_int_user(),
                                     ["Constant", "Cast", "Reshape", "Add"] + CHAIN + ["Add"], {"ids": IDS.reshape(6)})
    cast = next(n for n in rewritten.graph.node if n.op_type == "Cast")
    assert cast.output[0] == "ids/embedding_gather/as_int"
    assert [n.op_type for n in rewritten.graph.node if cast.output[0] in n.input] == ["Add"]


def test_two_tables_sharing_ids_are_both_rewritten():
    model = model_from_text("""
        g (int64[1,6] ids) => (float[1,6,4] a, float[1,6,4] b) {
            a = Gather(table, ids)
            b = Gather(table2, ids)
        }""", {"table": TABLE, "table2": TABLE[::-1].copy()})
    rewritten = assert_exact_rewrite(model, [op for op in CHAIN for _ in "ab"], {"ids": IDS}, changed=2)
    assert_clean_for(rewritten, "onnx2ncnn")


def test_too_large_vocabulary_is_refused_with_a_way_out():
    model = model_from_text("g (int64[1,6] ids) => (float[1,6,4] emb) { emb = Gather(table, ids) }", {"table": TABLE})
    refusals = assert_left_alone(model, EmbeddingGatherPass(max_vocab=8))
    assert "max_vocab=8" in refusals[0] and "on the host" in refusals[0]


def test_computed_ids_and_float_ids_are_left_alone():
    model = model_from_text("""
        g (int64[1,6] ids, float[1,6] f) => (float[1,6,4] a, float[1,6,4] b) {
            half = Div(ids, two)
            a = Gather(table, half)
            fi = Cast<to=7>(f)
            b = Gather(table, fi)
        }""", {"table": TABLE, "two": np.array(2, np.int64)})
    model = onnx.shape_inference.infer_shapes(model)
    refusals = assert_left_alone(model, EmbeddingGatherPass())
    assert "computed by Div" in refusals[0]
    assert "computed by Cast" in refusals[1]


def test_gather_along_columns_is_left_alone():
    model = model_from_text("""
        g (int64[1,2] ids) => (float[10,1,2] y) { y = Gather<axis=1>(table, ids) }""", {"table": TABLE})
    assert "axis 1" in assert_left_alone(model, EmbeddingGatherPass())[0]


def test_ids_of_rank_3_are_refused_because_onnx2ncnns_inner_product_flattens_the_one_hot():
    # on the real onnx2ncnn the [1,2,3,V] one-hot times the table came out as one row of 4
    model = model_from_text("g (int64[1,2,3] ids) => (float[1,2,3,4] emb) { emb = Gather(table, ids) }",
                            {"table": TABLE})
    [refusal] = assert_left_alone(model, EmbeddingGatherPass())
    assert "a static [1, T] is needed" in refusal and "InnerProduct" in refusal
