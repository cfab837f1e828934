import numpy as np
import pytest

from deploykit.passes.index_arithmetic import IndexArithmeticPass
from passkit import (assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints, model_from_text,
                     pnnx_leaves, rand)

T, PAD = 8, 1
IDS = {"ids": ints([[5, 9, 3, 7, 2, 1, 1, 1]])}  # three pads at the end
KEEP = (np.arange(10) != PAD).astype(np.float32).reshape(10, 1)  # id_mask_lookup's table for ids != 1


def positions(rows: int = T + PAD + 1, cumsum: str = "CumSum", index: str = "p64") -> str:
    """RoBERTa's position ids as deploykit's passes leave them: the 0/1 lookup of ids != pad, cast to
    bool then int32, cumsum(mask) * mask + pad, cast to int64, then the position embedding."""
    return model_from_text(f"""
        g (int64[1,8] ids) => (float[1,8,4] y) {{
            hit = Gather(keep, ids)
            m = Reshape(hit, shape)
            b = Cast<to=9>(m)
            i = Cast<to=6>(b)
            c = {cumsum}(i, axis)
            masked = Mul(c, i)
            p = Add(masked, pad)
            p64 = Cast<to=7>(p)
            y = Gather(table, {index})
        }}""", {"keep": KEEP, "shape": ints(1, T), "axis": np.array(1, np.int32), "pad": np.array(PAD, np.int32),
                "table": rand(rows, 4)})


ONE_HOT = ["Reshape", "Sub", "Abs", "Neg", "Add", "Relu", "MatMul"]


@pytest.mark.slow
def test_positions_from_the_mask_are_counted_in_float_and_looked_up_exactly(tmp_path):
    model = positions()
    model.graph.node[0].name = "lookup"  # pnnx makes an Embed only of a named Gather
    assert {"CumSum", "Tensor.to"} <= set(pnnx_leaves(model, IDS, tmp_path / "before"))
    rewritten = assert_rewrites(model, IndexArithmeticPass, inputs=IDS,
                                expected_ops=["Gather", "Reshape", "MatMul", "Mul", "Add"] + ONE_HOT)
    assert_ncnn_matches_onnxruntime(rewritten, IDS, tmp_path / "after")


@pytest.mark.parametrize("attrs", ["<exclusive=1>", "<reverse=1>", "<exclusive=1, reverse=1>"])
def test_exclusive_and_reversed_cumsums_are_other_triangles(attrs):
    assert_rewrites(positions(cumsum=f"CumSum{attrs}"), IndexArithmeticPass, inputs=IDS,
                    expected_ops=["Gather", "Reshape", "MatMul", "Mul", "Add"] + ONE_HOT)


def test_an_index_that_can_pass_the_table_is_refused():
    # cumsum(mask) * mask + 1 reaches T + 1 = 9; a table of 9 rows ends at 8
    refusals = assert_left_alone(positions(rows=T + PAD), IndexArithmeticPass())
    assert refusals == ["Gather '': its index lies in [1, 9], not within the table's 9 rows"]


def test_arithmetic_on_the_ids_themselves_is_refused_for_their_unknown_range():
    model = model_from_text("""
        g (int64[1,8] ids) => (float[1,8,4] y) {
            shifted = Add(ids, one)
            y = Gather(table, shifted)
        }""", {"one": ints(1), "table": rand(10, 4)})
    refusals = assert_left_alone(model, IndexArithmeticPass())
    assert refusals == ["Gather '': its index is computed, and it depends on the graph input 'ids', whose range "
                        "is not known"]


def test_a_lookup_by_the_graph_ids_is_not_this_pattern():
    model = model_from_text("g (int64[1,8] ids) => (float[1,8,4] y) { y = Gather(table, ids) }",
                            {"table": rand(10, 4)})
    assert assert_left_alone(model, IndexArithmeticPass()) == []
