"""ProjPlus: the 4 face-ID tokens from an InsightFace embedding and whole-image CLIP features (docs/method.md §4.3)."""
from collections.abc import Mapping

import torch
from torch import nn

from .perceiver import DIM_HEAD, Resampler, resampler_sizes


class ProjPlus(nn.Module):
    """The official ProjPlusModel: keys ``proj.0``, ``proj.2``, ``norm``, ``perceiver_resampler.*``.

    Real sizes: cross_attention_dim c = 768 (SD1.5) or 2048 (SDXL), id 512, CLIP 1280, 4 tokens,
    perceiver depth 4 with c/64 heads of 64 and a 4c feed-forward; the id MLP is 512 → 1024 → 4c.
    """

    def __init__(self, cross_attention_dim: int = 768, id_embeddings_dim: int = 512, clip_embeddings_dim: int = 1280,
                 num_tokens: int = 4, depth: int = 4, heads: int | None = None, dim_head: int = DIM_HEAD,
                 id_hidden_dim: int | None = None, ff_inner: int | None = None):
        super().__init__()
        c = cross_attention_dim
        hidden = id_hidden_dim or id_embeddings_dim * 2
        self.cross_attention_dim = c
        self.num_tokens = num_tokens
        self.proj = nn.Sequential(nn.Linear(id_embeddings_dim, hidden), nn.GELU(), nn.Linear(hidden, c * num_tokens))
        self.norm = nn.LayerNorm(c)
        self.perceiver_resampler = Resampler(c, depth, heads or c // dim_head, clip_embeddings_dim, c,
                                             ff_inner or c * 4, dim_head)

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], dim_head: int = DIM_HEAD,
                        cross_attention_dim: int | None = None) -> "ProjPlus":
        """A module (random weights) whose sizes match ``sd``; ``cross_attention_dim`` pins the token width."""
        s = resampler_sizes(sd, "perceiver_resampler.", dim_head)
        c = cross_attention_dim or sd["norm.weight"].shape[0]
        hidden, id_dim = sd["proj.0.weight"].shape
        return cls(c, id_dim, s["embedding_dim"], sd["proj.2.weight"].shape[0] // c, s["depth"], s["heads"],
                   dim_head, hidden, s["ff_inner"])

    def forward(self, id_embeds: torch.Tensor, clip_hidden: torch.Tensor, shortcut: bool = False,
                scale: float = 1.0) -> torch.Tensor:
        """[B, 512] face embedding + [B, T, E] penultimate CLIP states → [B, num_tokens, c]."""
        weight = self.norm.weight
        id_embeds = id_embeds.to(weight.device, weight.dtype)
        clip_hidden = clip_hidden.to(weight.device, weight.dtype)
        x = self.norm(self.proj(id_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim))
        out = self.perceiver_resampler(x, clip_hidden)
        return x + scale * out if shortcut else out


def id_tokens(proj: ProjPlus, id_embeds: torch.Tensor, clip_hidden: torch.Tensor, zero_clip_hidden: torch.Tensor,
              shortcut: bool, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cond tokens [B, 4, c] and uncond tokens [1, 4, c].

    Uncond is ProjPlus of a zero face embedding and CLIP of a zero (normalised) image, as the official
    pipelines do; it is not zero because of the biases. SD1.5 uses ``shortcut=False``, SDXL ``True``
    (docs/method.md §8.10).
    """
    cond = proj(id_embeds, clip_hidden, shortcut, scale)
    uncond = proj(id_embeds.new_zeros(1, id_embeds.shape[-1]), zero_clip_hidden[:1], shortcut, scale)
    return cond, uncond
