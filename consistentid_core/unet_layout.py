"""Where each ConsistentID attention processor sits in the SD1.5 and SDXL UNets.

The checkpoint's ``adapter_modules`` are numbered in diffusers' ``attn_processors`` order: all
down blocks, then all up blocks, then the mid block; inside a transformer, ``attn1`` then ``attn2``
of each block. This module is the one place that maps those indices to ComfyUI's UNet
(docs/method.md §1.3), so the checkpoint validator and the attention patches agree.
"""
from dataclasses import dataclass

ARCHS = ("sd15", "sdxl")
ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}
CROSS_ATTENTION_DIM = {"sd15": 768, "sdxl": 2048}


@dataclass(frozen=True)
class Processor:
    index: int
    kind: str  # "self" (attn1) or "cross" (attn2)
    block: tuple[str, int]  # ComfyUI's transformer_options["block"], the key of set_model_attn*_replace
    transformer_index: int  # block index inside the SpatialTransformer
    hidden_size: int

    @property
    def attn(self) -> str:
        return "attn1" if self.kind == "self" else "attn2"

    @property
    def ldm_module(self) -> str:
        """Module path inside ComfyUI's ``diffusion_model`` (the middle transformer is ``middle_block.1``)."""
        name, number = self.block
        prefix = "middle_block.1" if name == "middle" else f"{name}_blocks.{number}.1"
        return f"{prefix}.transformer_blocks.{self.transformer_index}.{self.attn}"


# (ComfyUI block, transformer depth, hidden size), in diffusers' attn_processors order (down, up, mid).
_SD15_TRANSFORMERS = (
    (("input", 1), 1, 320),
    (("input", 2), 1, 320),
    (("input", 4), 1, 640),
    (("input", 5), 1, 640),
    (("input", 7), 1, 1280),
    (("input", 8), 1, 1280),
    (("output", 3), 1, 1280),
    (("output", 4), 1, 1280),
    (("output", 5), 1, 1280),
    (("output", 6), 1, 640),
    (("output", 7), 1, 640),
    (("output", 8), 1, 640),
    (("output", 9), 1, 320),
    (("output", 10), 1, 320),
    (("output", 11), 1, 320),
    (("middle", 0), 1, 1280),
)

_SDXL_TRANSFORMERS = (
    (("input", 4), 2, 640),
    (("input", 5), 2, 640),
    (("input", 7), 10, 1280),
    (("input", 8), 10, 1280),
    (("output", 0), 10, 1280),
    (("output", 1), 10, 1280),
    (("output", 2), 10, 1280),
    (("output", 3), 2, 640),
    (("output", 4), 2, 640),
    (("output", 5), 2, 640),
    (("middle", 0), 10, 1280),
)


def _processors(transformers) -> tuple[Processor, ...]:
    out = []
    for block, depth, hidden in transformers:
        for j in range(depth):
            for kind in ("self", "cross"):
                out.append(Processor(len(out), kind, block, j, hidden))
    return tuple(out)


PROCESSORS = {"sd15": _processors(_SD15_TRANSFORMERS), "sdxl": _processors(_SDXL_TRANSFORMERS)}
