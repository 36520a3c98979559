"""Penultimate CLIP-ViT-H states of already-normalised pixels, through the host's CLIP_VISION."""
import weakref

import torch

import comfy.model_management

from ..consistentid_core.errors import ConsistentIDError
from ..consistentid_core.regions import CLIP_SIZE
from . import host

HIDDEN_SIZE = 1280
NUM_LAYERS = 32


def _check_vit_h(clip_vision) -> None:
    tower = host.vision_tower(clip_vision)
    if tower != (HIDDEN_SIZE, NUM_LAYERS):
        found = (f"width {tower[0]}, {tower[1]} layers" if tower is not None
                 else type(getattr(clip_vision, "model", None)).__name__)
        raise ConsistentIDError(
            f"The CLIP vision model is not CLIP-ViT-H-14 ({found}); ConsistentID was trained on "
            f"ViT-H's {HIDDEN_SIZE}-wide penultimate features.",
            "Load CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (the IP-Adapter SD1.5 image encoder) with "
            "'Load CLIP Vision' from models/clip_vision/.",
        )


@torch.no_grad()
def encode_penultimate(clip_vision, pixels: torch.Tensor) -> torch.Tensor:
    """``[N, 257, 1280]`` fp32 hidden states of layer -2 (no post-LayerNorm) for normalised
    ``[N, 3, 224, 224]`` pixels, in one batch, on the intermediate device.

    The host's vision model computes in the dtype of the pixels it gets, so they are cast to
    the model's dtype (fp16 on a GPU, like the official pipeline); on CPU fp32 is faster.
    """
    _check_vit_h(clip_vision)
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    device = clip_vision.load_device
    dtype = torch.float32 if comfy.model_management.is_device_cpu(device) else clip_vision.dtype
    penultimate = host.penultimate_states(clip_vision, pixels.to(device, dtype))
    return penultimate.to(comfy.model_management.intermediate_device(), torch.float32)


_zero_features: "weakref.WeakKeyDictionary[object, torch.Tensor]" = weakref.WeakKeyDictionary()


def zero_image_features(clip_vision) -> torch.Tensor:
    """``[257, 1280]`` states of the all-zeros normalised image (a mean-grey picture), the official
    padding and uncond input. RegionEmbed and Apply both need it, so it is encoded once per model."""
    if clip_vision not in _zero_features:
        _zero_features[clip_vision] = encode_penultimate(clip_vision, torch.zeros(1, 3, CLIP_SIZE, CLIP_SIZE))[0]
    return _zero_features[clip_vision]
