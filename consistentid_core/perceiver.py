"""Perceiver blocks shared by the facial encoder and the face-ID projection (docs/method.md §4.1).

Parameter names follow the official modules, so the released state dicts load as they are:
``proj_in``, ``layers.{k}.0`` (attention), ``layers.{k}.1`` (feed-forward), ``proj_out``, ``norm_out``.
"""
import math
from collections.abc import Mapping

import torch
from torch import nn

# Both official perceivers use 64-wide heads; the checkpoint's shapes only give heads × head size.
DIM_HEAD = 64


def feed_forward(dim: int, inner_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to the image tokens and to themselves; the caller adds the residual."""

    def __init__(self, dim: int, dim_head: int = DIM_HEAD, heads: int = 8):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.view(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        # Scaling q and k by d^-1/4 each (not the product by d^-1/2) and an fp32 softmax keep
        # fp16 logits in range; the official code does both, and parity follows its rounding.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class Resampler(nn.Module):
    """``proj_in`` → depth × (attention + residual, feed-forward + residual) → ``proj_out`` → ``norm_out``."""

    def __init__(self, dim: int, depth: int, heads: int, embedding_dim: int, output_dim: int,
                 ff_inner: int, dim_head: int = DIM_HEAD):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_inner)])
            for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def resampler_sizes(sd: Mapping[str, torch.Tensor], prefix: str, dim_head: int = DIM_HEAD) -> dict:
    """Constructor arguments of the :class:`Resampler` stored under ``prefix`` in ``sd``."""
    first = f"{prefix}layers.0."
    inner = sd[first + "0.to_q.weight"].shape[0]
    return {
        "dim": sd[f"{prefix}proj_in.weight"].shape[0],
        "depth": len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(prefix + "layers.")}),
        "heads": inner // dim_head,
        "dim_head": dim_head,
        "embedding_dim": sd[f"{prefix}proj_in.weight"].shape[1],
        "output_dim": sd[f"{prefix}proj_out.weight"].shape[0],
        "ff_inner": sd[first + "1.1.weight"].shape[0],
    }
