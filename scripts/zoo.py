"""The models the benchmarks measure: each a factory and an input spec.

Default set (no extra installs): the shipped encoder in three sizes, and small modules written
here in the patterns the rewrite passes target (strided slicing and `x[:, 0]`, causal masks
with `masked_fill`, channel shuffle through a 5-D reshape, an `argmax` at the end). Weights are
random from a fixed seed; nothing is downloaded.

Optional sets, listed only when their package imports: `torchvision` (CNNs, mobile CNNs, ViT-B/16,
DeepLabV3, and small configurations of its ConvNeXt and Swin classes, with `weights=None`), `timm`
(plain, hierarchical, window and conv-attention hybrid ViTs and mobile CNNs from
`timm.create_model(pretrained=False)`) and `transformers` (BERT-, RoBERTa-, DistilBERT-,
MobileBERT-, ALBERT- and T5-style encoders with the padding mask derived from the ids, GPT-2,
GPT-J and Llama decoders and a Whisper encoder, built from small configs). Classifiers get
measured BatchNorm statistics, woken near-zero weights and logits scaled to unit spread, so their
outputs are of order 1. See scripts/README.md for how to install them.

Every entry names its factory as "module:callable" so that `deploykit run` can build it from a
config; `zoo:...` factories need this folder (scripts/) on sys.path, which bench.py arranges.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# Custom modules, one per pattern the pass catalog targets


class PatchStemViT(nn.Module):
    """A ViT-style classifier: a Focus-like patch stem built from strided slices
    (`x[..., ::2, ::2]`...), a class token prepended with `expand`, one pre-norm attention block
    (q, k, v split from one fused projection through a 5-D reshape) with a GELU MLP, and the head
    on the class token `x[:, 0]`.

    With `focus=False, fused_qkv=False` the same block is written the plain way (a stride-4 conv
    stem, three projections reshaped within 4-D): the control that needs none of the passes.

    image[1, 3, image, image] -> logits[1, 10]."""

    def __init__(self, dim: int = 64, heads: int = 4, classes: int = 10, image: int = 32, focus: bool = True,
                 fused_qkv: bool = True) -> None:
        super().__init__()
        self.heads, self.d_head = heads, dim // heads
        self.focus, self.fused_qkv = focus, fused_qkv
        if focus:
            self.stem = nn.Conv2d(12, dim, kernel_size=3, stride=2, padding=1)
        else:
            self.stem = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        tokens = (image // 4) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        if fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.focus:  # space-to-depth by strided slicing (YOLOv5's Focus): stepped Slices
            image = torch.cat([image[..., ::2, ::2], image[..., 1::2, ::2], image[..., ::2, 1::2],
                               image[..., 1::2, 1::2]], 1)
        x = self.stem(image).flatten(2).transpose(1, 2)  # [B, tokens, dim]
        batch, length, dim = x.shape
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1) + self.pos_embed
        h = self.norm1(x)
        if self.fused_qkv:
            qkv = self.qkv(h).reshape(batch, length + 1, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = (layer(h).reshape(batch, length + 1, self.heads, self.d_head).transpose(1, 2)
                       for layer in (self.q, self.k, self.v))
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, length + 1, dim))
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return self.head(self.norm(x)[:, 0])


class CausalDecoderBlock(nn.Module):
    """A GPT-style decoder block as it is usually written: learned positions, a causal mask from
    `torch.triu` combined with the padding mask `ids == pad`, `masked_fill(mask, -inf)` on the
    scores, then an FFN.

    `pad_mask=False` leaves the padding mask out (the causal mask alone is a constant).

    ids[1, T] (int64, 0 = padding) -> hidden[1, T, dim]."""

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, max_len: int = 64,
                 pad_mask: bool = True) -> None:
        super().__init__()
        self.heads, self.d_head = heads, dim // heads
        self.pad_mask = pad_mask
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        positions = torch.arange(length, device=ids.device)
        x = self.embed(ids) + self.pos(positions)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=ids.device), diagonal=1)
        mask = causal | (ids == 0)[:, None, None, :] if self.pad_mask else causal
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, length, 3, self.heads, self.d_head).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        attention = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, length, -1))
        return x + self.ffn(self.norm2(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)  # 5-D
    return x.transpose(1, 2).contiguous().view(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1), 2)


class ShuffleCNN(nn.Module):
    """A small ShuffleNet-style CNN: channel split, depthwise conv, and the channel shuffle
    written as `view` to 5-D, `transpose`, `view` back.

    image[1, 3, H, W] -> logits[1, 10]."""

    def __init__(self, channels: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnit(channels), ShuffleUnit(channels))
        self.head = nn.Linear(channels, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(image))
        return self.head(x.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * stride
        self.conv1 = nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.down = (nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                     if stride != 1 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.down(x))


class ResNetMini(nn.Module):
    """A small ResNet (conv-bn-relu stem, max pool, basic blocks, global pool, fc): the control
    that every route should convert. image[1, 3, H, W] -> logits[1, 10]."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        self.blocks = nn.Sequential(BasicBlock(width), BasicBlock(width, 2), BasicBlock(2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(image))).flatten(1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise, 1x1 projection, each with BatchNorm, the
    first two followed by `act`; the residual add when the shape allows it."""

    def __init__(self, channels: int, out: int, stride: int, expand: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = channels * expand
        self.residual = stride == 1 and channels == out
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), act(),
            nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetMini(nn.Module):
    """A small MobileNetV2-style classifier at 224x224: a stride-2 stem, inverted residual blocks
    with ReLU6 (exported as Clip) and, in the last stage, hardswish (MobileNetV3's activation),
    global average pooling and a linear head. image[1, 3, H, W] -> logits[1, 10]."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, 1, 1, nn.ReLU6), InvertedResidual(width, 24, 2, 6, nn.ReLU6),
            InvertedResidual(24, 24, 1, 6, nn.ReLU6), InvertedResidual(24, 32, 2, 6, nn.ReLU6),
            InvertedResidual(32, 32, 1, 6, nn.ReLU6), InvertedResidual(32, 64, 2, 4, nn.Hardswish),
            InvertedResidual(64, 64, 1, 4, nn.Hardswish))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(image))).flatten(1))


