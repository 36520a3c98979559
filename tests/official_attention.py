"""The official attention processors computed the way the port does it, for the parity tests (golden G6):
the LoRA merged into a diffusers ``Attention`` state dict, the face-ID branch added before ``to_out``."""
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from consistentid_core.attention import PROJECTIONS, lora_pair

NUM_ID_TOKENS = 4


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = x.shape
    return x.view(b, n, heads, inner // heads).transpose(1, 2)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of projected ``[B, N, heads·d]`` tensors, no mask, scale 1/√d."""
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def ip_attention(q: torch.Tensor, k_ip: torch.Tensor, v_ip: torch.Tensor, heads: int) -> torch.Tensor:
    """The face-ID branch: the (LoRA'd) query attends to the ID tokens alone, with its own softmax."""
    return sdpa(q, k_ip, v_ip, heads)


def merge_lora(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    return weight + up @ down


def consistent_attention(
    attn: Mapping[str, torch.Tensor],
    adapter: Mapping[str, torch.Tensor],
    index: int,
    hidden_states: torch.Tensor,
    heads: int,
    encoder_hidden_states: torch.Tensor | None = None,
    ip_scale: float = 1.0,
) -> torch.Tensor:
    """An official ``Consistent_AttProcessor`` (no context) or ``Consistent_IPAttProcessor`` output, computed
    the way the port does it: LoRA merged into a diffusers ``Attention`` state dict, ID branch before ``to_out``.

    ``encoder_hidden_states`` holds the text tokens followed by the 4 ID tokens, as in the official pipeline.
    """
    w = {proj: merge_lora(attn[f"{proj}.weight"], *lora_pair(adapter, index, lora)) for proj, lora in PROJECTIONS}
    context = hidden_states if encoder_hidden_states is None else encoder_hidden_states[:, :-NUM_ID_TOKENS]
    q = hidden_states @ w["to_q"].T
    out = sdpa(q, context @ w["to_k"].T, context @ w["to_v"].T, heads)
    if encoder_hidden_states is not None:
        ids = encoder_hidden_states[:, -NUM_ID_TOKENS:]
        k_ip = ids @ adapter[f"{index}.to_k_ip.weight"].T
        v_ip = ids @ adapter[f"{index}.to_v_ip.weight"].T
        out = out + ip_scale * ip_attention(q, k_ip, v_ip, heads)
    return out @ w["to_out.0"].T + attn["to_out.0.bias"]
