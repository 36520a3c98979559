"""Random-weight files of ComfyUI_InstantID's three models, for tests that stack it with this pack.

- ``instantid/ip-adapter.safetensors``: the release's ``ip-adapter.bin`` (``{"image_proj": ..., "ip_adapter":
  ...}``) as the flat ``image_proj.*``/``ip_adapter.*`` keys that InstantID's loader splits a safetensors file
  by, so no pickle is involved: the Resampler (16 queries of width 1280 over the 512-value face embedding,
  4 layers of 20 heads, output 2048) and ``{index}.to_k_ip``/``to_v_ip`` of SDXL's 70 cross-attentions,
  numbered like diffusers' attention processors.
- ``controlnet/instantid/diffusion_pytorch_model.safetensors``: the InstantID ControlNet, an SDXL ControlNet in
  diffusers' layout (``controlnet_cond_embedding``, ``controlnet_down_blocks``, ``controlnet_mid_block``);
  ``size="unit"`` writes ``diffusion_pytorch_model-unit.safetensors`` in the layout of diffusers' "mid" SDXL
  ControlNets instead (one transformer per 1280-wide block, none elsewhere), which ComfyUI also detects, a
  fifth of the size.
- ``insightface/models/antelopev2/``: the detector and recogniser of :mod:`weightgen.insightface_pack` under
  antelopev2's file names.

Tensors are fp16 (the released adapter is fp32) and streamed to disk one at a time, as
:mod:`weightgen.host_models` writes its files, so memory stays at the largest tensor. The ControlNet is built
with the host's own classes and key maps, so this needs a Python in which ComfyUI imports (its folder on
``sys.path``).
"""
import os
import shutil
from pathlib import Path

import torch

from consistentid_core.unet_layout import CROSS_ATTENTION_DIM, PROCESSORS

from . import insightface_pack
from .host_models import init_kinds, _stream_safetensors, default_cache_dir

# Bump when the files change, so cached copies are regenerated.
GENERATOR_VERSION = "instantid-1"
ADAPTER_FILE = Path("instantid/ip-adapter.safetensors")
CONTROLNET_FILE = Path("controlnet/instantid/diffusion_pytorch_model.safetensors")
# InstantID's Resampler, as ComfyUI_InstantID builds it for the release.
RESAMPLER = {"width": 1280, "depth": 4, "heads": 20, "head_dim": 64, "queries": 16, "face_dim": 512, "ff_mult": 4}

# ComfyUI's configs of the two layouts, as its detection finds them in diffusers ControlNet files.
_SDXL = {"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
         "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
         "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4], "use_linear_in_transformer": True,
         "context_dim": 2048, "num_head_channels": 64, "use_temporal_attention": False,
         "use_temporal_resblock": False}