class BertMini(nn.Module):
    """A BERT-style encoder as it is usually deployed: word, position and token-type embeddings
    added and normalised, post-norm blocks of self-attention and a GELU FFN built from Linear
    layers, and the padding mask as a second input (1.0 for a token, 0.0 for padding) turned into
    the additive bias `(1 - mask) * -10000` on the scores, as BERT does.

    ids[1, T] (int64), mask[1, T] (float32) -> hidden[1, T, dim]."""

    def __init__(self, vocab: int = 1000, dim: int = 64, heads: int = 4, layers: int = 2, d_ff: int = 256,
                 max_len: int = 64) -> None:
        super().__init__()
        self.heads, self.d_head = heads, dim // heads
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_len, dim)
        self.token_type = nn.Embedding(2, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(nn.ModuleDict({
            "q": nn.Linear(dim, dim), "k": nn.Linear(dim, dim), "v": nn.Linear(dim, dim), "out": nn.Linear(dim, dim),
            "norm1": nn.LayerNorm(dim, eps=1e-12), "ff1": nn.Linear(dim, d_ff), "act": nn.GELU(),
            "ff2": nn.Linear(d_ff, dim), "norm2": nn.LayerNorm(dim, eps=1e-12)}) for _ in range(layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        positions = torch.arange(length, device=ids.device)
        token_types = torch.zeros_like(positions)
        x = self.embed_norm(self.word(ids) + self.position(positions) + self.token_type(token_types))
        bias = (1.0 - mask)[:, None, None, :] * -10000.0
        for layer in self.layers:
            q, k, v = (layer[name](x).reshape(batch, length, self.heads, self.d_head).transpose(1, 2)
                       for name in ("q", "k", "v"))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head) + bias
            context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, -1)
            x = layer["norm1"](x + layer["out"](context))
            x = layer["norm2"](x + layer["ff2"](layer["act"](layer["ff1"](x))))
        return x


class ArgmaxClassifier(nn.Module):
    """An MLP classifier that returns the class index: `logits.argmax(-1)` at the end.

    features[1, 64] -> class[1] (int64)."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features)).argmax(dim=-1)


class MaskPositionEncoder(nn.Module):
    """Token and position embeddings where the positions come from the padding mask, as RoBERTa
    computes them: `mask = ids != pad`, `positions = cumsum(mask) * mask + pad` (pad positions get
    the pad row), then LayerNorm and one Linear.

    ids[1, T] (int64, `pad` = padding) -> hidden[1, T, dim]."""

    def __init__(self, vocab: int = 1000, dim: int = 64, max_len: int = 64, pad: int = 1) -> None:
        super().__init__()
        self.pad = pad
        self.embed = nn.Embedding(vocab, dim, padding_idx=pad)
        self.pos = nn.Embedding(max_len + pad + 1, dim, padding_idx=pad)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad).int()
        positions = torch.cumsum(mask, dim=1) * mask + self.pad
        return self.proj(self.norm(self.embed(ids) + self.pos(positions.long())))


class RotaryAttention(nn.Module):
    """Self-attention with rotary position embeddings applied to interleaved pairs, as GPT-J and
    many hand-written ports do: `x1, x2 = x[..., ::2], x[..., 1::2]`, the rotated half
    `stack((-x2, x1), -1).flatten(-2)`, then `x * cos + rotated * sin`, with cos/sin tables
    precomputed for `max_len` positions and sliced to the sequence. With `heads_last`, q and k are
    rotated as [B, T, heads, d] (GPT-J's layout), so `stack` makes a 5-D tensor.

    x[1, T, dim] -> y[1, T, dim]."""

    def __init__(self, dim: int = 64, heads: int = 4, max_len: int = 64, heads_last: bool = False) -> None:
        super().__init__()
        self.heads, self.d_head = heads, dim // heads
        self.heads_last = heads_last
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        frequencies = 1.0 / 10000 ** (torch.arange(0, self.d_head, 2).float() / self.d_head)
        angles = torch.outer(torch.arange(max_len).float(), frequencies).repeat_interleave(2, dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @staticmethod
    def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        if self.heads_last:  # GPT-J's layout: rotate q/k as [B, T, heads, d], tables broadcast over heads
            q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, self.d_head).unbind(2)
            cos, sin = self.cos[:length, None], self.sin[:length, None]
            q = (q * cos + self.rotate_pairs(q) * sin).transpose(1, 2)
            k = (k * cos + self.rotate_pairs(k) * sin).transpose(1, 2)
            v = v.transpose(1, 2)
        else:
            q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, self.d_head).permute(2, 0, 3, 1, 4)
            cos, sin = self.cos[:length], self.sin[:length]
            q = q * cos + self.rotate_pairs(q) * sin
            k = k * cos + self.rotate_pairs(k) * sin
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_head), dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, length, dim))


class ThresholdGate(nn.Module):
    """An MLP with a float-threshold gate: `torch.where(h > threshold, h, 0)` between two Linears
    (a shifted ReLU that keeps the value, as in sparse activations).

    features[1, 64] -> y[1, 32]."""

    def __init__(self, features: int = 64, hidden: int = 128, out: int = 32, threshold: float = 0.1) -> None:
        super().__init__()
        self.threshold = threshold
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.fc1(features)
        return self.fc2(torch.where(h > self.threshold, h, 0.0))


def _seeded(cls: type, seed: int = 0, **kwargs: Any) -> nn.Module:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = cls(**kwargs)
        for module in model.modules():  # BatchNorm with non-trivial running statistics
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def build_vit_block(seed: int = 0, **kwargs: Any) -> nn.Module:
    return _seeded(PatchStemViT, seed, **kwargs)


def build_decoder_block(seed: int = 0, **kwargs: Any) -> nn.Module:
    return _seeded(CausalDecoderBlock, seed, **kwargs)


def build_shuffle_cnn(seed: int = 0, **kwargs: Any) -> nn.Module:
    return _seeded(ShuffleCNN, seed, **kwargs)


def build_resnet_mini(seed: int = 0, **kwargs: Any) -> nn.Module:
    return _seeded(ResNetMini, seed, **kwargs)


def build_argmax_classifier(seed: int = 0, **kwargs: Any) -> nn.Module:
    return _seeded(ArgmaxClassifier, seed, **kwargs)


def build_mobilenet_mini(seed: int = 0, **kwargs: Any) -> nn.Module:
    return _seeded(MobileNetMini, seed, **kwargs)


def build_bert_mini(seed: int = 0, **kwargs: Any) -> nn.Module:
    model = _seeded(BertMini, seed, **kwargs)
    with torch.no_grad():  # trained LayerNorms are not the identity nn.LayerNorm starts as
        generator = torch.Generator().manual_seed(seed)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
    return model


def _padding_mask(length: int, pad: int) -> list[list[float]]:
    return [[1.0] * (length - pad) + [0.0] * pad]


def build_module(module: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """One of this file's modules by class name (`{"module": "ThresholdGate"}` in a config)."""
    return _seeded(globals()[module], seed, **kwargs)


# ---------------------------------------------------------------------------------------------
# Optional: torchvision and transformers (random weights, built from code, no download)


class _SegmentationMap(nn.Module):
    """image -> the "out" map of a torchvision segmentation model (which returns a dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["out"]


def _give_signal(model: nn.Module, image: int) -> None:
    """Make a randomly initialised torchvision model's outputs worth comparing.

    torchvision's initialisation is meant for training, and in eval mode it leaves outputs that
    an atol of 1e-4 cannot tell apart from zero: with BatchNorm's initial statistics (mean 0,
    variance 1), the activations of mobilenet_v2 shrink layer by layer to logits of ~3e-9, and
    ViT's head and class token start at zero (all logits exactly 0). So weight tensors that are
    all zero get N(0, 0.02), and BatchNorm's running statistics are measured on four random
    images of the model's input size (a cumulative average over one batch in train mode), so
    every layer sees activations of unit scale, as a trained model's do."""
    with torch.no_grad():
        _wake_dead_weights(model)
        norms = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        if norms:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # cumulative average
            model.train()
            model(torch.randn(4, 3, image, image))
            for norm, momentum in norms.items():
                norm.momentum = momentum
    model.eval()


def _unit_logits(model: nn.Module, image: int) -> None:
    """Scale a classifier's last Linear layers (every one writing as many features as there are
    logits: LeViT averages two heads) so that its logits have a standard deviation of 1 on a
    random image: random heads initialised at std 0.02 give logits of ~0.01 on some models, where
    atol 1e-4 is a loose test, and a woken LeViT gives ~40."""
    with torch.no_grad():
        logits = model(torch.randn(1, 3, image, image))
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            return
        heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == logits.shape[-1]]
        scale = 1.0 / float(logits.std())
        for head in heads:
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.mul_(scale)


