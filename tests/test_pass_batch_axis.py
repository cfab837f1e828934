"""batch_axis_reshape: onnxruntime before/after, what pnnx leaves before, the ncnn runtime after, and
onnx2ncnn's reading of the result (the pre-flight check, plus the 4-D batch-first transposes it needs)."""

import numpy as np
import onnx
import pytest

from deploykit.core.parity import run_onnx
from deploykit.passes.batch_axis import BatchAxisReshapePass
from passkit import (assert_clean_for, assert_left_alone, assert_ncnn_matches_onnxruntime, assert_rewrites, ints,
                     model_from_text, pnnx_leaves, rand, run_on_ncnn)

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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_swin_qkv_of_many_windows_is_sliced_before_its_transpose(tmp_path):
    # torchvision's Swin: qkv(x).reshape(nW, N, 3, H, d).permute(2, 0, 3, 1, 4), then q, k, v = qkv[0], ...: with
    # nW windows in axis 0 the transpose needs 5 dims, but each of q, k, v needs 4
    model, x = vit_qkv(batch=4), {"x": rand(4, 5, 24)}
    rewritten = assert_rewrites(model, BatchAxisReshapePass, inputs=x,
                                expected_ops=["Slice", "Slice", "Slice", "Reshape", "Reshape", "Reshape",
                                              "Transpose", "Transpose", "Transpose"])
    assert transposes(rewritten) == [[0, 2, 1, 3]] * 3
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)


def test_timm_swin_unbind_of_many_windows_is_sliced_the_same_way():
    model = vit_qkv(batch=4, readers="""
        a, b, c = Split<axis=0>(t, pieces)
        q = Squeeze(a, first)
        k = Squeeze(b, first)
        v = Squeeze(c, first)""")
    assert_rewrites(model, BatchAxisReshapePass, inputs={"x": rand(4, 5, 24)},
                    expected_ops=["Slice", "Slice", "Slice", "Reshape", "Reshape", "Reshape",
                                  "Transpose", "Transpose", "Transpose"])


