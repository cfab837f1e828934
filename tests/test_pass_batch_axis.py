"""batch_axis_reshape: onnxruntime before/after, what pnnx leaves before, the ncnn runtime after, and
onnx2ncnn's reading of the result (the pre-flight check, plus the 4-D batch-first transposes it needs)."""

import onnx
import pytest

from deploykit.passes.batch_axis import BatchAxisReshapePass
from passkit import (assert_clean_for, assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints,
                     model_from_text, pnnx_leaves, rand)

QKV_OPS = ["Reshape", "Transpose"] + ["Slice"] * 3 + ["Reshape"] * 3


def transposes(model: onnx.ModelProto) -> list[list[int]]:
    return [list(n.attribute[0].ints) for n in model.graph.node if n.op_type == "Transpose"]


def reshape_targets(model: onnx.ModelProto) -> list[list[int]]:
    return [onnx.numpy_helper.to_array(i).tolist() for i in model.graph.initializer if i.name.endswith("/shape")]


def vit_qkv(batch: int = 1, readers: str = """
        q = Gather<axis=0>(t, zero)
        k = Gather<axis=0>(t, one)
        v = Gather<axis=0>(t, two)""") -> onnx.ModelProto:
    """timm's `qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)` then `qkv[0], qkv[1], qkv[2]`."""
    return model_from_text(f"""g (float[{batch},5,24] x) => (float[{batch},2,5,4] q, float[{batch},2,5,4] k,
                                                          float[{batch},2,5,4] v) {{
        r = Reshape(x, shape)
        t = Transpose<perm=[2,0,3,1,4]>(r)
        {readers}
    }}""", {"shape": ints([batch, 5, 3, 2, 4]), "zero": ints(0), "one": ints(1), "two": ints(2),
            "pieces": ints([1, 1, 1]), "first": ints([0])})


def test_vit_qkv_split_is_one_4d_transpose_and_slices(tmp_path):
    model, x = vit_qkv(), {"x": rand(1, 5, 24)}
    assert "Tensor.reshape" in pnnx_leaves(model, x, tmp_path / "before")
    rewritten = assert_rewrites(model, BatchAxisReshapePass, expected_ops=QKV_OPS, inputs=x)
    assert transposes(rewritten) == [[0, 2, 1, 3]]
    assert reshape_targets(rewritten) == [[1, 5, 6, 4]] + [[1, 2, 5, 4]] * 3
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


def test_unbind_through_split_and_squeeze_is_sliced_the_same_way(tmp_path):
    model, x = vit_qkv(readers="""
        a, b, c = Split<axis=0>(t, pieces)
        q = Squeeze(a, first)
        k = Squeeze(b, first)
        v = Squeeze(c, first)"""), {"x": rand(1, 5, 24)}
    rewritten = assert_rewrites(model, BatchAxisReshapePass, expected_ops=QKV_OPS, inputs=x)
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


def test_yolo_head_keeps_its_sigmoid_on_the_4d_tensor(tmp_path):
    model = model_from_text("""g (float[1,18,4,5] x) => (float[1,60,6] y) {
        r = Reshape(x, grid)
        t = Transpose<perm=[0,1,3,4,2]>(r)
        s = Sigmoid(t)
        y = Reshape(s, rows)
    }""", {"grid": ints([1, 3, 6, 4, 5]), "rows": ints([1, -1, 6])})
    x = {"x": rand(1, 18, 4, 5)}
    assert pnnx_leaves(model, x, tmp_path / "before") == ["Tensor.reshape"]
    rewritten = assert_rewrites(model, BatchAxisReshapePass,
                                expected_ops=["Reshape", "Transpose", "Sigmoid", "Reshape"], inputs=x)
    assert transposes(rewritten) == [[0, 1, 3, 2]] and reshape_targets(rewritten) == [[1, 3, 6, 20], [1, 60, 6]]
    assert_clean_for(rewritten, "onnx2ncnn")
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


