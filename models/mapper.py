"""Mappers from a CLIP feature (+ optional style vector) to K GPT-2 prefix embeddings.

Module and parameter names follow ClipCap's released checkpoints (``clip_project.model.0.weight``,
``clip_project.transformer.layers.{i}.attn.to_queries.weight``, ...) so those files load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPMapper(nn.Module):
    """ClipCap's MLP: Linear(in, E*K/2) -> Tanh -> Linear(E*K/2, E*K), reshaped to (B, K, E)."""

    def __init__(self, in_dim: int, prefix_len: int, embed_dim: int):
        super().__init__()
        self.prefix_len, self.embed_dim = prefix_len, embed_dim
        hidden = embed_dim * prefix_len // 2
        self.model = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, embed_dim * prefix_len))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, K, E)
        return self.model(x).view(x.shape[0], self.prefix_len, self.embed_dim)


class LinearMapper(nn.Linear):
    """The single Linear that ClipCap's inference code used when K > 10 (keys clip_project.weight/bias)."""

    def __init__(self, in_dim: int, prefix_len: int, embed_dim: int):
        super().__init__(in_dim, embed_dim * prefix_len)
        self.prefix_len, self.embed_dim = prefix_len, embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, K, E)
        return super().forward(x).view(x.shape[0], self.prefix_len, self.embed_dim)


class MultiHeadAttention(nn.Module):
    """ClipCap's self-attention: q and kv projections without bias, output projection with bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, dim * 2, bias=False)  # rows: all keys, then all values
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C)
        b, n, c = x.shape
        h = self.num_heads
        q = self.to_queries(x).view(b, n, h, c // h).transpose(1, 2)  # (B, H, N, C/H)
        kv = self.to_keys_values(x).view(b, n, 2, h, c // h)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # (B, H, N, C/H)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C/H)) v, no mask
        return self.project(out.transpose(1, 2).reshape(b, n, c))


class MlpBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.mlp = MlpBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    """ClipCap's Transformer mapper.

    The feature is projected to ``constant_len`` (clip_length) tokens, concatenated with K learned
    constant tokens, run through the transformer (no positions, no mask), and the K constant slots
    are the prefix.
    """

    def __init__(self, in_dim: int, prefix_len: int, embed_dim: int, constant_len: int = 10,
                 num_layers: int = 8, num_heads: int = 8):
        super().__init__()
        self.prefix_len, self.embed_dim, self.constant_len = prefix_len, embed_dim, constant_len
        self.linear = nn.Linear(in_dim, constant_len * embed_dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_len, embed_dim), requires_grad=True)
        self.transformer = Transformer(embed_dim, num_heads, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, K, E)
        b = x.shape[0]
        x = self.linear(x).view(b, self.constant_len, self.embed_dim)  # (B, L, E)
        const = self.prefix_const.unsqueeze(0).expand(b, -1, -1)  # (B, K, E)
        return self.transformer(torch.cat((x, const), dim=1))[:, self.constant_len:]


def build_mapper(mapping_type: str, in_dim: int, prefix_len: int, embed_dim: int, constant_len: int = 10,
                 num_layers: int = 8, num_heads: int = 8) -> nn.Module:
    if mapping_type == "mlp":
        return MLPMapper(in_dim, prefix_len, embed_dim)
    if mapping_type == "linear":
        return LinearMapper(in_dim, prefix_len, embed_dim)
    if mapping_type == "transformer":
        return TransformerMapper(in_dim, prefix_len, embed_dim, constant_len, num_layers, num_heads)
    raise ValueError(f"unknown mapping_type {mapping_type!r} (mlp, transformer, linear)")