def _wake_dead_weights(model: nn.Module) -> None:
    """Weights a library starts at zero or nearly zero so that training begins from an identity
    (ViT heads, LeViT's attention biases and zero-gamma residual BatchNorms, ConvNeXt's layer scale
    of 1e-6) would make whole branches invisible to a comparison at atol 1e-4: matrices get
    N(0, 0.02), and per-channel scales (1-D, not a bias) get 1."""
    for name, parameter in model.named_parameters():
        if not parameter.numel() or parameter.abs().max() >= 1e-4:
            continue
        if parameter.dim() >= 2:
            parameter.normal_(0.0, 0.02)
        elif not name.endswith("bias"):
            parameter.fill_(1.0)


def build_torchvision(name: str, seed: int = 0, image: int = 224, **kwargs: Any) -> nn.Module:
    """`torchvision.models.<name>(weights=None, **kwargs)` (e.g. `image_size` for a ViT), or
    `torchvision.models.segmentation.<name>`, which also gets `weights_backbone=None` (its default
    downloads the backbone's ImageNet weights) and is wrapped to return its "out" map. A class
    name (`SwinTransformer`, `ConvNeXt`) is called with `kwargs` alone, for a small configuration
    of the library's own architecture; `block_setting` lists are turned into the config objects
    the class takes (`{"cls": "CNBlockConfig", "args": [...]}` -> `CNBlockConfig(*args)`). `image`
    is the input size its BatchNorm statistics are measured at (see `_give_signal`)."""
    import torchvision

    segmentation = not hasattr(torchvision.models, name) and hasattr(torchvision.models.segmentation, name)
    if segmentation:
        kwargs.setdefault("weights_backbone", None)
    constructor = getattr(torchvision.models.segmentation if segmentation else torchvision.models, name)
    if not isinstance(constructor, type):
        kwargs["weights"] = None
    kwargs = {key: _torchvision_configs(value) for key, value in kwargs.items()}
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = constructor(**kwargs)
        _give_signal(model, image)
        if not segmentation:
            _unit_logits(model, image)
    finally:
        torch.random.set_rng_state(state)
    return _SegmentationMap(model).eval() if segmentation else model