CONTROLNET_CONFIGS = {
    "full": {**_SDXL, "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]},
    "unit": {**_SDXL, "transformer_depth": [0, 0, 0, 0, 1, 1], "transformer_depth_middle": 1,
             "transformer_depth_output": [0, 0, 0, 0, 0, 0, 1, 1, 1]},
}


def instantid_files(models_dir: Path, size: str = "full") -> dict[str, Path]:
    """Where :func:`write_instantid` puts each file under ``models_dir``."""
    if size not in CONTROLNET_CONFIGS:
        raise ValueError(f"size must be 'unit' or 'full', not {size!r}")
    controlnet = CONTROLNET_FILE if size == "full" else CONTROLNET_FILE.with_stem(f"{CONTROLNET_FILE.stem}-unit")
    return {"instantid_adapter": Path(models_dir) / ADAPTER_FILE, "instantid_controlnet": Path(models_dir) / controlnet,
            "insightface_antelopev2": Path(models_dir) / "insightface" / "models" / "antelopev2"}


def write_instantid(models_dir: Path, size: str = "full", seed: int = 0) -> dict[str, Path]:
    """Write the adapter, the ControlNet of ``size`` and the antelopev2 pack under ``models_dir``."""
    files = instantid_files(models_dir, size)
    _stream_safetensors(files["instantid_adapter"], *_adapter_layout(), seed)
    _stream_safetensors(files["instantid_controlnet"], *_controlnet_layout(CONTROLNET_CONFIGS[size]), seed + 1)
    insightface_pack.write_pack(models_dir, "antelopev2", seed=seed, files=insightface_pack.ANTELOPEV2_FILES)
    return files


def cached_instantid(size: str = "full", seed: int = 0, cache_dir: Path | None = None) -> dict[str, Path]:
    """The files of :func:`write_instantid` in a folder under ``cache_dir`` (default :func:`default_cache_dir`),
    written once: into a temporary folder renamed when complete, so a present folder is valid for this
    generator version."""
    root = Path(cache_dir or default_cache_dir()) / f"{GENERATOR_VERSION}-{size}-seed{seed}"
    if not root.is_dir():
        partial = root.with_name(f"{root.name}.{os.getpid()}.partial")
        write_instantid(partial, size, seed)
        try:
            partial.rename(root)
        except OSError:
            if not root.is_dir():
                raise
            shutil.rmtree(partial)  # another process wrote it meanwhile
    return instantid_files(root, size)


def _adapter_layout() -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    r, context = RESAMPLER, CROSS_ATTENTION_DIM["sdxl"]
    width, inner, ff = r["width"], r["heads"] * r["head_dim"], r["width"] * r["ff_mult"]
    shapes = {"latents": (1, r["queries"], width), "proj_in.weight": (width, r["face_dim"]), "proj_in.bias": (width,),
              "proj_out.weight": (context, width), "proj_out.bias": (context,),
              "norm_out.weight": (context,), "norm_out.bias": (context,)}
    for i in range(r["depth"]):
        # layers.i.0: PerceiverAttention; layers.i.1: LayerNorm, Linear, GELU, Linear.
        for norm in (f"layers.{i}.0.norm1", f"layers.{i}.0.norm2", f"layers.{i}.1.0"):
            shapes.update({f"{norm}.weight": (width,), f"{norm}.bias": (width,)})
        shapes.update({f"layers.{i}.0.to_q.weight": (inner, width), f"layers.{i}.0.to_kv.weight": (2 * inner, width),
                       f"layers.{i}.0.to_out.weight": (width, inner), f"layers.{i}.1.1.weight": (ff, width),
                       f"layers.{i}.1.3.weight": (width, ff)})
    tensors = {f"image_proj.{name}": torch.empty(shape, device="meta") for name, shape in shapes.items()}
    for p in PROCESSORS["sdxl"]:
        if p.kind == "cross":
            for kv in ("k", "v"):
                tensors[f"ip_adapter.{p.index}.to_{kv}_ip.weight"] = torch.empty(p.hidden_size, context, device="meta")
    # Norm weights (the only 1-D weights) 1, biases 0, the rest random.
    kinds = {id(t): "zeros" if name.endswith("bias") else "ones" if t.dim() == 1 else "normal"
             for name, t in tensors.items()}
    return tensors, kinds


def _controlnet_layout(config: dict) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    from comfy.cldm.cldm import ControlNet

    with torch.device("meta"):
        model = ControlNet(**config, hint_channels=3, device="meta")
    names = _diffusers_names(config, model)
    tensors = model.state_dict(keep_vars=True)
    unnamed = sorted(set(tensors) - set(names))
    if unnamed:
        raise RuntimeError(f"no diffusers name for {len(unnamed)} ControlNet tensors, e.g. {unnamed[0]}")
    return {names[key]: value for key, value in tensors.items()}, init_kinds(model)


def _diffusers_names(config: dict, model: torch.nn.Module) -> dict[str, str]:
    """ComfyUI key → diffusers key: the host's UNet map, reversed, plus the ControlNet's own parts, as its
    loader maps them back."""
    from comfy.utils import unet_to_diffusers

    # label_emb is SDXL's add_embedding (class_embedding names it in other UNets).
    names = {ldm: d for d, ldm in unet_to_diffusers(config).items() if not d.startswith("class_embedding.")}
    convs = [i for i, m in enumerate(model.input_hint_block) if isinstance(m, torch.nn.Conv2d)]
    embedding = ["conv_in", *(f"blocks.{j}" for j in range(len(convs) - 2)), "conv_out"]
    for p in ("weight", "bias"):
        names[f"middle_block_out.0.{p}"] = f"controlnet_mid_block.{p}"
        names.update({f"zero_convs.{i}.0.{p}": f"controlnet_down_blocks.{i}.{p}" for i in range(len(model.zero_convs))})
        names.update({f"input_hint_block.{i}.{p}": f"controlnet_cond_embedding.{name}.{p}"
                      for i, name in zip(convs, embedding)})
    return names
