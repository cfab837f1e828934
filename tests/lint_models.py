"""Small PyTorch modules, one export pitfall each, for tests/test_lint.py.

The offending line of each class ends with the comment `# pitfall`; the tests find the line number
from it, so lines may move without breaking the tests.
"""

import math

import numpy as np
import torch
from torch import nn


class ReluBuiltInForward(nn.Module):
    """The article's first mistake: a parameter-free layer constructed in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.ReLU()(self.linear(x))  # pitfall


class LayerNormBuiltInForward(nn.Module):
    """The article's second mistake: the LayerNorm weights are new, untrained ones on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.LayerNorm(4)(x)  # pitfall


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.register_buffer("offset", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset


class BlockBuiltInForward(nn.Module):
    """A user-defined block built in forward: one finding here, none for the layers inside Block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Block(4)(x)  # pitfall


class ZerosWithoutDevice(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(x.shape[-1])  # pitfall
        return x + bias


class OnesInWrongDtype(nn.Module):
    """A float64 model adding a float32 tensor: device= is given, dtype= is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + torch.ones(4, device=x.device)  # pitfall


class BranchOnTensorValue(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # pitfall
            return x * 2
        return x


class LoopOverTensor(nn.Module):
    """Only tracing sees this one: iterating over a tensor unrolls the loop."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x[0] * 0
        for row in x:  # pitfall
            total = total + row
        return total


class AddInPlaceOnInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1)  # pitfall
        return x * 2


class AssignIntoInput(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x[:, 0] = 0  # pitfall
        return x + 1


class InplaceReluOnInput(nn.Module):
    """The write happens inside torch (F.relu_), the finding names the user's call."""

    def __init__(self) -> None:
        super().__init__()
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)  # pitfall


class ItemInForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.abs().max().item()  # pitfall


class NumpyInForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_tensor(np.tanh(np.asarray(x)))  # pitfall


class MathInForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / math.sqrt(x.pow(2).sum())  # pitfall


class CountsCalls(nn.Module):
    """Changes its own state in forward; lint must undo that."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.weight.mul_(2)
        self.last_input = x
        return x * self.weight


class RaisesAfterBuildingALayer(nn.Module):
    """Raises halfway through forward, while every lint hook is installed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.ReLU()(x)
        x.add_(1)
        raise RuntimeError("shape mismatch on purpose")  # pitfall


class LoopCountingForwards(nn.Module):
    """LoopOverTensor's pitfall, and a count of forward calls kept where lint does not restore it."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        total = x[0] * 0
        for row in x:  # pitfall
            total = total + row
        return total


class CachesInEval(nn.Module):
    """Like timm's LeViT: in eval mode, forward caches a lookup of its own parameter the first time."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(6))
        self.register_buffer("index", torch.tensor([3, 1, 4, 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x + self.table[self.index]
        if "cached" not in self.__dict__:
            self.cached = self.table[self.index].detach()
        return x + self.cached


class BranchOnADefault(nn.Module):
    """Clean: `causal` is a Python bool. The TorchScript exporter appends it to the traced inputs as a
    tensor, so its own trace warns about this line."""

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        if causal:
            return x.tril()
        return x * 2