def test_swin_window_partition_drops_the_batch_of_one_from_6d(tmp_path):
    model = model_from_text("""g (float[1,4,4,3] x) => (float[4,4,3] y) {
        r = Reshape(x, windows)
        t = Transpose<perm=[0,1,3,2,4,5]>(r)
        y = Reshape(t, flat)
    }""", {"windows": ints([1, 2, 2, 2, 2, 3]), "flat": ints([-1, 4, 3])})
    x = {"x": rand(1, 4, 4, 3)}
    rewritten = assert_rewrites(model, BatchAxisReshapePass, expected_ops=["Reshape", "Transpose", "Reshape"], inputs=x)
    assert transposes(rewritten) == [[0, 2, 1, 3]] and reshape_targets(rewritten) == [[2, 2, 2, 6], [4, 4, 3]]
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


def test_a_5d_view_read_by_index_needs_no_transpose():
    model = model_from_text("""g (float[1,5,24] x) => (float[1,5,2,4] k) {
        r = Reshape(x, shape)
        k = Gather<axis=2>(r, one)
    }""", {"shape": ints([1, 5, 3, 2, 4]), "one": ints(1)})
    rewritten = assert_rewrites(model, BatchAxisReshapePass, expected_ops=["Reshape", "Slice", "Reshape"],
                                inputs={"x": rand(1, 5, 24)})
    assert reshape_targets(rewritten) == [[1, 1, 5, 24], [1, 5, 2, 4]]


@pytest.mark.parametrize("text,reason", [
    (vit_qkv(batch=2), "needs 5 dims even without its size-1 axes"),
    ("""g (float[1,18,4,5] x) => (float[1,3,4,5,6] y) {
        r = Reshape(x, grid)
        y = Transpose<perm=[0,1,3,4,2]>(r)
    }""", "its >4-D result is a graph output"),
    ("""g (float[1,18,4,5] x) => (float[1,3,4,5,6] y) {
        r = Reshape(x, grid)
        t = Transpose<perm=[0,1,3,4,2]>(r)
        y = Mul(t, t)
    }""", "read by Mul"),
    ("""g (float[1,18,4,5] x) => (float[1,18,4,5] y) {
        r = Reshape(x, shuffle)
        t = Transpose<perm=[0,2,1,3,4]>(r)
        y = Reshape(t, back)
    }""", "ShuffleChannel"),
    ("""g (float[1,3,6,4,5] x) => (float[1,3,4,5,6] y) {
        t = Transpose<perm=[0,1,3,4,2]>(x)
        y = Sigmoid(t)
    }""", "not made by a Reshape"),
], ids=["batch-2", "graph-output", "binary-reader", "channel-shuffle", "5d-input"])
def test_what_cannot_stay_within_4d_or_is_fused_is_refused(text, reason):
    model = text if isinstance(text, onnx.ModelProto) else model_from_text(text, {
        "grid": ints([1, 3, 6, 4, 5]), "shuffle": ints([1, 3, 6, 4, 5]), "back": ints([1, 18, 4, 5])})
    refusals = assert_left_alone(model, BatchAxisReshapePass())
    assert len(refusals) == 1 and reason in refusals[0], refusals


def test_4d_moves_of_the_batch_axis_are_left_to_pnnx_which_converts_them(tmp_path):
    # nn.MultiheadAttention(batch_first=False) style: [1,T,D] -> [T,1,D] and back, and view(B*H, T, d)
    model = model_from_text("""g (float[1,5,8] x) => (float[1,5,8] y, float[2,5,4] h) {
        t = Transpose<perm=[1,0,2]>(x)
        s = Mul(t, t)
        y = Transpose<perm=[1,0,2]>(s)
        r = Reshape(x, heads)
        p = Transpose<perm=[0,2,1,3]>(r)
        h = Reshape(p, merged)
    }""", {"heads": ints([1, 5, 2, 4]), "merged": ints([2, 5, 4])})
    assert assert_left_alone(model, BatchAxisReshapePass()) == []
    assert_ncnn_matches_onnxruntime(model, {"x": rand(1, 5, 8)}, tmp_path)