def _torchvision_configs(value: Any) -> Any:
    """`[{"cls": "CNBlockConfig", "args": [96, 192, 3]}, ...]` -> a list of that torchvision
    config class's objects (kept as plain data in the zoo so that a YAML config can hold it)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) and "cls" in v for v in value):
        import torchvision.models.convnext as convnext

        return [getattr(convnext, v["cls"])(*v["args"]) for v in value]
    return value


def build_timm(name: str, seed: int = 0, image: int = 224, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, pretrained=False, **kwargs)` with random weights from `seed`;
    `kwargs` make a small configuration of the architecture (`depths`, `embed_dim`...). BatchNorm
    statistics are measured at `image` and near-zero weights woken (see `_give_signal`)."""
    import timm

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, **kwargs)
        _give_signal(model, image)
        _unit_logits(model, image)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


class _HiddenStates(nn.Module):
    """input -> last hidden state, for a transformers model (which returns a ModelOutput); the
    input is passed as the keyword `argument` (`input_ids`, or `input_features` for an audio
    encoder). With `pad` set, the padding mask is derived from the ids, as a user's wrapper does:
    `attention_mask=(ids != pad)`, as a bool tensor or cast to `mask_dtype` (e.g. "int64", what a
    tokenizer returns)."""

    def __init__(self, model: nn.Module, argument: str = "input_ids", pad: Optional[int] = None,
                 mask_dtype: str = "bool") -> None:
        super().__init__()
        self.model = model
        self.argument = argument
        self.pad = pad
        self.mask_dtype = getattr(torch, mask_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keywords = {self.argument: ids}
        if self.pad is not None:
            keywords["attention_mask"] = (ids != self.pad).to(self.mask_dtype)
        return self.model(**keywords, return_dict=False)[0]


def build_transformers(kind: str, seed: int = 0, pad: Optional[int] = None, mask_dtype: str = "bool") -> nn.Module:
    """A transformers architecture of `kind` from a small config (2 layers, d=64, eager attention),
    random weights from `seed`; `pad`: derive the attention mask from the ids (`_HiddenStates`)."""
    import transformers

    argument = "input_ids"
    small = {"vocab_size": 1000, "attn_implementation": "eager"}
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if kind == "bert":
            config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=256,
                                             max_position_embeddings=64, attn_implementation="eager")
            model = transformers.BertModel(config, add_pooling_layer=False)
        elif kind == "gpt2":
            # bos/eos inside the small vocabulary (GPT-2's 50256 would be out of range)
            config = transformers.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=999, eos_token_id=999, attn_implementation="eager",
                                             use_cache=False)
            model = transformers.GPT2Model(config)
        elif kind == "distilbert":
            config = transformers.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=256,
                                                   max_position_embeddings=64, attn_implementation="eager")
            model = transformers.DistilBertModel(config)
        elif kind == "whisper_encoder":
            # the audio encoder of Whisper: two Conv1d + GELU (the second with stride 2) over log-mel
            # features, fixed positions, pre-norm attention blocks; it takes exactly
            # 2 * max_source_positions frames (here 100, one second at Whisper's 10 ms hop)
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            config = transformers.WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2,
                                                encoder_attention_heads=4, encoder_ffn_dim=256,
                                                max_source_positions=50, attn_implementation="eager")
            model, argument = WhisperEncoder(config), "input_features"
        elif kind == "roberta":
            # RoBERTa's position ids come from the mask of non-pad ids: cumsum(ids != pad) * mask + pad
            config = transformers.RobertaConfig(**small, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=256, max_position_embeddings=66, pad_token_id=1)
            model = transformers.RobertaModel(config, add_pooling_layer=False)
        elif kind == "mobilebert":
            # bottleneck layers (d=64 in, 32 inside), NoNorm, stacked FFNs, 3-gram embedding
            config = transformers.MobileBertConfig(**small, hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=128,
                                                   intra_bottleneck_size=32, embedding_size=32,
                                                   true_hidden_size=32, max_position_embeddings=64,
                                                   initializer_range=0.1)  # at 0.02 its output is ~0.03
            model = transformers.MobileBertModel(config, add_pooling_layer=False)
        elif kind == "albert":
            config = transformers.AlbertConfig(**small, embedding_size=32, hidden_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=256,
                                               max_position_embeddings=64)
            model = transformers.AlbertModel(config, add_pooling_layer=False)
        elif kind == "t5_encoder":
            # relative position buckets, RMS norm, no biases, gated-GELU FFN
            config = transformers.T5Config(**small, d_model=64, d_kv=16, d_ff=256, num_layers=2, num_heads=4,
                                           feed_forward_proj="gated-gelu", decoder_start_token_id=0)
            model = transformers.T5EncoderModel(config)
        elif kind == "gptj":
            # rotary embeddings applied to interleaved pairs (x[..., ::2], x[..., 1::2], stack, flatten)
            config = transformers.GPTJConfig(**small, n_embd=64, n_layer=2, n_head=4, rotary_dim=16, n_positions=64,
                                             bos_token_id=999, eos_token_id=999, use_cache=False)
            model = transformers.GPTJModel(config)
        elif kind == "llama":
            # rotary embeddings by rotate_half, RMSNorm, SiLU-gated MLP, grouped-query attention
            config = transformers.LlamaConfig(**small, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=64, bos_token_id=999, eos_token_id=999,
                                              pad_token_id=0, use_cache=False)
            model = transformers.LlamaModel(config)
        else:
            raise ValueError(f"unknown transformers model {kind!r}")
    finally:
        torch.random.set_rng_state(state)
    return _HiddenStates(model.eval(), argument, pad, mask_dtype).eval()


