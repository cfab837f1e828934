"""Small PyTorch models the tests export through the pipeline (importable as factories)."""

import torch
from torch import nn


class PlainSelfAttention(nn.Module):
    """Unmasked single-head self-attention: the pattern onnxsim fuses into com.microsoft::Attention."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(width, width, bias=False) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (layer(x).view(batch, length, 1, width).transpose(1, 2) for layer in (self.q, self.k, self.v))
        attention = torch.softmax(q @ k.transpose(-2, -1) / width ** 0.5, dim=-1)
        return (attention @ v).transpose(1, 2).reshape(batch, length, width)


def build_plain_attention() -> nn.Module:
    torch.manual_seed(0)
    return PlainSelfAttention().eval()


class ArticleFFN(nn.Module):
    """The position-wise FFN as first written in the article this project grew from: two layers
    built inside forward (their parameters are not in state_dict)."""

    def __init__(self, d_model: int = 8, d_ff: int = 16) -> None:
        super().__init__()
        self.d_model = d_model
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        residual = inputs
        output = nn.ReLU()(self.conv1(inputs.transpose(1, 2)))  # lint: layer-in-forward
        output = self.conv2(output).transpose(1, 2)
        return nn.LayerNorm(self.d_model)(output + residual)  # lint: layer-in-forward


def build_article_ffn() -> nn.Module:
    torch.manual_seed(0)
    return ArticleFFN().eval()


class CausalScores(nn.Module):
    """Scores masked above the diagonal with torch.triu, which exports from opset 14 on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        return torch.softmax(x.masked_fill(causal, -1e4), dim=-1)


def build_causal_scores() -> nn.Module:
    return CausalScores().eval()


class Differences(nn.Module):
    """torch.diff, which the TorchScript exporter cannot export at any opset."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.diff(x, dim=-1)


def build_differences() -> nn.Module:
    return Differences().eval()


def build_transformer_layer() -> nn.Module:
    """torch's own encoder layer: in eval mode without gradients it takes a fused fast path that
    has no ONNX export, so the export must run with gradients on."""
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True).eval()


class TorchAttention(nn.Module):
    """torch's nn.MultiheadAttention: without gradients it takes a fused path that has no ONNX
    export, and with them it exports through scaled_dot_product_attention (opset 14)."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


def build_torch_attention() -> nn.Module:
    torch.manual_seed(0)
    return TorchAttention().eval()


def build_conv_gelu_conv() -> nn.Module:
    """Conv1d -> GELU -> Conv1d, as in Whisper's audio stem: onnxsim can fold GELU's `* 0.5` into
    the second Conv's weights."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.GELU(), nn.Conv1d(8, 8, 3, padding=1)).eval()


def build_conv_bn_cnn() -> nn.Module:
    """Conv -> BatchNorm -> ReLU twice, pooled into a Linear: what ncnn2int8 quantizes, with a 1x1
    pooling of stride 1 (an identity) that ncnnoptimize removes. BatchNorm statistics are set away
    from the identity so that folding them matters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(1, 1),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


class TokenMixer(nn.Module):
    """[1, T, 8] tokens -> a Conv1d over T -> heads of 2 x 4 -> a Linear: every size follows T, as
    in a transformer fed sentences of several lengths."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        y = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear(y.reshape(batch, length, 2, width // 2)).reshape(batch, length, width)


def build_token_mixer() -> nn.Module:
    torch.manual_seed(0)
    return TokenMixer().eval()


class RunningSum(nn.Module):
    """Features summed over the tokens so far, `torch.cumsum` along the sequence: ncnn has
    CumulativeSum, which pnnx reaches from TorchScript's `aten::cumsum` but not from ONNX CumSum."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.linear(x), dim=1)


def build_running_sum() -> nn.Module:
    torch.manual_seed(0)
    return RunningSum().eval()


class RMSNormLinear(nn.Module):
    """A Linear and an RMS norm, `h * rsqrt(mean(h ** 2, -1) + eps)`: from opset 18 on, ReduceMean
    takes its axes as an input."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)


def build_rms_norm_linear() -> nn.Module:
    torch.manual_seed(0)
    return RMSNormLinear().eval()


class ConvPlusBias(nn.Module):
    """A Conv without bias, then its bias added: onnxsim's fuse_add_bias_into_conv makes it one Conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bias = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.bias


def build_conv_plus_bias() -> nn.Module:
    torch.manual_seed(0)
    return ConvPlusBias().eval()
