"""Random-weight SD1.5 checkpoint, SD1.5 ControlNet and CLIP-ViT-H vision file for tests against a real ComfyUI.

The models are built on the ``meta`` device from the host's own classes (and, for the vision
file, transformers with the host's ViT-H config), converted with the host's own
``process_*_state_dict_for_saving``, so the key layout is exactly what ComfyUI's loaders detect
(SD15/EPS, ViT-H, and a ControlNet in the v1.1 releases' ``control_model.`` layout). Values are
drawn one tensor at a time and streamed to disk: memory stays at the largest tensor instead of
the whole 2 GB checkpoint. Needs a Python that can import the host.
"""
import json
import os
import sys
from pathlib import Path

import torch

# Bump when the files change, so cached copies are regenerated.
GENERATOR_VERSION = "host-models-1"

FILES = {
    "sd15_checkpoint": Path("checkpoints/sd15_random.safetensors"),
    "clip_vision_h": Path("clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    "controlnet_sd15": Path("controlnet/control_sd15_random.safetensors"),
}

# The LDM v1-inference UNet; the host matches it to its SD15 model config.
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD15_VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

_DTYPE_NAMES = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64"}


def default_cache_dir() -> Path:
    return Path(os.environ.get("CONSISTENTID_TEST_CACHE", Path.home() / ".cache" / "consistentid-tests"))


def write_host_models(models_dir: Path, comfyui_path: Path, seed: int = 0,
                      names: list[str] | None = None) -> dict[str, Path]:
    """Write the files of :data:`FILES` (or only those in ``names``) under ``models_dir``."""
    comfyui_path = str(Path(comfyui_path).resolve())
    if comfyui_path not in sys.path:
        sys.path.insert(0, comfyui_path)
    if "comfy.model_management" not in sys.modules:
        # Built on meta, filled on CPU; with a CUDA torch and no driver the host's import would fail.
        from comfy.cli_args import args

        args.cpu = True
    layouts = {"sd15_checkpoint": _sd15_layout, "clip_vision_h": lambda: _vit_h_layout(comfyui_path),
               "controlnet_sd15": _controlnet_layout}
    out = {}
    for offset, (name, layout) in enumerate(layouts.items()):
        if names is None or name in names:
            out[name] = Path(models_dir) / FILES[name]
            _stream_safetensors(out[name], *layout(), seed + offset)
    return out


def cached_host_models(cache_dir: Path | None, comfyui_path: Path, seed: int = 0) -> dict[str, Path]:
    """The host model files under ``cache_dir`` (default :func:`default_cache_dir`), written once.

    Files appear only complete (written under a temporary name, then renamed), so a present file
    is valid for this generator version; only the missing ones are written.
    """
    root = Path(cache_dir or default_cache_dir()) / f"{GENERATOR_VERSION}-seed{seed}"
    files = {name: root / rel for name, rel in FILES.items()}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        write_host_models(root, comfyui_path, seed, missing)
    return files


def _sd15_layout() -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    from comfy import model_detection, sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = model_detection.model_config_from_unet_config(dict(SD15_UNET))
    if type(config).__name__ != "SD15":
        raise RuntimeError(f"the host matched the SD1.5 UNet config to {type(config).__name__}, not SD15")
    config.set_inference_dtype(torch.float16, None)
    with torch.device("meta"):
        model = config.get_model({}, device="meta")
        vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4)
        clip = sd1_clip.SD1ClipModel(device="meta", dtype=torch.float16)
    tensors = config.process_unet_state_dict_for_saving(model.diffusion_model.state_dict(keep_vars=True))
    tensors.update(config.process_vae_state_dict_for_saving(vae.state_dict(keep_vars=True)))
    tensors.update(config.process_clip_state_dict_for_saving(clip.state_dict(keep_vars=True)))
    return tensors, init_kinds(model, vae, clip)


def _controlnet_layout() -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """An SD1.5 ControlNet as the v1.1 releases store it: the LDM ``ControlNet`` under ``control_model.``."""
    from comfy import model_detection
    from comfy.cldm.cldm import ControlNet

    config = dict(model_detection.model_config_from_unet_config(dict(SD15_UNET)).unet_config)
    config.pop("out_channels")
    with torch.device("meta"):
        model = ControlNet(**config, hint_channels=3, device="meta")
    tensors = {f"control_model.{key}": value for key, value in model.state_dict(keep_vars=True).items()}
    return tensors, init_kinds(model)


def _vit_h_layout(comfyui_path: str) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = json.loads((Path(comfyui_path) / "comfy" / "clip_vision_config_h.json").read_text())
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    return model.state_dict(keep_vars=True), init_kinds(model)


def init_kinds(*modules: torch.nn.Module) -> dict[int, str]:
    """How to fill each parameter, keyed by ``id``: names change in the host's converters, objects do not."""
    kinds = {}
    for module in modules:
        for sub in module.modules():
            is_norm = isinstance(sub, (torch.nn.LayerNorm, torch.nn.GroupNorm))
            for name, param in sub.named_parameters(recurse=False):
                kinds[id(param)] = "ones" if is_norm and name == "weight" else "zeros" if name == "bias" else "normal"
    return kinds


def _stream_safetensors(path: Path, tensors: dict[str, torch.Tensor], kinds: dict[int, str], seed: int) -> None:
    """Write a safetensors file one random fp16 tensor at a time (std 0.02, norms 1, biases 0)."""
    names = sorted(tensors)
    dtypes = {name: torch.float16 if tensors[name].is_floating_point() else tensors[name].dtype for name in names}
    header, offset = {}, 0
    for name in names:
        size = tensors[name].numel() * dtypes[name].itemsize
        header[name] = {"dtype": _DTYPE_NAMES[dtypes[name]], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "generator": f"consistentid weightgen {GENERATOR_VERSION} seed {seed}"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    generator = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for name in names:
            f.write(_fill(tensors[name], kinds.get(id(tensors[name])), dtypes[name], generator).numpy().tobytes())
    partial.replace(path)


def _fill(meta: torch.Tensor, kind: str | None, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if kind is None and not meta.is_floating_point():  # index buffers such as position_ids
        return torch.arange(meta.shape[-1], dtype=dtype).expand(meta.shape).contiguous()
    if kind == "ones":
        return torch.ones(meta.shape, dtype=dtype)
    if kind == "zeros":
        return torch.zeros(meta.shape, dtype=dtype)
    return torch.empty(meta.shape).normal_(0.0, 0.02, generator=generator).to(dtype)
