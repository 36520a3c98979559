"""Puts a ConsistentID adapter on a ComfyUI MODEL: the attention LoRA as weight patches, the face-ID tokens
as attn2 replacements (docs/method.md §5.3, §7.2 and §7.3).

The LoRA goes through ``add_patches`` with ``LoRAAdapter`` (alpha ``None`` is factor 1, as the official
``network_alpha=None``), so it composes with other LoRAs and low-VRAM loading and costs nothing per step.
Every cross-attention, the middle block's included (the official code gives every attention a processor),
gets one replacement adding ``weight · SDPA(q, k_ip, v_ip)`` before ``to_out``; the ID tokens' keys and
values are projected once, in head layout, not per step.

A MASK limits that branch to a region, as IPAdapter_plus's ``attn_mask`` does: each layer's tokens lie on
the latent's grid downsampled by a power of two, and each token's branch is scaled by the mask's mean over
its cell (1 inside a hard mask, 0 outside), so hard and soft masks act alike at every resolution. The mask
is resized once per grid and batch layout, not per step. Two Applies with two masks put two identities in
one picture: the second chains the first like any other pack's replacement, and the adapter's LoRA, the
same for both, is merged once.

Other packs replace the same attention layers (docs/method.md §7.3): the host calls the replacement at
``(block, number, transformer_index)`` if there is one, else the one at ``(block, number)``, and packs such as
IPAdapter_plus, InstantID and PuLID stack onto a replacement they find at their key by calling its
``add(callback, **kwargs)``. So ours chains whatever the host would have called before it, offers ``add``, and
sits at the 3-tuple key and, where the block holds a single transformer (all of SD1.5, whose packs use the
2-tuple key), at the 2-tuple key too.
"""
import collections
import copy
import logging
import math

import torch
from comfy.ldm.modules.attention import optimized_attention
from comfy.patcher_extension import CallbacksMP, WrappersMP
from comfy.weight_adapter import LoRAAdapter

from ..consistentid_core.attention import ip_weights, lora_deltas
from ..consistentid_core.checkpoint import ConsistentIDWeights
from ..consistentid_core.errors import ConsistentIDError, ModelMismatchError, message
from ..consistentid_core.unet_layout import PROCESSORS
from .base_model import check_model
from .merge_step import watch_runs

LORA_KEY = "consistentid_lora"  # in model_options: {adapter file: LoRA strength} of the LoRAs merged so far
CLONE_KEY = "consistentid_face_id"
SIGMA_KEY = "consistentid_sigma"  # in transformer_options: the sigma of the current model evaluation, a float


