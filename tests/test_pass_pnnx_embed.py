import pytest
import numpy as np

from deploykit.passes.pnnx_embed import PnnxEmbedPass
from passkit import assert_left_alone, assert_rewrites, model_from_text, pnnx_leaves, run_on_ncnn

TABLE = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
IDS = np.array([[0, 11, 3, 3, 7]], dtype=np.int64)


def lookup(attrs: str = "<axis=0>", table=TABLE, out_shape="1,5,5"):
    return model_from_text(f"""
        g (int64[1,5] ids) => (float[{out_shape}] y) {{
            y = Gather{attrs}(table, ids)
        }}""", {"table": table})


@pytest.mark.slow
def test_explicit_axis_is_dropped_so_pnnx_writes_embed(tmp_path):
    before = lookup()
    assert pnnx_leaves(before, {"ids": IDS}, tmp_path / "before") == ["Gather"]

    after = assert_rewrites(before, PnnxEmbedPass, expected_ops=["Gather"], inputs={"ids": IDS})
    assert list(after.graph.node[0].attribute) == [] and after.graph.node[0].name == "y/pnnx_embed"
    ncnn_out = run_on_ncnn(after, {"ids": IDS}, tmp_path)
    np.testing.assert_array_equal(ncnn_out["y"], TABLE[IDS])


def test_other_axes_and_non_tables_are_left_alone():
    refusals = assert_left_alone(lookup("<axis=1>", table=TABLE[:5], out_shape="5,1,5"), PnnxEmbedPass())
    assert refusals == ["Gather '': it gathers along axis 1, not the table's rows"]
    assert assert_left_alone(lookup("<axis=0>", table=TABLE[0], out_shape="1,5"), PnnxEmbedPass()) == []
