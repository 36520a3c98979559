"""A random IP-Adapter SD1.5 file in the released ``ip-adapter_sd15.safetensors`` layout, for tests that stack
ComfyUI_IPAdapter_plus with this pack.

Layout: ``image_proj.proj`` (CLIP-ViT-H image embedding 1024 -> 4 tokens x 768), ``image_proj.norm`` (768),
and ``ip_adapter.{1,3,...,31}.to_k_ip/to_v_ip`` (hidden size x 768) for the 16 cross-attention layers,
numbered like the attention processors of diffusers' SD1.5 UNet (odd indices are the attn2 ones).
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

from consistentid_core.unet_layout import PROCESSORS

FILE_NAME = "ip-adapter_sd15.safetensors"


def write_ipadapter(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: (torch.randn(*shape, generator=g) * 0.02).half()  # noqa: E731
    tensors = {"image_proj.proj.weight": rand(4 * 768, 1024), "image_proj.proj.bias": rand(4 * 768),
               "image_proj.norm.weight": (1 + torch.randn(768, generator=g) * 0.02).half(),
               "image_proj.norm.bias": rand(768)}
    for p in PROCESSORS["sd15"]:
        if p.kind == "cross":
            tensors[f"ip_adapter.{p.index}.to_k_ip.weight"] = rand(p.hidden_size, 768)
            tensors[f"ip_adapter.{p.index}.to_v_ip.weight"] = rand(p.hidden_size, 768)
    path = Path(models_dir) / "ipadapter" / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return {"ipadapter_sd15": path}