class FaceIDAttention:
    """attn2 replacement of one cross-attention block: text attention plus the face-ID branch.

    ``kv`` holds ``(k_ip, v_ip)``, each ``[2, heads, T, d]``: row 0 projects the positive ID tokens, row 1
    the negative ones; ``cond_or_uncond`` picks the row of each batch chunk. ``mask`` ``[1 or B, H, W]``, if
    given, scales the branch per token, the same mask for every chunk.
    """

    def __init__(self, kv: tuple[torch.Tensor, torch.Tensor], weight: float,
                 sigma_range: tuple[float, float] | None, previous=None, mask: torch.Tensor | None = None,
                 node: str | None = None):
        self.kv = kv
        self.node = node  # the Apply node, named in an error raised while sampling
        self.weight = weight
        self.sigma_range = sigma_range
        # What the host would have called here without us (another pack's replacement): it computes the text
        # attention, with that pack's own branch.
        self.previous = previous
        self.added: list[tuple] = []
        self.mask = mask
        self._layouts: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        # Under torch.compile: the weight and the sigma range as a tensor, so that a graph reads them as inputs
        # rather than baking them in as constants (see _traced_gate).
        highest, lowest = sigma_range if sigma_range is not None else (math.inf, -math.inf)
        self._gate_values = torch.tensor([weight, highest, lowest])

    def add(self, callback, **kwargs) -> None:
        """Another pack's attention branch, stacked the way IPAdapter_plus's ``Attn2Replace.add`` stacks them:
        ``callback(out, q, k, v, extra_options, **kwargs)`` is added to the output while the sigma lies in
        ``[kwargs["sigma_end"], kwargs["sigma_start"]]``."""
        self.added.append((callback, kwargs))

    def copy(self) -> "FaceIDAttention":
        """A copy with a stack of its own for ``add``; the tensors and caches, never changed in place, and the
        replacement it chains, which nothing stacks onto once it is chained, are shared."""
        copied = copy.copy(self)
        copied.added = list(self.added)
        return copied

    def __deepcopy__(self, memo):
        # Hosts before ~0.2x deep-copy model_options in ModelPatcher.clone(); the tensors need no copy.
        return self.copy()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        # torch.compile traces a graph once and replays it: Python-side decisions (the sigma range, the other
        # packs' sigma ranges) and cache fills would be baked in or force a recompile, so a traced call decides
        # them with tensor ops and builds its per-layout tensors in the graph.
        traced = torch.compiler.is_compiling()
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                                      transformer_options=extra_options)
        if self.added:
            out = self._add_stacked(out, q, k, v, extra_options, traced)
        if not traced and self.sigma_range is not None and not self._in_range(extra_options):
            return out
        b, n, inner = q.shape
        chunks = extra_options.get("cond_or_uncond", [0])
        k_ip, v_ip = self._batched(q, heads, chunks, traced)
        ip = torch.nn.functional.scaled_dot_product_attention(q.view(b, n, heads, inner // heads).transpose(1, 2),
                                                              k_ip, v_ip).transpose(1, 2)
        # In out's own [B, N, heads, d] layout, so the sum needs no copy back.
        out = out.view(b, n, heads, -1)
        mask = None if self.mask is None else self._token_mask(q, len(chunks), extra_options["original_shape"], traced)
        if traced:
            gate = self._traced_gate(q, extra_options)
            # In eager's order of products (weight · ip, then · mask), so both give the same numbers.
            return (torch.addcmul(out, ip, gate) if mask is None else torch.addcmul(out, ip * gate, mask)
                    ).view(b, n, inner)
        if mask is None:
            return torch.add(out, ip, alpha=self.weight).view(b, n, inner)
        return torch.addcmul(out, ip, mask, value=self.weight).view(b, n, inner)

    def _in_range(self, extra_options: dict) -> bool:
        return self.sigma_range[1] <= _sigma(extra_options) <= self.sigma_range[0]

    def _traced_gate(self, q: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """The branch's factor in a compiled graph: the weight while the evaluation's sigma lies in the range,
        else 0, from tensors; the branch is then computed at every step (two small SDPAs over 4 tokens per layer)."""
        weight, highest, lowest = self._gate_values.to(q.device)
        if "sigmas" not in extra_options:
            return weight.to(q.dtype)
        sigma = extra_options["sigmas"].max().to(q.device)
        return (weight * ((sigma <= highest) & (sigma >= lowest))).to(q.dtype)

    def _add_stacked(self, out, q, k, v, extra_options, traced: bool):
        sigma = None
        for callback, kwargs in self.added:
            if "sigma_start" not in kwargs:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
                continue
            if sigma is None:
                # Traced: a tensor, so the graph decides at each step instead of keeping the first step's decision.
                sigma = extra_options["sigmas"].max() if traced and "sigmas" in extra_options else _sigma(extra_options)
            active = (sigma <= kwargs["sigma_start"]) & (sigma >= kwargs["sigma_end"])
            if traced:
                branch = callback(out, q, k, v, extra_options, **kwargs)
                out = out + branch * torch.as_tensor(active, device=out.device, dtype=out.dtype)
            elif active:
                out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out.to(q.dtype)

    def _batched(self, q: torch.Tensor, heads: int, chunks: list[int], traced: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_ip, v_ip)`` ``[B, heads, T, d]`` for this batch layout in q's dtype and device, built once per
        layout: a sampling run repeats a handful of layouts, so steps only look them up (a traced call builds
        them in its graph)."""
        rows = q.shape[0] // len(chunks)
        key = (tuple(chunks), rows, q.dtype, q.device)
        if traced or key not in self._layouts:
            # 0 is the positive prompt; negatives and any further guider conds get the negative ID tokens.
            index = torch.tensor([min(c, 1) for c in chunks for _ in range(rows)])
            layout = tuple(t[index].to(q) for t in self.kv)
            if traced:
                return layout
            self._layouts[key] = layout
        return self._layouts[key]

    def _grid(self, latent_shape: list[int], tokens: int) -> tuple[int, int]:
        try:
            return _token_grid(latent_shape, tokens)
        except ConsistentIDError as err:
            raise err.attach_node(self.node) if self.node else err

    def _token_mask(self, q: torch.Tensor, chunks: int, latent_shape: list[int], traced: bool = False
                    ) -> torch.Tensor:
        """The mask per token ``[B, N, 1, 1]`` in q's dtype and device, built once per grid and batch layout;
        a single mask serves every latent of the batch, else mask i goes to latent i of each chunk."""
        rows = q.shape[0] // chunks
        key = (q.shape[1], *latent_shape[-2:], chunks, rows, q.dtype, q.device)
        if traced or key not in self._masks:
            # "area": the mean over each token's cell, so a hard mask stays 0/1 where a cell lies on one side.
            masks = torch.nn.functional.interpolate(self.mask[:, None], self._grid(latent_shape, q.shape[1]),
                                                    mode="area").flatten(1)
            if masks.shape[0] not in (1, rows):
                raise ConsistentIDError(
                    f"The face-ID mask holds {masks.shape[0]} masks for a batch of {rows} latents.",
                    "Give one mask for all latents, or one mask per latent of the batch.", self.node)
            mask = masks.expand(rows, -1).repeat(chunks, 1)[..., None, None].to(q)
            if traced:
                return mask
            self._masks[key] = mask
        return self._masks[key]


def _own_stacks(original, clone) -> None:
    """ON_CLONE callback: the clone gets its own copy of every FaceIDAttention in its attn2 replacements.

    Packs such as IPAdapter_plus stack onto the replacement they find with ``add``, in place, on a clone of
    our MODEL. Newer hosts copy model_options with ``comfy.utils.deepcopy_list_dict``, which copies dicts and
    lists and shares every other object, so without this each re-queue of a graph would stack one more branch
    onto the patch that the cached upstream MODEL holds."""
    attn2 = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    copies = {}
    for key, patch in attn2.items():
        if isinstance(patch, FaceIDAttention):
            if id(patch) not in copies:
                copies[id(patch)] = patch.copy()
            attn2[key] = copies[id(patch)]


def _sigma(extra_options: dict) -> float:
    """The sigma of the current model evaluation: :func:`_publish_sigma`'s host-side number, so no attention call
    waits on the device; without it (a UNet called outside ComfyUI's guider) it is read off the device; a UNet
    called with no sigma at all counts as infinite."""
    sigma = extra_options.get(SIGMA_KEY)
    if sigma is not None:
        return sigma
    return float(extra_options["sigmas"].max()) if "sigmas" in extra_options else math.inf


def _publish_sigma(executor, x, timestep, model_options, seed):
    """PREDICT_NOISE wrapper: the evaluation's sigma read once, as a plain number for every attention layer."""
    transformer_options = {**model_options.get("transformer_options", {}), SIGMA_KEY: float(timestep.max())}
    return executor(x, timestep, {**model_options, "transformer_options": transformer_options}, seed)


def _token_grid(latent_shape: list[int], tokens: int) -> tuple[int, int]:
    """The ``(rows, columns)`` an attention layer's tokens lie on: the latent halved ``level`` times, each
    halving rounding up as the UNet's strided convolutions do."""
    height, width = latent_shape[-2:]
    for level in range(max(height, width).bit_length() + 1):
        grid = (-(-height >> level), -(-width >> level))
        if grid[0] * grid[1] == tokens:
            return grid
    raise ConsistentIDError(
        f"The face-ID mask cannot be laid on an attention layer of {tokens} tokens over a {height}×{width} "
        f"latent: this UNet does not keep the latent's grid.",
        "Use the mask with an SD1.5 or SDXL UNet, or disconnect the mask.")


def _mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK ``[H, W]`` or ``[B, H, W]`` as ``[B, H, W]`` float on the CPU."""
    if mask.ndim not in (2, 3) or 0 in mask.shape:
        raise ConsistentIDError(
            f"The mask has the shape {list(mask.shape)}, not [height, width] or [batch, height, width].",
            "Connect a MASK output (e.g. Load Image's mask, Solid Mask or a mask editor's), not an IMAGE or "
            "a latent.")
    return mask.detach().float().cpu().reshape(-1, *mask.shape[-2:])


def _id_kv(tokens: torch.Tensor, uncond: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, heads: int):
    """Keys and values of the positive and negative ID tokens, ``[2, heads, T, d]`` each."""
    both = torch.stack([tokens, uncond]).float()
    return tuple((both @ w.float().T).unflatten(-1, (heads, -1)).transpose(1, 2).contiguous() for w in (w_k, w_v))


def _merge_lora(patched, weights: ConsistentIDWeights, lora_strength: float) -> None:
    """Adds the adapter's LoRA to ``patched`` unless an earlier Apply on this model chain merged it already:
    merged twice, it would count twice. If the strengths differ, the first one stays, with a warning."""
    merged = patched.model_options.get(LORA_KEY, {})
    if weights.path in merged:
        if merged[weights.path] != lora_strength:
            logging.warning(message(
                f"The MODEL already carries the LoRA of '{weights.name}' at strength {merged[weights.path]} from "
                f"an earlier ConsistentID Apply, so lora_strength {lora_strength} is ignored.",
                "Give both Applies the same lora_strength; the first Apply's is used."))
        return
    deltas = {key: LoRAAdapter(set(), (up, down, None, None, None, None))
              for key, (up, down) in lora_deltas(weights.adapter, weights.arch).items()}
    missing = sorted(set(deltas) - set(patched.add_patches(deltas, strength_patch=lora_strength)))
    if missing:
        raise ModelMismatchError(
            f"The MODEL lacks {len(missing)} attention weights the {weights.arch_name} adapter patches, "
            f"e.g. {missing[0]}.", f"Use a standard {weights.arch_name} checkpoint (UNet layout of the original).")
    patched.model_options[LORA_KEY] = {**merged, weights.path: lora_strength}


def apply_to_model(model, weights: ConsistentIDWeights, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                   weight: float = 1.0, start_at: float = 0.0, end_at: float = 1.0, lora_strength: float = 1.0,
                   mask: torch.Tensor | None = None, node: str | None = None):
    """A clone of ``model`` (a ModelPatcher) with the adapter's LoRA merged and the face-ID attention on.

    ``cond_tokens`` ``[n, 4, c]``: the ID tokens of n reference images, attended to together (one softmax);
    ``uncond_tokens`` ``[1, 4, c]``. The ID branch is active while the sigma lies in the
    ``[start_at, end_at]`` part of the schedule (percent, as ConditioningSetTimestepRange), and only inside
    ``mask`` (a MASK ``[H, W]`` or ``[B, H, W]`` of any resolution, stretched over the latent) if one is given.
    Applied again to its own result, e.g. with another identity and mask, it adds a second branch and keeps
    the LoRA merged once (see ``_merge_lora``).
    """
    check_model(model, weights)
    if start_at > end_at:
        raise ConsistentIDError(f"start_at {start_at} is after end_at {end_at}, so the face-ID tokens would "
                                f"never be used.", "Set start_at below end_at (the official range is 0 to 1).")
    if mask is not None:
        mask = _mask_batch(mask)
    patched = model.clone()
    watch_runs(patched)
    if lora_strength != 0.0:
        _merge_lora(patched, weights, lora_strength)
    if weight == 0.0:
        return patched

    sampling = patched.get_model_object("model_sampling")
    sigma_range = None
    if start_at > 0.0 or end_at < 1.0:
        sigma_range = (sampling.percent_to_sigma(start_at), sampling.percent_to_sigma(end_at))
        patched.remove_wrappers_with_key(WrappersMP.PREDICT_NOISE, SIGMA_KEY)
        patched.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, SIGMA_KEY, _publish_sigma)
    tokens = cond_tokens.detach().cpu().reshape(1, -1, cond_tokens.shape[-1])[0]
    # Repeating the negative tokens to the same count leaves their attention output unchanged.
    uncond = uncond_tokens.detach().cpu()[0].repeat(tokens.shape[0] // uncond_tokens.shape[1], 1)
    patched.remove_callbacks_with_key(CallbacksMP.ON_CLONE, CLONE_KEY)
    patched.add_callback_with_key(CallbacksMP.ON_CLONE, CLONE_KEY, _own_stacks)
    replaced = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    id_weights = ip_weights(weights.adapter, weights.arch)
    cross = [p for p in PROCESSORS[weights.arch] if p.kind == "cross"]
    transformers_in_block = collections.Counter(p.block for p in cross)
    for p in cross:
        key = (*p.block, p.transformer_index)
        heads = patched.get_model_object(f"diffusion_model.{p.ldm_module}").heads
        previous = replaced.get(key, replaced.get(p.block))
        patch = FaceIDAttention(_id_kv(tokens, uncond, *id_weights[key], heads), weight, sigma_range, previous, mask,
                                node)
        patched.set_model_attn2_replace(patch, *key)
        if transformers_in_block[p.block] == 1:
            patched.set_model_attn2_replace(patch, *p.block)
    return patched