@pytest.mark.parametrize("text,reason", [
    (vit_qkv(batch=2, readers="t2 = Relu(t)\n q = Gather<axis=0>(t2, zero)\n k = Gather<axis=0>(t2, one)\n"
                              " v = Gather<axis=0>(t2, two)"), "needs 5 dims even without its size-1 axes"),
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


@pytest.mark.slow
def test_a_shifted_window_mask_added_on_a_5d_view_is_added_on_4d(tmp_path):
    # torchvision's Swin: attn.view(-1, nW, H, N, N) + mask[1, nW, 1, N, N], then .view(-1, H, N, N)
    model = model_from_text("""g (float[4,2,3,3] s) => (float[4,2,3,3] y) {
        v = Reshape(s, windows)
        m = Add(v, mask)
        y = Reshape(m, back)
    }""", {"windows": ints([-1, 4, 2, 3, 3]), "mask": rand(1, 4, 1, 3, 3), "back": ints([-1, 2, 3, 3])})
    x = {"s": rand(4, 2, 3, 3)}
    assert "Tensor.reshape" in pnnx_leaves(model, x, tmp_path / "before")
    rewritten = assert_rewrites(model, BatchAxisReshapePass, expected_ops=["Reshape", "Add", "Reshape"], inputs=x)
    assert reshape_targets(rewritten) == [[1, 4, 2, 9], [4, 2, 3, 3]]
    mask = next(i for i in rewritten.graph.initializer if i.name.endswith("/use0/1"))
    assert list(mask.dims) == [1, 4, 1, 9]  # broadcast over the heads as before, not expanded
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


SHIFTED_WINDOW_ATTENTION = """g (float[1,16,8] x) => (float[4,4,8] y) {
    w = Reshape(x, tokens)
    qkv = MatMul(w, wqkv)
    r = Reshape(qkv, split)
    t = Transpose<perm=[2,0,3,1,4]>(r)
    q0 = Gather<axis=0>(t, zero)
    k = Gather<axis=0>(t, one)
    v = Gather<axis=0>(t, two)
    q = Mul(q0, scale)
    kt = Transpose<perm=[0,1,3,2]>(k)
    s = MatMul(q, kt)
    sb = Add(s, bias)
    s5 = Reshape(sb, windows)
    sm = Add(s5, mask)
    s4 = Reshape(sm, heads)
    p = Softmax<axis=-1>(s4)
    o = MatMul(p, v)
    ot = Transpose<perm=[0,2,1,3]>(o)
    oh = Reshape(ot, tokens)
    y = MatMul(oh, wo)
}"""


@pytest.mark.slow
def test_swin_shifted_window_attention_keeps_its_per_window_mask_on_ncnn(tmp_path):
    """The smallest graph of torchvision's shifted-window attention (4 windows of 4 tokens, 2 heads):
    pnnx fuses it into one MultiHeadAttention whose mask varies per head only, and every window gets
    window 0's mask. Within 4-D, nothing is fused and each window keeps its own."""
    mask = np.zeros((1, 4, 1, 4, 4), np.float32)
    mask[0, 1:, 0, :2, 2:] = mask[0, 1:, 0, 2:, :2] = -100.0  # windows 1-3 mix two regions, window 0 one
    model = model_from_text(SHIFTED_WINDOW_ATTENTION, {
        "wqkv": rand(8, 24) / np.float32(3), "wo": rand(8, 8) / np.float32(3), "bias": rand(1, 2, 4, 4),
        "mask": mask, "scale": np.array(0.5, np.float32), "split": ints([-1, 4, 3, 2, 4]),
        "windows": ints([-1, 4, 2, 4, 4]), "heads": ints([-1, 2, 4, 4]), "tokens": ints([-1, 4, 8]),
        "zero": ints(0), "one": ints(1), "two": ints(2)})
    x = {"x": rand(1, 16, 8)}
    reference = run_onnx(model, x, stage="test")["y"]
    fused = run_on_ncnn(model, x, tmp_path / "before")["y"].reshape(reference.shape)
    assert "MultiHeadAttention" in (tmp_path / "before" / "model.ncnn.param").read_text()
    wrong = np.abs(fused - reference).max(axis=(1, 2))
    assert wrong[0] < 1e-5 and wrong[1:].min() > 1e-2, wrong  # window 0's mask is all zeros
    rewritten = assert_rewrites(model, BatchAxisReshapePass, changed=2, inputs=x, expected_ops=[
        "Reshape", "MatMul", "Slice", "Slice", "Slice", "Reshape", "Reshape", "Reshape", "Transpose", "Transpose", "Transpose",
        "Mul", "Transpose", "MatMul", "Add", "Reshape", "Add", "Reshape", "Softmax", "MatMul", "Transpose", "Reshape",
        "MatMul"])
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path / "after")


@pytest.mark.slow
@pytest.mark.parametrize("perm, grid, back", [
    ([0, 1, 3, 5, 2, 4], [1, 3, 2, 2, 3, 2], [1, 3, 4, 6]),  # unfold: [C, nh, ph, nw, pw] -> [C, ph, pw, nh, nw]
    ([0, 1, 4, 2, 5, 3], [1, 3, 2, 2, 2, 3], [1, 3, 4, 6]),  # fold: [C, ph, pw, nh, nw] -> [C, nh, ph, nw, pw]
], ids=["unfold", "fold"])
def test_mobilevit_patch_unfold_needing_5_dims_is_two_4d_moves(tmp_path, perm, grid, back):
    # timm MobileViTv2's _unfold / _fold without F.unfold: x.reshape(B, C, nh, ph, nw, pw).permute(...)
    model = model_from_text(f"""g (float[1,3,4,6] x) => (float[1,3,4,6] y) {{
        r = Reshape(x, grid)
        t = Transpose<perm={perm}>(r)
        y = Reshape(t, back)
    }}""", {"grid": ints(grid), "back": ints(back)})
    x = {"x": rand(1, 3, 4, 6)}
    rewritten = assert_rewrites(model, BatchAxisReshapePass, inputs=x,
                                expected_ops=["Reshape", "Transpose", "Reshape", "Transpose", "Reshape"])
    assert transposes(rewritten) == [[0, 2, 1, 3]] * 2
    assert_ncnn_matches_onnxruntime(rewritten, x, tmp_path)