# ---------------------------------------------------------------------------------------------
# The list


def _sentence(length: int, vocab: int, pad: int, seed: int = 0, pad_id: int = 0) -> list[list[int]]:
    """One sentence of token ids in (pad_id, vocab) followed by `pad` padding ids (`pad_id`)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(pad_id + 1, vocab, size=length).tolist()
    return [ids[:length - pad] + [pad_id] * pad]


@dataclass
class ZooModel:
    name: str
    factory: str  # "module:callable", as `model.factory` of a deploykit config
    kwargs: dict[str, Any]
    inputs: list[dict[str, Any]]  # deploykit `inputs:` entries (name, shape, dtype, data/range)
    output_names: list[str]
    group: str = "default"  # default | torchvision | transformers
    pattern: str = ""  # what it exercises
    opset: int = 13  # ONNX opset of every ONNX route (deploykit's default is 13)
    note: str = ""

    def build(self) -> nn.Module:
        module_name, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attr)(**self.kwargs)

    @property
    def recipe(self) -> dict[str, Any]:
        """Config keys of the documented deploykit recipe for this model ({} when there is none)."""
        return RECIPES.get(self.name, {})

    def config(self, output: str, recipe: bool = False) -> dict[str, Any]:
        """The deploykit config (as a mapping) for this model, writing into `output`; with
        `recipe`, plus the model's recipe keys (e.g. `cut_at`)."""
        config: dict[str, Any] = {
            "seed": 0,
            "model": {"factory": self.factory, "kwargs": dict(self.kwargs)},
            "inputs": [dict(spec) for spec in self.inputs],
            "export": {"opset": self.opset, "output_names": list(self.output_names)},
            "passes": "auto",
            "converter": {"name": "pnnx", "fp16": False},
            "parity": {"atol": 1e-4, "rtol": 1e-3},
            "output": output,
        }
        if recipe:
            config.update(self.recipe)
        return config


def _encoder(name: str, length: int, pad: int, **sizes: int) -> ZooModel:
    return ZooModel(
        name=name, factory="deploykit.models.encoder:build_encoder", kwargs={"seed": 0, **sizes},
        inputs=[{"name": "ids", "dtype": "int64", "shape": [1, length],
                 "data": _sentence(length, sizes["vocab"], pad)}],
        output_names=["hidden", "attention"],
        pattern=f"shipped encoder, d_model={sizes['d_model']}, {sizes['layers']} layers, T={length}")


