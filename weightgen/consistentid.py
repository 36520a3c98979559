"""Random ConsistentID checkpoints in the released layouts (docs/method.md §1), full size or reduced for unit tests.

Values follow the golden files' recipe so outputs are non-degenerate: LayerNorm weight 1 + 0.1·N,
biases 0.1·N, weights N/√fan_in, latents N/√width, and LoRA ``up`` 0.1·N/√rank, which is non-zero
(unlike a fresh diffusers LoRA) so that merging it changes the UNet.
"""
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from consistentid_core.checkpoint import RELEASE_FILES, RELEASE_LORA_RANK, expected_adapter_shapes
from consistentid_core.facial_encoder import FacialEncoder
from consistentid_core.projection import ProjPlus
from consistentid_core.unet_layout import CROSS_ATTENTION_DIM

# Unit files keep what the loader and the UNet mapping depend on (processor count, UNet widths,
# cross-attention width, CLIP and InsightFace widths) and shrink the rest.
UNIT_FACIAL_ENCODER = {"width": 64, "depth": 1, "heads": 1, "ff_mult": 2}
UNIT_PROJECTION = {"depth": 1, "heads": 1, "id_hidden_dim": 64, "ff_inner": 128}
UNIT_RANK = 4


def write_checkpoints(models_dir: Path, size: str = "full", seed: int = 0,
                      include_sdxl: bool = False) -> dict[str, Path]:
    """Write ConsistentID checkpoints under ``models_dir/consistentid``.

    full: ``ConsistentID-v1.bin`` (nested, fp16, as released) and ``ConsistentID-v1.safetensors`` (flat,
    prefixed keys) with every real shape, about 370 MB each; the 1.7 GB ``ConsistentID_SDXL-v1.bin`` only
    with ``include_sdxl``. unit: ``ConsistentID-v1-unit.bin``/``.safetensors`` and ``ConsistentID_SDXL-v1-unit.bin``.
    """
    if size not in ("unit", "full"):
        raise ValueError(f"size must be 'unit' or 'full', not {size!r}")
    unit = size == "unit"
    folder = Path(models_dir) / "consistentid"
    folder.mkdir(parents=True, exist_ok=True)
    suffix, tag = ("-unit", "_unit") if unit else ("", "")
    written = {}
    for arch in ("sd15", "sdxl"):
        if arch == "sdxl" and not (unit or include_sdxl):
            continue
        stem = Path(RELEASE_FILES[arch]).stem
        parts = random_checkpoint(arch, unit, seed + (arch == "sdxl"))
        proj_key = "image_proj" if arch == "sd15" else "image_proj_model"  # the released spellings
        path = folder / f"{stem}{suffix}.bin"
        torch.save({"FacialEncoder": parts["FacialEncoder"], proj_key: parts["image_proj"],
                    "adapter_modules": parts["adapter_modules"]}, path)
        written[f"consistentid_{arch}{tag}"] = path
        if arch == "sd15":
            path = folder / f"{stem}{suffix}.safetensors"
            save_file({f"{section}.{k}": _standalone(v) for section, sd in parts.items() for k, v in sd.items()}, path)
            written[f"consistentid_{arch}{tag}_safetensors"] = path
    return written


def random_checkpoint(arch: str, unit: bool, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """fp16 ``{"FacialEncoder", "image_proj", "adapter_modules"}`` state dicts for ``arch``."""
    c = CROSS_ATTENTION_DIM[arch]
    with torch.device("meta"):
        facial = FacialEncoder(output_dim=c, **(UNIT_FACIAL_ENCODER if unit else {}))
        proj = ProjPlus(c, **(UNIT_PROJECTION if unit else {}))
    rank = UNIT_RANK if unit else RELEASE_LORA_RANK
    adapter = {k: (s, 0.0, 0.1 / math.sqrt(rank) if k.endswith("up.weight") else 1 / math.sqrt(s[1]))
               for k, s in expected_adapter_shapes(arch, rank).items()}
    specs = {"FacialEncoder": _module_specs(facial), "image_proj": _module_specs(proj), "adapter_modules": adapter}
    draw = _compact if unit else _independent
    gen = torch.Generator().manual_seed(seed)
    return {section: draw(s, gen) for section, s in specs.items()}


def _standalone(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a storage of its own, as safetensors requires (unit tensors share their pool)."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _module_specs(module: nn.Module) -> dict[str, tuple[tuple, float, float]]:
    """Key → (shape, mean, std) for every parameter of ``module``."""
    specs = {}
    for prefix, m in module.named_modules():
        for name, p in m.named_parameters(recurse=False):
            shape = tuple(p.shape)
            if isinstance(m, nn.LayerNorm) and name == "weight":
                spec = (1.0, 0.1)
            elif name == "bias":
                spec = (0.0, 0.1)
            elif name == "latents":
                spec = (0.0, 1 / math.sqrt(shape[-1]))
            else:
                spec = (0.0, 1 / math.sqrt(shape[1]))
            specs[f"{prefix}.{name}" if prefix else name] = (shape, *spec)
    return specs


def _independent(specs, gen) -> dict[str, torch.Tensor]:
    return {k: torch.randn(shape, generator=gen).mul_(std).add_(mean).half() for k, (shape, mean, std) in specs.items()}


def _compact(specs, gen) -> dict[str, torch.Tensor]:
    """Every tensor a view with stride 1 in each dimension into one random pool per (mean, std).

    Element [i, j] is pool[offset + i + j]: random, full rank, yet a [1280, 2048] weight needs only
    3,328 stored values, because torch.save writes each pool once. This keeps SDXL's real
    140-processor adapter (527 M values) in a file of a few hundred kB.
    """
    groups = {}
    for key, (shape, mean, std) in specs.items():
        groups.setdefault((mean, std), []).append((key, shape))
    out = {}
    for (mean, std), members in groups.items():
        pool = torch.randn(max(sum(s) for _, s in members) + len(members), generator=gen).mul_(std).add_(mean).half()
        for offset, (key, shape) in enumerate(members):
            out[key] = pool.as_strided(shape, (1,) * len(shape), offset)
    return {k: out[k] for k in specs}
