"""model.checkpoint: a state_dict that does not fit the model is a config error that counts what is
missing, left over or of another shape, and recognises a wrapped model's prefix; a file that is not
a state_dict says so without unpickling arbitrary objects."""
import pytest
import torch

from deploykit.core.errors import ConfigError
from deploykit.stages.export import _load_checkpoint


def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def saved(tmp_path, state, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def error_of(model, path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _load_checkpoint(model, path)
    assert caught.value.stage == "export"
    return caught.value


def test_a_fitting_state_dict_is_loaded(tmp_path):
    source, target = small(), small()
    with torch.no_grad():
        source[0].weight.add_(1.0)
    _load_checkpoint(target, saved(tmp_path, {"state_dict": source.state_dict()}))  # a training script's dict
    assert torch.equal(target[0].weight, source[0].weight)


def test_missing_left_over_and_resized_entries_are_counted(tmp_path):
    model = small()
    state = dict(model.state_dict())
    del state["2.bias"]
    state["0.weight"] = torch.zeros(5, 4)
    state["extra.weight"] = torch.zeros(1)
    error = error_of(model, saved(tmp_path, state))
    assert error.message.endswith("does not fit the model: 1 of the model's 4 entries is missing (2.bias); "
                                  "1 of the file's 4 is not in the model (extra.weight); "
                                  "1 has another shape (0.weight [5, 4] for [3, 4]).")
    assert "same architecture and model.kwargs" in error.hint


def test_a_wrapped_models_prefix_is_named_with_the_line_that_strips_it(tmp_path):
    model = small()
    error = error_of(model, saved(tmp_path, {f"module.{k}": v for k, v in model.state_dict().items()}))
    assert "4 of the model's 4 entries are missing (0.weight, 0.bias, 2.weight and 1 more)" in error.message
    assert error.hint.startswith("the file's names start with 'module.' (a wrapped model)")
    assert "k.removeprefix('module.')" in error.hint


def test_a_file_that_is_not_a_state_dict_says_what_it_holds(tmp_path):
    assert error_of(small(), saved(tmp_path, torch.zeros(3))).message.endswith("holds a Tensor, not a state_dict.")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not a checkpoint")
    error = error_of(small(), garbage)
    assert "cannot be read as a state_dict" in error.message and "torch.save(model.state_dict(), path)" in error.hint
    assert len(error.message) < 300
    assert error_of(small(), tmp_path / "nowhere.pt").message.endswith("nowhere.pt does not exist.")