DEFAULT: list[ZooModel] = [
    _encoder("encoder_s", 16, 4, vocab=1000, d_model=64, heads=4, d_ff=256, layers=2, max_len=64),
    _encoder("encoder_m", 64, 16, vocab=8000, d_model=256, heads=8, d_ff=1024, layers=4, max_len=64),
    _encoder("encoder_l", 128, 32, vocab=30000, d_model=512, heads=8, d_ff=2048, layers=6, max_len=128),
    ZooModel("vit_block", "zoo:build_vit_block", {"seed": 0, "dim": 128, "image": 64},
             [{"name": "image", "shape": [1, 3, 64, 64]}], ["logits"],
             pattern="strided-slice patch stem, cls token via expand, x[:, 0], GELU"),
    ZooModel("vit_plain", "zoo:build_vit_block", {"seed": 0, "dim": 128, "image": 64, "focus": False,
                                                  "fused_qkv": False},
             [{"name": "image", "shape": [1, 3, 64, 64]}], ["logits"],
             pattern="control: the ViT block with a conv stem and 4-D head split; cls token, x[:, 0]"),
    ZooModel("decoder_block", "zoo:build_decoder_block", {"seed": 0},
             [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 4)}], ["hidden"],
             pattern="causal mask (torch.triu) or padding mask (ids == 0), masked_fill(-inf)",
             opset=14),  # torch.triu exports from opset 14 on
    ZooModel("decoder_causal", "zoo:build_decoder_block", {"seed": 0, "pad_mask": False},
             [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 4)}], ["hidden"],
             pattern="the decoder block with the causal mask alone, masked_fill(-inf)", opset=14),
    ZooModel("shuffle_cnn", "zoo:build_shuffle_cnn", {"seed": 0},
             [{"name": "image", "shape": [1, 3, 128, 128]}], ["logits"],
             pattern="chunk, depthwise conv, channel shuffle via 5-D view"),
    ZooModel("resnet_mini", "zoo:build_resnet_mini", {"seed": 0},
             [{"name": "image", "shape": [1, 3, 224, 224]}], ["logits"],
             pattern="control: small ResNet (conv, bn, residual add, pools, fc)"),
    ZooModel("argmax_classifier", "zoo:build_argmax_classifier", {"seed": 0},
             [{"name": "features", "shape": [1, 64]}], ["label"],
             pattern="MLP classifier ending in argmax"),
    ZooModel("mobilenet_mini", "zoo:build_mobilenet_mini", {"seed": 0},
             [{"name": "image", "shape": [1, 3, 224, 224]}], ["logits"],
             pattern="MobileNetV2-style at 224x224: inverted residuals, depthwise convs, ReLU6, hardswish"),
    ZooModel("bert_mini", "zoo:build_bert_mini", {"seed": 0},
             [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 4)},
              {"name": "mask", "shape": [1, 16], "data": _padding_mask(16, 4)}], ["hidden"],
             pattern="BERT-style encoder: word/position/type embeddings, post-norm, GELU, padding mask input"),
]

# Small plain-torch modules written the way people write the patterns the public models need:
# position ids from the padding mask (cumsum), interleaved rotary embeddings, a float-threshold gate.
FAMILY_MODULES: list[ZooModel] = [
    ZooModel("mask_positions", "zoo:build_module", {"module": "MaskPositionEncoder", "seed": 0},
             [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 4, pad_id=1)}],
             ["hidden"], pattern="position ids from the padding mask: cumsum(ids != pad) * mask + pad"),
    ZooModel("rotary_attention", "zoo:build_module", {"module": "RotaryAttention", "seed": 0},
             [{"name": "x", "shape": [1, 16, 64]}], ["y"],
             pattern="rotary embeddings on interleaved pairs: x[..., ::2], x[..., 1::2], stack, flatten"),
    ZooModel("rotary_heads_last", "zoo:build_module", {"module": "RotaryAttention", "seed": 0, "heads_last": True},
             [{"name": "x", "shape": [1, 16, 64]}], ["y"],
             pattern="the same rotation on q/k laid out [B, T, heads, d] (GPT-J's layout): stack makes 5-D"),
    ZooModel("threshold_gate", "zoo:build_module", {"module": "ThresholdGate", "seed": 0},
             [{"name": "features", "shape": [1, 64]}], ["y"],
             pattern="float-threshold gate torch.where(h > 0.1, h, 0) between two Linears"),
]

# `deploykit` keys for the documented recipe of a model: the route "deploykit+recipe" runs them.
RECIPES: dict[str, dict[str, Any]] = {
    # ncnn has no ArgMax implementation: convert up to the logits, run the argmax on the host.
    "argmax_classifier": {"cut_at": ["/head/Gemm_output_0"]},
}

