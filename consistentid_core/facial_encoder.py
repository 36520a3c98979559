"""FacialEncoder: fuses per-region CLIP features into the marked prompt tokens (docs/method.md §1.2, §4.2)."""
from collections.abc import Mapping

import torch
from torch import nn

from .perceiver import DIM_HEAD, Resampler, resampler_sizes


class AttentionMLP(Resampler):
    """A resampler with one learned latent query: [N, T, E] region features → [N, 1, D]."""

    def __init__(self, dim: int, depth: int, heads: int, embedding_dim: int, output_dim: int,
                 ff_inner: int, dim_head: int = DIM_HEAD):
        super().__init__(dim, depth, heads, embedding_dim, output_dim, ff_inner, dim_head)
        self.latents = nn.Parameter(torch.zeros(1, 1, dim))  # learned; always loaded from a checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.latents.repeat(x.shape[0], 1, 1), x)


class MLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, residual: bool):
        super().__init__()
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.act_fn = nn.GELU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return y + x if self.residual else y


class FuseModule(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.mlp1 = MLP(dim * 2, dim, residual=False)
        self.mlp2 = MLP(dim, dim, residual=True)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        fused = self.mlp1(torch.cat([tokens, regions], dim=-1)) + tokens
        return self.layer_norm(self.mlp2(fused))


class FacialEncoder(nn.Module):
    """``visual_projection`` (AttentionMLP) + ``fuse_module``, keys as in the released checkpoints.

    Real sizes: embedding_dim 1280 (CLIP-ViT-H), width 1024, depth 8, 16 heads × 64, output_dim
    768 (SD1.5) or 2048 (SDXL).
    """

    def __init__(self, embedding_dim: int = 1280, output_dim: int = 768, width: int = 1024, depth: int = 8,
                 heads: int = 16, dim_head: int = DIM_HEAD, ff_mult: float = 4):
        super().__init__()
        self.visual_projection = AttentionMLP(width, depth, heads, embedding_dim, output_dim,
                                              round(width * ff_mult), dim_head)
        self.fuse_module = FuseModule(output_dim)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], dim_head: int = DIM_HEAD,
                        output_dim: int | None = None) -> "FacialEncoder":
        """A module (random weights) whose sizes match ``sd``; ``output_dim`` pins the prompt width."""
        s = resampler_sizes(sd, "visual_projection.", dim_head)
        return cls(s["embedding_dim"], output_dim or s["output_dim"], s["dim"], s["depth"], s["heads"], dim_head,
                   s["ff_inner"] / s["dim"])

    @property
    def output_dim(self) -> int:
        return self.fuse_module.layer_norm.normalized_shape[0]

    def region_embeds(self, region_feats: torch.Tensor) -> torch.Tensor:
        """[B, S, T, E] CLIP features of S region crops → [B, S, D] (the official ``visual_projection`` output)."""
        weight = self.visual_projection.proj_in.weight
        b, s, t, e = region_feats.shape
        x = region_feats.to(weight.device, weight.dtype).reshape(b * s, t, e)
        return self.visual_projection(x).view(b, s, -1)

    def forward(self, prompt_embeds: torch.Tensor, region_feats: torch.Tensor, token_mask: torch.Tensor,
                slot_mask: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [B, 77, D] with the k-th marked token fused with the k-th valid region slot.

        ``token_mask`` [B, 77] and ``slot_mask`` [B, S] are bool; masks and region features with batch 1
        serve every prompt row. Returns a new tensor (dtype of ``prompt_embeds``, device of the module):
        the official code writes into its input in place, which would leak the fused negative into the
        caller's conditioning (docs/method.md §8.18). Rows without marks come back unchanged; a row with more
        marks than valid slots (or the reverse) fuses only the pairs it has instead of failing the official
        assert (docs/method.md §3.4, §8.16).
        """
        weight = self.visual_projection.proj_in.weight
        out = prompt_embeds.to(weight.device, copy=True)
        rows, tokens, slots = [], [], []
        for b in range(out.shape[0]):
            t = _row(token_mask, b).nonzero().flatten().tolist()
            s = _row(slot_mask, b).nonzero().flatten().tolist()
            n = min(len(t), len(s))
            rows += [b] * n
            tokens += t[:n]
            slots += s[:n]
        if not rows:
            return out
        # Only the slots that are fused go through the 8-layer projection: padding slots never do.
        picked = self.region_embeds(torch.stack([_row(region_feats, b)[s] for b, s in zip(rows, slots)])[None])[0]
        fused = self.fuse_module(out[rows, tokens].to(weight.dtype), picked)
        out[rows, tokens] = fused.to(out.dtype)
        return out


def _row(t: torch.Tensor, b: int) -> torch.Tensor:
    """Row ``b`` of a batch, or its only row when one input serves the whole batch."""
    return t[min(b, t.shape[0] - 1)]
