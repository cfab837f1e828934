"""deploykit.tools.lint: each rule on a module from tests/lint_models.py, the clean encoder, and clean-up."""

import inspect
import warnings

import pytest
import torch
from torch import nn

import lint_models
from deploykit.core.errors import ConfigError
from deploykit.models.encoder import build_encoder
from deploykit.tools.lint import RULES, Finding, lint_module


def pitfall_line(cls: type) -> int:
    """The line of `cls` that ends with `# pitfall`."""
    lines, start = inspect.getsourcelines(cls)
    marked = [start + offset for offset, line in enumerate(lines) if line.rstrip().endswith("# pitfall")]
    assert len(marked) == 1, f"{cls.__name__} needs exactly one line marked # pitfall"
    return marked[0]


def only_finding(model: nn.Module, *inputs: torch.Tensor) -> Finding:
    findings = lint_module(model, inputs or (torch.randn(3, 4),))
    assert len(findings) == 1, [str(finding) for finding in findings]
    finding = findings[0]
    assert finding.rule in RULES
    assert finding.file.endswith("lint_models.py")
    assert finding.line == pitfall_line(type(model))
    return finding


@pytest.mark.parametrize("cls, in_message, in_fix", [
    (lint_models.ReluBuiltInForward, "nn.ReLU is built inside forward; it has no parameters, so the numbers are right",
     "torch.nn.functional.relu"),
    (lint_models.LayerNormBuiltInForward, "its 8 parameter(s) are missing from state_dict and re-initialised",
     "self.layer_norm = nn.LayerNorm(...)"),
    # Block's own nn.Linear and its torch.zeros buffer are part of the one finding, not findings of their own.
    (lint_models.BlockBuiltInForward, "Block is built inside forward, so its 20 parameter(s)", "self.block = Block"),
])
def test_layer_in_forward(cls, in_message, in_fix):
    finding = only_finding(cls())
    assert finding.rule == "layer-in-forward"
    assert in_message in finding.message
    assert in_fix in finding.fix


def test_tensor_without_device_dtype():
    finding = only_finding(lint_models.ZerosWithoutDevice())
    assert finding.rule == "tensor-without-device-dtype"
    assert "torch.zeros(...) in forward: without device=" in finding.message
    assert "x.new_zeros(...)" in finding.fix

    finding = only_finding(lint_models.OnesInWrongDtype(), torch.randn(3, 4, dtype=torch.float64))
    assert finding.rule == "tensor-without-device-dtype"
    assert "without dtype= it is float32 while the model computes in float64" in finding.message
    assert "device=" not in finding.message  # it has one


def test_traced_control_flow():
    finding = only_finding(lint_models.BranchOnTensorValue())  # seen in the eager pass (bool(tensor))
    assert finding.rule == "traced-control-flow"
    assert "tracing keeps only the branch" in finding.message
    assert "torch.where" in finding.fix

    finding = only_finding(lint_models.LoopOverTensor())  # seen only as a TracerWarning
    assert finding.rule == "traced-control-flow"
    assert "loop over a tensor is unrolled" in finding.message


@pytest.mark.parametrize("cls, in_message", [
    (lint_models.AddInPlaceOnInput, ".add_() writes into forward's input `x`"),
    (lint_models.AssignIntoInput, "item assignment (x[...] = v) writes into forward's input `x`"),
    (lint_models.InplaceReluOnInput, "relu(..., inplace=True) writes into forward's input `x`"),
])
def test_inplace_on_input(cls, in_message):
    x = torch.randn(3, 4)
    before = x.clone()
    finding = only_finding(cls(), x)
    assert finding.rule == "inplace-on-input"
    assert in_message in finding.message
    assert "x = x.clone()" in finding.fix
    assert torch.equal(x, before)  # lint ran on a copy


@pytest.mark.parametrize("cls, in_message", [
    (lint_models.ItemInForward, ".item() in forward leaves torch"),
    (lint_models.NumpyInForward, "a NumPy function applied to a tensor"),
    (lint_models.MathInForward, "float(tensor) (or a math.* function on a tensor)"),
])
def test_opaque_call(cls, in_message):
    finding = only_finding(cls())
    assert finding.rule == "opaque-call"
    assert in_message in finding.message
    assert "keep the value a tensor" in finding.fix


def test_the_shipped_encoder_is_clean():
    assert lint_module(build_encoder(), (torch.tensor([[5, 7, 0, 0]]),)) == []


def test_finding_prints_as_file_line_rule_message_fix():
    finding = Finding("opaque-call", "/somewhere/else/model.py", 7, "It leaves torch.", "Keep tensors.")
    assert str(finding) == "/somewhere/else/model.py:7: opaque-call: It leaves torch. Fix: Keep tensors."
    assert finding.to_dict() == {"rule": "opaque-call", "file": "/somewhere/else/model.py", "line": 7,
                                 "message": "It leaves torch.", "fix": "Keep tensors.", "loses_parameters": False}


def test_model_state_and_rng_are_left_as_given():
    model = lint_models.CountsCalls().train()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.randn(2, 4)
    rng = torch.get_rng_state()
    assert lint_module(model, (x,)) == []
    assert model.training
    assert not hasattr(model, "last_input")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())

    lint_module(lint_models.BlockBuiltInForward(), (x,))  # its nn.Linear, built in forward, draws random numbers
    assert torch.equal(torch.get_rng_state(), rng)

    mixed = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    mixed[0].eval()
    lint_module(mixed, (torch.randn(2, 4),))
    assert [m.training for m in mixed.modules()] == [True, False, True]


def test_hooks_are_removed_when_forward_raises():
    from torch.nn.modules import module as module_internals

    model = lint_models.RaisesAfterBuildingALayer().train()
    x = torch.randn(2, 4)
    before = x.clone()
    init, showwarning = nn.Module.__init__, warnings.showwarning
    zeros, tensor_attributes = torch.zeros, dict(vars(torch.Tensor))
    global_hooks = [dict(getattr(module_internals, name)) for name in dir(module_internals)
                    if name.startswith("_global_") and name.endswith("hooks")]
    with pytest.raises(ConfigError, match=rf"RuntimeError at \S*lint_models.py:{pitfall_line(type(model))} "):
        lint_module(model, (x,))
    assert nn.Module.__init__ is init
    assert warnings.showwarning is showwarning
    assert torch.zeros is zeros and dict(vars(torch.Tensor)) == tensor_attributes
    assert torch._C._len_torch_function_stack() == 0
    assert torch.is_grad_enabled()
    assert [dict(getattr(module_internals, name)) for name in dir(module_internals)
            if name.startswith("_global_") and name.endswith("hooks")] == global_hooks
    assert model.training
    assert torch.equal(x, before)
    nn.ReLU()  # constructing a layer afterwards is not recorded anywhere
    assert lint_module(build_encoder(), (torch.tensor([[5, 7, 0, 0]]),)) == []
