"""Operators per UNet forward: plain, with ConsistentID, and with the face-ID weight at 0.

On a GPU this workload is bound by the host, not by the kernels, so the per-step price of ConsistentID is
mostly the number of operators a forward dispatches. That number is the same on every machine, unlike a
CPU timing. Counted with a ``TorchDispatchMode`` on one forward of the patched ModelPatcher (LoRA merged by
loading it, as the sampler would), batch 2 as with CFG: every aten operator (``total``), and those that
launch a kernel (``kernels``: all but views, whose output aliases their input, and metadata-only ops).
"""
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only reinterpret a tensor's metadata or report it: no kernel on any device.
_NO_KERNEL = {"aten::_unsafe_view", "aten::lift_fresh", "aten::sym_size", "aten::sym_stride", "aten::sym_numel",
              "aten::is_same_size"}


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


def count_forward(model_patcher, context: torch.Tensor, latent_hw: tuple[int, int] = (32, 32)) -> OpCounter:
    """The operators of one UNet forward of ``model_patcher`` on rows [negative, positive] of ``context``."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model_patcher])
    model = model_patcher.model
    device = model_patcher.load_device
    dtype = model.get_dtype()
    x = torch.randn(2, 4, *latent_hw, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    sigma = torch.full((2,), 5.0, device=device)
    options = {**model_patcher.model_options["transformer_options"], "cond_or_uncond": [1, 0], "sigmas": sigma}
    counter = OpCounter()
    with torch.no_grad():
        model.apply_model(x, sigma, c_crossattn=context.to(device, dtype), transformer_options=options)
        with counter:
            model.apply_model(x, sigma, c_crossattn=context.to(device, dtype), transformer_options=options)
    return counter


def operator_counts(base, apply_to_model, weights, cond_tokens, uncond_tokens, cross_attentions: int) -> dict:
    """Counts for plain ``base``, ConsistentID on it, and ConsistentID with weight 0, in this order."""
    context = torch.randn(2, 77, weights.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    counts = {"plain": count_forward(base, context)}
    for name, weight in (("consistentid", 1.0), ("id_weight_0", 0.0)):
        counts[name] = count_forward(apply_to_model(base, weights, cond_tokens, uncond_tokens, weight=weight),
                                     context)
    plain = counts["plain"]
    report = {name: {"total": c.total, "kernels": c.kernels, "total_ratio": c.total / plain.total,
                     "kernels_ratio": c.kernels / plain.kernels} for name, c in counts.items()}
    report["extra_kernels_per_cross_attention"] = (counts["consistentid"].kernels - plain.kernels) / cross_attentions
    return report
