"""Operators per UNet forward: plain, with ConsistentID, and with the face-ID weight at 0.

On a GPU this workload is bound by the host, not by the kernels, so the per-step price of ConsistentID is
mostly the number of operators a forward dispatches. That number is the same on every machine, unlike a
CPU timing. Counted with a ``TorchDispatchMode`` on one forward of the patched ModelPatcher, batch 2 as with
CFG: every aten operator (``total``), and those that launch a kernel (``kernels``: all but views, whose output
aliases their input, and metadata-only ops).

Two ways the host applies the adapter's LoRA (weight patches added with ``ModelPatcher.add_patches``):
- merged at load (``load_models_gpu`` of a model that fits: the default here), so a forward pays nothing;
- patched in the forward, weight by weight (the host's low-VRAM path: weights left in RAM, and with 0.28's
  Dynamic VRAM the weights it could not keep in VRAM): each forward recomputes each patched weight.
"""
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only reinterpret a tensor's metadata or report it: no kernel on any device.
_NO_KERNEL = {"aten::_unsafe_view", "aten::lift_fresh", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
              "aten::is_same_size"}
# Any budget below the smallest module's size: the host's partial load then leaves every castable module's
# weight to be cast, and patched, in the forward.
_NO_VRAM = 1


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        return sum(n for func, n in self.ops.items() if not func.is_view and func._schema.name not in _NO_KERNEL)


def count_forward(model_patcher, context: torch.Tensor, latent_hw: tuple[int, int] = (32, 32),
                  patch_in_forward: bool = False) -> OpCounter:
    """The operators of one UNet forward of ``model_patcher`` on rows [negative, positive] of ``context``:
    loaded as the sampler loads it, or with ``patch_in_forward`` partially loaded, so that the host patches
    every weight inside the forward."""
    import comfy.model_management

    if patch_in_forward:
        # A clone loaded before would leave its merged LoRA in the weights that this one shares.
        comfy.model_management.unload_all_models()
        model_patcher.patch_model(model_patcher.load_device, lowvram_model_memory=_NO_VRAM)
    else:
        comfy.model_management.load_models_gpu([model_patcher])
    model = model_patcher.model
    device = model_patcher.load_device
    dtype = model.get_dtype()
    x = torch.randn(2, 4, *latent_hw, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    sigma = torch.full((2,), 5.0, device=device)
    options = {**model_patcher.model_options["transformer_options"], "cond_or_uncond": [1, 0], "sigmas": sigma}
    counter = OpCounter()
    try:
        with torch.no_grad():
            model.apply_model(x, sigma, c_crossattn=context.to(device, dtype), transformer_options=options)
            with counter:
                model.apply_model(x, sigma, c_crossattn=context.to(device, dtype), transformer_options=options)
    finally:
        if patch_in_forward:
            model_patcher.unpatch_model(model_patcher.offload_device)
    return counter


def _figures(counts: dict[str, OpCounter]) -> dict:
    plain = counts["plain"]
    return {name: {"total": c.total, "kernels": c.kernels, "total_ratio": c.total / plain.total,
                   "kernels_ratio": c.kernels / plain.kernels} for name, c in counts.items()}


def operator_counts(base, apply_to_model, weights, cond_tokens, uncond_tokens, cross_attentions: int) -> dict:
    """Counts for plain ``base``, ConsistentID on it, and ConsistentID with weight 0 (the LoRA alone), in this
    order, with the LoRA merged at load; and plain vs the LoRA alone with every weight patched in the forward."""
    context = torch.randn(2, 77, weights.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    models = {"plain": base, **{name: apply_to_model(base, weights, cond_tokens, uncond_tokens, weight=weight)
                                for name, weight in (("consistentid", 1.0), ("id_weight_0", 0.0))}}
    counts = {name: count_forward(model, context) for name, model in models.items()}
    report = _figures(counts)
    report["extra_kernels_per_cross_attention"] = (counts["consistentid"].kernels
                                                   - counts["plain"].kernels) / cross_attentions
    in_forward = {name: count_forward(models[name], context, patch_in_forward=True)
                  for name in ("plain", "id_weight_0")}
    patched_weights = len(models["id_weight_0"].patches)
    lora_kernels = in_forward["id_weight_0"].kernels - in_forward["plain"].kernels
    report["patched_in_forward"] = {**_figures(in_forward), "patched_weights": patched_weights,
                                    "lora_kernels": lora_kernels,
                                    "lora_kernels_per_weight": lora_kernels / patched_weights}
    return report