TORCHVISION = [
    ZooModel(name, "zoo:build_torchvision", {"name": name, "seed": 0},
             [{"name": "image", "shape": [1, 3, 224, 224]}], ["logits"], group="torchvision",
             pattern=f"torchvision.models.{name}(weights=None)")
    for name in ("resnet18", "mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x1_0")
] + [
    # ViT-B/16 at 112x112 (7x7 patches + class token, 50 tokens): the full 12-layer, 86M-parameter
    # model (torchvision builds the position embedding for the image size it is given), so its
    # conversion time is bound by the 345 MB of weights, not the image size. Opset 14: its
    # nn.MultiheadAttention exports through scaled_dot_product_attention, which needs 14.
    ZooModel("vit_b_16", "zoo:build_torchvision", {"name": "vit_b_16", "seed": 0, "image": 112, "image_size": 112},
             [{"name": "image", "shape": [1, 3, 112, 112]}], ["logits"], group="torchvision",
             pattern="torchvision.models.vit_b_16(weights=None, image_size=112): conv patchify, "
                     "class token, nn.MultiheadAttention, x[:, 0]", opset=14),
    # DeepLabV3 on a MobileNetV3-Large backbone (11M parameters; the ResNet-50 one has 42M and runs
    # its last stages at 1/8 resolution), at 160x160: dilated convs, ASPP with its image pooling
    # branch upsampled back, and the final bilinear upsample to the input size
    ZooModel("deeplabv3", "zoo:build_torchvision", {"name": "deeplabv3_mobilenet_v3_large", "seed": 0,
                                                    "image": 160},
             [{"name": "image", "shape": [1, 3, 160, 160]}], ["out"], group="torchvision",
             pattern="torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, "
                     "weights_backbone=None): dilated convs, hardswish, ASPP, bilinear upsampling"),
]


def _vision(group: str, factory: str, zoo_name: str, image: int, pattern: str, opset: int = 13,
            **kwargs: Any) -> ZooModel:
    """An image classifier of a library's zoo at `image` x `image`, named `zoo_name` in the zoo;
    `kwargs` go to the factory."""
    return ZooModel(zoo_name, factory, {"seed": 0, "image": image, **kwargs},
                    [{"name": "image", "shape": [1, 3, image, image]}], ["logits"], group=group,
                    pattern=pattern, opset=opset)


_CONVNEXT_SMALL = [{"cls": "CNBlockConfig", "args": [48, 96, 2]}, {"cls": "CNBlockConfig", "args": [96, 192, 2]},
                   {"cls": "CNBlockConfig", "args": [192, None, 2]}]

TORCHVISION += [
    _vision("torchvision", "zoo:build_torchvision", name, 224, f"torchvision.models.{name}(weights=None): {what}",
            name=name)
    for name, what in (("mobilenet_v3_small", "hardswish, squeeze-excitation"),
                       ("efficientnet_b0", "MBConv, SiLU, squeeze-excitation"),
                       ("regnet_y_400mf", "grouped convs, squeeze-excitation"))
] + [
    _vision("torchvision", "zoo:build_torchvision", "tv_convnext_small", 224,
            "torchvision ConvNeXt(3 stages 48/96/192, 2 blocks each): 7x7 depthwise, LayerNorm2d via permute, "
            "layer scale", name="ConvNeXt", block_setting=_CONVNEXT_SMALL, stochastic_depth_prob=0.0),
    _vision("torchvision", "zoo:build_torchvision", "tv_swin_small", 224,
            "torchvision SwinTransformer(embed_dim 96, depths [2, 2], window 7): window partition, shifted "
            "windows (roll) with their attention mask, patch merging", name="SwinTransformer",
            patch_size=[4, 4], embed_dim=96, depths=[2, 2], num_heads=[3, 6], window_size=[7, 7]),
]

# Opset 14 for every timm model: timm's attention calls F.scaled_dot_product_attention, which
# exports from opset 14 on (the CNNs do not care).
TIMM = [
    _vision("timm", "zoo:build_timm", f"timm_{short}", image, f"timm {name}: {what}", opset=14, name=name,
            **kwargs)
    for short, name, image, what, kwargs in (
        ("deit_tiny", "deit_tiny_patch16_224", 224, "plain ViT, class token", {}),
        ("swin_small", "swin_tiny_patch4_window7_224", 224,
         "Swin (embed_dim 96, depths (2, 2)): window partition, shifted windows, relative position bias",
         {"depths": (2, 2), "num_heads": (3, 6)}),
        ("levit_128s", "levit_128s", 224, "LeViT: conv stem, attention with strided subsample and learned "
                                          "attention biases, BatchNorm on tokens", {}),
        ("mobilevit_xxs", "mobilevit_xxs", 256, "MobileViT: unfold patches into a transformer and fold back", {}),
        ("mobilevitv2_050", "mobilevitv2_050", 256, "MobileViTv2: separable linear attention", {}),
        ("efficientformerv2_s0", "efficientformerv2_s0", 224,
         "EfficientFormerV2: conv stages, attention with talking heads and strided attention", {}),
        ("edgenext_xx_small", "edgenext_xx_small", 256, "EdgeNeXt: split depthwise-transpose attention", {}),
        ("efficientvit_m0", "efficientvit_m0", 224, "EfficientViT (MSRA): cascaded group attention", {}),
        ("tiny_vit_5m", "tiny_vit_5m_224", 224, "TinyViT: conv stage, window attention with attention biases",
         {"num_classes": 1000}),
        ("ghostnet", "ghostnet_100", 224, "GhostNet: ghost modules (cheap depthwise features), SE", {}),
        ("mobilenetv4_small", "mobilenetv4_conv_small", 224, "MobileNetV4 conv: universal inverted bottleneck", {}),
        ("convnext_atto", "convnext_atto", 224, "ConvNeXt-atto: 7x7 depthwise, LayerNorm2d, layer scale", {}),
        ("pvt_v2_b0", "pvt_v2_b0", 224, "PVTv2: overlapping patch embed, spatial-reduction attention, "
                                        "depthwise conv in the MLP", {}),
        ("coat_lite_tiny", "coat_lite_tiny", 224, "CoaT-Lite: conv position encoding, factorised attention", {}),
        ("fastvit_t8", "fastvit_t8", 256, "FastViT: reparameterisable RepMixer blocks", {}),
        ("repvit_m0_9", "repvit_m0_9", 224, "RepViT: reparameterisable depthwise blocks, SE", {}),
        ("mixer_s16", "mixer_s16_224", 224, "MLP-Mixer: token mixing by Linears over the transposed tokens", {}),
    )
]

