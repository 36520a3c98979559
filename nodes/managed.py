"""The pack's own torch modules under the host's model management."""
import torch

import comfy.model_management
import comfy.model_patcher

# On the module itself: the patcher lives exactly as long as its module (a cycle the garbage collector frees),
# never outliving it or serving another module that reuses its address.
_PATCHER = "consistentid_model_patcher"


def compute_dtype() -> torch.dtype:
    """fp16 where the host would run fp16 (as the official pipeline does on a GPU), else fp32."""
    device = comfy.model_management.get_torch_device()
    return torch.float16 if comfy.model_management.should_use_fp16(device) else torch.float32


def on_device(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` loaded on the host's compute device, to be offloaded like the host's own models."""
    patcher = getattr(module, _PATCHER, None)
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device())
        setattr(module, _PATCHER, patcher)
    # Whole: under low VRAM the host would leave plain torch layers on the CPU, a device mismatch.
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return module
