import numpy as np

from deploykit.passes.uniform_gather_elements import UniformGatherElementsPass
from passkit import assert_left_alone, assert_rewrites, ints, model_from_text, rand

# transformers' token_type_ids from a registered all-zero buffer: torch.gather(buffer.expand(1, L), 1, positions)
GRAPH = """g (int64[1,6] positions) => (float[1,6,4] y) {
    tt = GatherElements<axis=1>(buffer, positions)
    y = Gather(table, tt)
}"""


def test_a_gather_from_a_constant_uniform_along_the_axis_is_that_constant():
    model = model_from_text(GRAPH, {"buffer": np.zeros((1, 20), np.int64), "table": rand(2, 4)})
    rewritten = assert_rewrites(model, UniformGatherElementsPass, expected_ops=["Gather"],
                                inputs={"positions": ints([[2, 3, 4, 5, 1, 1]])})
    tt = next(i for i in rewritten.graph.initializer if i.name.endswith("uniform_gather_elements/value"))
    assert list(tt.dims) == [1, 6]


def test_a_constant_that_differs_along_the_axis_is_left_alone():
    model = model_from_text(GRAPH, {"buffer": ints([[0] * 19 + [1]]), "table": rand(2, 4)})
    assert assert_left_alone(model, UniformGatherElementsPass()) == [
        "GatherElements '': the constant differs along axis 1, so the result depends on the indices"]