TRANSFORMERS = [
    ZooModel(f"hf_{kind}_tiny", "zoo:build_transformers", {"kind": kind, "seed": 0},
             [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 0)}], ["hidden"],
             group="transformers", pattern=f"transformers {kind} from a config (2 layers, d=64), eager attention")
    for kind in ("bert", "gpt2", "distilbert")
] + [
    ZooModel("hf_whisper_tiny", "zoo:build_transformers", {"kind": "whisper_encoder", "seed": 0},
             [{"name": "features", "shape": [1, 80, 100], "range": [-1.0, 1.0]}], ["hidden"],
             group="transformers",
             pattern="transformers WhisperEncoder from a config (2 layers, d=64, 80 mel bins x 100 frames), "
                     "eager attention"),
]


def _masked_text(name: str, kind: str, pattern: str, pad: int = 0, mask_dtype: str = "bool",
                 opset: int = 13) -> ZooModel:
    """A transformers encoder fed ids with a quarter of padding and the mask derived from them."""
    return ZooModel(name, "zoo:build_transformers", {"kind": kind, "seed": 0, "pad": pad, "mask_dtype": mask_dtype},
                    [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 4, pad_id=pad)}],
                    ["hidden"], group="transformers", opset=opset,
                    pattern=f"{pattern}; attention_mask=(ids != {pad})"
                            + ("" if mask_dtype == "bool" else f".to({mask_dtype})"))


TRANSFORMERS += [
    _masked_text("hf_bert_mask", "bert", "transformers bert (2 layers, d=64), eager attention"),
    _masked_text("hf_distilbert_mask", "distilbert", "transformers distilbert (2 layers, d=64), eager attention",
                 mask_dtype="int64"),
    _masked_text("hf_roberta_mask", "roberta", "transformers roberta (2 layers, d=64): positions from "
                                               "cumsum of the mask", pad=1, mask_dtype="int64"),
    _masked_text("hf_mobilebert_mask", "mobilebert", "transformers mobilebert (2 layers, bottleneck 64->32, "
                                                     "NoNorm)", mask_dtype="int64"),
    _masked_text("hf_albert_mask", "albert", "transformers albert (shared layers, factorised embedding)",
                 mask_dtype="int64"),
    _masked_text("hf_t5_encoder_mask", "t5_encoder", "transformers T5EncoderModel (2 layers, d=64): relative "
                                                     "position buckets, RMS norm, gated GELU", mask_dtype="int64"),
] + [
    ZooModel(f"hf_{kind}_tiny", "zoo:build_transformers", {"kind": kind, "seed": 0},
             [{"name": "ids", "dtype": "int64", "shape": [1, 16], "data": _sentence(16, 1000, 0)}], ["hidden"],
             group="transformers", pattern=pattern)
    for kind, pattern in (
        ("gptj", "transformers GPT-J (2 layers, d=64): rotary on interleaved pairs (x[..., ::2], stack, flatten)"),
        ("llama", "transformers Llama (2 layers, d=64): rotary by rotate_half, RMSNorm, SiLU gate, GQA"),
    )
]

GROUPS = {"default": DEFAULT + FAMILY_MODULES, "torchvision": TORCHVISION, "timm": TIMM,
          "transformers": TRANSFORMERS}
_GROUP_PACKAGE = {"torchvision": "torchvision", "timm": "timm", "transformers": "transformers"}


def group_available(group: str) -> bool:
    package = _GROUP_PACKAGE.get(group)
    return package is None or importlib.util.find_spec(package) is not None


def models(groups: tuple[str, ...] = ("default",), names: tuple[str, ...] = ()) -> list[ZooModel]:
    """The zoo entries of the given groups whose packages import (unknown groups are an error),
    optionally only those named."""
    chosen: list[ZooModel] = []
    for group in groups:
        if group not in GROUPS:
            raise ValueError(f"unknown zoo group {group!r}; known: {', '.join(GROUPS)}")
        if group_available(group):
            chosen += GROUPS[group]
    if names:
        every = {m.name: m for g in GROUPS.values() for m in g}
        unknown = [n for n in names if n not in every]
        if unknown:
            raise ValueError(f"unknown zoo model(s) {', '.join(unknown)}; known: {', '.join(every)}")
        chosen = [every[n] for n in names]
    return chosen


def by_name(name: str) -> ZooModel:
    return models(names=(name,))[0]
