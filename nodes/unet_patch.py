"""Puts a ConsistentID adapter on a ComfyUI MODEL: the attention LoRA as weight patches, the face-ID tokens
as attn2 replacements (DESIGN.md §3, spec §5.3 and §11).

The LoRA goes through ``add_patches`` with ``LoRAAdapter`` (alpha ``None`` is factor 1, as the official
``network_alpha=None``), so it composes with other LoRAs and low-VRAM loading and costs nothing per step.
Every cross-attention, the middle block's included (the official code gives every attention a processor),
gets one replacement adding ``weight · SDPA(q, k_ip, v_ip)`` before ``to_out``; the ID tokens' keys and
values are projected once, not per step.
"""
import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.weight_adapter import LoRAAdapter

from ..consistentid_core.attention import ip_attention, ip_weights, lora_deltas
from ..consistentid_core.checkpoint import RELEASE_FILES, ConsistentIDWeights
from ..consistentid_core.errors import ModelMismatchError
from ..consistentid_core.unet_layout import ARCH_NAMES, CROSS_ATTENTION_DIM

_ARCH_OF_CONTEXT_DIM = {dim: arch for arch, dim in CROSS_ATTENTION_DIM.items()}


class FaceIDAttention:
    """attn2 replacement of one cross-attention block: text attention plus the face-ID branch.

    ``kv`` holds ``(k_ip, v_ip)``, each ``[2, T, h]``: row 0 projects the positive ID tokens, row 1 the
    negative ones; ``cond_or_uncond`` picks the row of each batch chunk.
    """

    def __init__(self, kv: tuple[torch.Tensor, torch.Tensor], weight: float,
                 sigma_range: tuple[float, float] | None, previous=None):
        self.kv = kv
        self.weight = weight
        self.sigma_range = sigma_range
        # Another pack's replacement of the same block keeps working: it computes the text attention.
        self.previous = previous
        self._layouts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __deepcopy__(self, memo):
        # ModelPatcher.clone() deep-copies model_options; the tensors here never change after creation.
        return self

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                      transformer_options=extra_options)
        ip = ip_attention(q, *self._batched(q, extra_options.get("cond_or_uncond", [0])), heads)
        if self.sigma_range is None:
            return torch.add(out, ip, alpha=self.weight)
        sigma = extra_options["sigmas"][:1]
        return out + self.weight * ((sigma <= self.sigma_range[0]) & (sigma >= self.sigma_range[1])).to(q.dtype) * ip

    def _batched(self, q: torch.Tensor, chunks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_ip, v_ip)`` ``[B, T, h]`` for this batch layout in q's dtype and device, built once per layout:
        a sampling run repeats a handful of layouts, so steps only look them up."""
        rows = q.shape[0] // len(chunks)
        key = (tuple(chunks), rows, q.dtype, q.device)
        if key not in self._layouts:
            # 0 is the positive prompt; negatives and any further guider conds get the negative ID tokens.
            index = torch.tensor([min(c, 1) for c in chunks for _ in range(rows)])
            self._layouts[key] = tuple(t[index].to(q) for t in self.kv)
        return self._layouts[key]


def model_arch(model) -> str | None:
    """``"sd15"``/``"sdxl"`` from the UNet's cross-attention width, ``None`` for any other model."""
    return _ARCH_OF_CONTEXT_DIM.get(model.model.model_config.unet_config.get("context_dim"))


def check_model_arch(model, weights: ConsistentIDWeights) -> None:
    arch = model_arch(model)
    if arch == weights.arch:
        return
    model_name = type(model.model.model_config).__name__
    if arch is None:
        fix = f"Use an {weights.arch_name} checkpoint: ConsistentID exists for SD1.5 and SDXL only."
    else:
        fix = (f"Load the {ARCH_NAMES[arch]} ConsistentID file ({RELEASE_FILES[arch]}) for this MODEL, "
               f"or use an {weights.arch_name} checkpoint with '{weights.name}'.")
    raise ModelMismatchError(
        f"'{weights.name}' is an {weights.arch_name} ConsistentID adapter, but the MODEL is {model_name}.", fix)


def _id_kv(tokens: torch.Tensor, uncond: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor):
    both = torch.stack([tokens, uncond]).float()
    return both @ w_k.float().T, both @ w_v.float().T


def apply_to_model(model, weights: ConsistentIDWeights, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                   weight: float = 1.0, start_at: float = 0.0, end_at: float = 1.0, lora_strength: float = 1.0):
    """A clone of ``model`` (a ModelPatcher) with the adapter's LoRA merged and the face-ID attention on.

    ``cond_tokens`` ``[n, 4, c]``: the ID tokens of n reference images, attended to together (one softmax);
    ``uncond_tokens`` ``[1, 4, c]``. The ID branch is active while the sigma lies in the
    ``[start_at, end_at]`` part of the schedule (percent, as ConditioningSetTimestepRange).
    """
    check_model_arch(model, weights)
    patched = model.clone()
    if lora_strength != 0.0:
        deltas = {key: LoRAAdapter(set(), (up, down, None, None, None, None))
                  for key, (up, down) in lora_deltas(weights.adapter, weights.arch).items()}
        missing = sorted(set(deltas) - set(patched.add_patches(deltas, strength_patch=lora_strength)))
        if missing:
            raise ModelMismatchError(
                f"The MODEL lacks {len(missing)} attention weights the {weights.arch_name} adapter patches, "
                f"e.g. {missing[0]}.", f"Use a standard {weights.arch_name} checkpoint (UNet layout of the original).")
    if weight == 0.0:
        return patched

    sampling = patched.get_model_object("model_sampling")
    sigma_range = None
    if start_at > 0.0 or end_at < 1.0:
        sigma_range = (sampling.percent_to_sigma(start_at), sampling.percent_to_sigma(end_at))
    tokens = cond_tokens.detach().cpu().reshape(1, -1, cond_tokens.shape[-1])[0]
    # Repeating the negative tokens to the same count leaves their attention output unchanged.
    uncond = uncond_tokens.detach().cpu()[0].repeat(tokens.shape[0] // uncond_tokens.shape[1], 1)
    replaced = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for key, (w_k, w_v) in ip_weights(weights.adapter, weights.arch).items():
        patch = FaceIDAttention(_id_kv(tokens, uncond, w_k, w_v), weight, sigma_range, replaced.get(key))
        patched.set_model_attn2_replace(patch, *key)
    return patched
