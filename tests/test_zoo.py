"""The benchmark zoo (scripts/zoo.py) and the time split of scripts/timed_parts.py, without
building the optional groups' models (their packages live in the benchmark's own environment)."""

import sys

import numpy as np
import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import bench  # noqa: E402
import timed_parts  # noqa: E402
import zoo  # noqa: E402
from deploykit.core.config import Config  # noqa: E402


def every_entry():
    return [entry for group in zoo.GROUPS.values() for entry in group]


def test_names_are_unique_and_every_config_validates():
    entries = every_entry()
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names))
    for entry in entries:
        config = Config.model_validate(entry.config(output="unused"))
        assert config.export.opset == entry.opset
        assert [spec.name for spec in config.inputs] == [spec["name"] for spec in entry.inputs]


def test_the_optional_groups_hold_25_or_more_library_architectures():
    optional = [entry for group, entries in zoo.GROUPS.items() if group != "default" for entry in entries]
    assert len(optional) >= 25
    assert {entry.group for entry in optional} == {"torchvision", "timm", "transformers"}
    assert all(entry.factory in ("zoo:build_torchvision", "zoo:build_timm", "zoo:build_transformers")
               for entry in optional)


def test_padded_sentences_end_in_the_pad_id_and_use_it_nowhere_else():
    [ids] = zoo._sentence(16, 1000, 4, pad_id=1)
    assert ids[-4:] == [1, 1, 1, 1]
    assert all(1 < token < 1000 for token in ids[:-4])


@pytest.mark.parametrize("name, shape", [("mask_positions", (1, 16, 64)), ("rotary_attention", (1, 16, 64)),
                                         ("rotary_heads_last", (1, 16, 64)), ("threshold_gate", (1, 32))])
def test_family_modules_build_and_give_outputs_of_order_one(name, shape):
    entry = zoo.by_name(name)
    [output] = bench.torch_outputs(entry.build(), bench.model_inputs(entry))
    assert output.shape == shape
    assert 0.05 < float(output.std()) < 10


def test_mask_positions_count_only_the_tokens_that_are_not_padding():
    model = zoo.by_name("mask_positions").build()
    ids = torch.tensor([[5, 7, 9, 1, 1]])
    mask = (ids != model.pad).int()
    assert (torch.cumsum(mask, dim=1) * mask + model.pad).tolist() == [[2, 3, 4, 1, 1]]


def test_both_rotary_layouts_compute_the_same_attention():
    x = torch.randn(1, 16, 64)
    first, last = zoo.by_name("rotary_attention").build(), zoo.by_name("rotary_heads_last").build()
    assert torch.allclose(first(x), last(x), atol=1e-6)


def test_the_rotated_half_of_interleaved_pairs():
    x = torch.arange(6.0).reshape(1, 6)
    assert zoo.RotaryAttention.rotate_pairs(x).tolist() == [[-1.0, 0.0, -3.0, 2.0, -5.0, 4.0]]


def test_dead_weights_are_woken_and_live_ones_and_biases_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with torch.no_grad():
        model[0].weight.zero_()
        model[1].weight.fill_(1e-6)
        live = model[0].bias.clone()
        zoo._wake_dead_weights(model)
    assert float(model[0].weight.detach().abs().max()) > 1e-3
    assert model[1].weight.tolist() == [1.0] * 4
    assert model[1].bias.tolist() == [0.0] * 4
    assert torch.equal(model[0].bias, live)


def test_unit_logits_scales_every_head_writing_the_logits():
    torch.manual_seed(0)

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 8, 3)
            self.head, self.head_dist = torch.nn.Linear(8, 10), torch.nn.Linear(8, 10)

        def forward(self, x):
            x = self.body(x).mean((2, 3))
            return (self.head(x) + self.head_dist(x)) / 2 * 0.01

    model = TwoHeads().eval()
    torch.manual_seed(1)
    zoo._unit_logits(model, 16)
    torch.manual_seed(1)  # the same random image
    with torch.no_grad():
        spread = float(model(torch.randn(1, 3, 16, 16)).std())
    assert spread == pytest.approx(1.0, rel=1e-4)


def test_child_processes_are_named_by_what_they_run():
    assert timed_parts._child_kind([sys.executable, "-m", "deploykit.stages.simplify"]) == "onnxsim"
    assert timed_parts._child_kind([sys.executable, "-m", "deploykit.ncnn.runtime", "/tmp/x"]) == "ncnn"
    assert timed_parts._child_kind(["/opt/bin/pnnx", "model.onnx", "fp16=0"]) == "pnnx"


def test_a_timed_part_inside_another_is_counted_once():
    timed_parts.SECONDS.clear()
    inner = timed_parts._timed("inner", lambda: sum(range(200000)))
    outer = timed_parts._timed("outer", lambda: inner() + sum(range(200000)))
    outer()
    total = timed_parts.SECONDS["outer"] + timed_parts.SECONDS["inner"]
    assert 0 < timed_parts.SECONDS["outer"] < total and timed_parts.SECONDS["inner"] > 0
    timed_parts.SECONDS.clear()


def test_cost_parts_leaves_the_rest_of_a_run_as_deploykits_own():
    sample = {"seconds": 10.0, "stages": {"simplify": 1.0, "pass:a": 0.25, "pass:b": 0.25, "export": 5.0},
              "parts": {"parts": {"import torch": 1.0, "build": 2.0, "exporter": 1.5, "lint": 0.5},
                        "children": {"pnnx": 1.0, "ncnn": 0.5, "onnxsim": 3.0}}}
    parts = bench.cost_parts([sample, sample], "deploykit")
    assert parts["onnxsim"] == 1.0  # the wait in the simplify stage, not the child's lifetime beside the export
    assert parts["passes"] == 0.5
    assert parts["own"] == pytest.approx(10.0 - (1.0 + 2.0 + 1.5 + 0.5 + 1.0 + 0.5 + 1.0 + 0.5))
    bare = bench.cost_parts([{"seconds": 4.0, "parts": {"parts": {"exporter": 1.0}, "children": {"pnnx": 2.0}}}],
                            "bare_pnnx")
    assert bare == {"exporter": 1.0, "ncnn": 0.0, "own": 1.0, "pnnx": 2.0}
    assert np.isclose(sum(bare.values()), 4.0)
