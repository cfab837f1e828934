"""The default model: a small transformer encoder written so that it exports and converts.

Token embedding, sinusoidal positions, a padding mask derived from the ids, multi-head
self-attention and a position-wise FFN built from Conv1d and LayerNorm. Every layer is created in
`__init__` (a layer built inside `forward` is missing from `state_dict` and re-initialised on
every call), and the mask is an additive bias (`(ids == pad) * -1e4`) rather than `masked_fill`,
which exports as `Where`, an op no NCNN converter maps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PAD_ID = 0


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads, self.d_head = heads, d_model // heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.project = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, d_model = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d_head) + mask_bias
        attention = torch.softmax(scores, dim=-1)
        context = torch.matmul(attention, v).transpose(1, 2).reshape(batch, length, d_model)
        return self.norm(self.project(context) + x), attention


class PositionwiseFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.activation = nn.ReLU()
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.activation(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
        return self.norm(y + x)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, d_ff: int) -> None:
        super().__init__()
        self.attention = MultiHeadSelfAttention(d_model, heads)
        self.ffn = PositionwiseFFN(d_model, d_ff)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, attention = self.attention(x, mask_bias)
        return self.ffn(x), attention


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)
    return table


class Encoder(nn.Module):
    """ids[B, T] (int64, PAD_ID for padding) -> (hidden[B, T, d_model], last attention[B, H, T, T])."""

    positions: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, vocab: int = 1000, d_model: int = 64, heads: int = 4, d_ff: int = 256,
                 layers: int = 2, max_len: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model)
        self.register_buffer("positions", sinusoid_table(max_len, d_model), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(d_model, heads, d_ff) for _ in range(layers))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = ids.shape
        mask_bias = (ids == PAD_ID).float().mul(-1e4).reshape(batch, 1, 1, length)
        x = self.embedding(ids) + self.positions[:length]
        attention = mask_bias
        for layer in self.layers:
            x, attention = layer(x, mask_bias)
        return x, attention


def build_encoder(seed: int = 0, **sizes: int) -> Encoder:
    """The shipped encoder with random weights from a fixed seed (no download)."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Encoder(**sizes)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()
