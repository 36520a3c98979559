"""ConsistentID's UNet attention maths: the LoRA and face-ID weights by UNet key (docs/method.md §5.3, quirk
§8.11).

The official processors add ``up(down(x))`` (factor 1: no alpha, no rank scaling) to q, k, v and out of
every attention layer, and in cross-attention add ``s · SDPA(q, W_k_ip·id, W_v_ip·id)`` over the last 4
context tokens before ``to_out``. Merging ``W + up @ down`` is exact, because the k/v LoRA of attn2 only
ever sees text tokens; the ID tokens are projected separately by ``to_k_ip``/``to_v_ip``.
"""
from collections.abc import Mapping

import torch

from .unet_layout import PROCESSORS

# (UNet projection, adapter LoRA name)
PROJECTIONS = (("to_q", "to_q_lora"), ("to_k", "to_k_lora"), ("to_v", "to_v_lora"), ("to_out.0", "to_out_lora"))


def lora_pair(adapter: Mapping[str, torch.Tensor], index: int, lora: str) -> tuple[torch.Tensor, torch.Tensor]:
    return adapter[f"{index}.{lora}.up.weight"], adapter[f"{index}.{lora}.down.weight"]


def lora_deltas(adapter: Mapping[str, torch.Tensor], arch: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(up, down)`` of every attention projection, keyed by the ComfyUI model state-dict key."""
    return {
        f"diffusion_model.{p.ldm_module}.{proj}.weight": lora_pair(adapter, p.index, lora)
        for p in PROCESSORS[arch]
        for proj, lora in PROJECTIONS
    }


def ip_weights(adapter: Mapping[str, torch.Tensor], arch: str) -> dict[tuple[str, int, int], tuple[torch.Tensor, torch.Tensor]]:
    """``(W_k_ip, W_v_ip)`` of every cross-attention, keyed like ``set_model_attn2_replace``: (block, number, index)."""
    return {
        (*p.block, p.transformer_index): (adapter[f"{p.index}.to_k_ip.weight"], adapter[f"{p.index}.to_v_ip.weight"])
        for p in PROCESSORS[arch]
        if p.kind == "cross"
    }

