"""DINO ViT-S/16, the image encoder of the ConsistentID paper's FGIS metric, and its loader.

Parameter names and shapes are exactly those of Facebook's released backbone ``dino_deitsmall16_pretrain.pth``
(a plain state dict: ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.{0..11}.*``, ``norm.*``), so
the file loads strictly into :class:`DinoViT`. The embedding is the CLS token after the last norm, which is what
DINO's ``VisionTransformer.forward`` returns.
"""
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import WeightFileError
from .parsing import IMAGENET_MEAN, IMAGENET_STD
from .tensor_files import read_tensors

RELEASE_FILE = "dino_deitsmall16_pretrain.pth"
DOWNLOAD = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
EMBED_DIM, DEPTH, HEADS, MLP_RATIO = 384, 12, 6, 4
PATCH, IMAGE_SIZE = 16, 224
LAYER_NORM_EPS = 1e-6  # DINO's norm_layer=partial(nn.LayerNorm, eps=1e-6)
_LISTED = 5  # keys named per problem in an error message


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(EMBED_DIM, 3 * EMBED_DIM)
        self.proj = nn.Linear(EMBED_DIM, EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, HEADS, EMBED_DIM // HEADS).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, EMBED_DIM))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(EMBED_DIM, MLP_RATIO * EMBED_DIM)
        self.fc2 = nn.Linear(MLP_RATIO * EMBED_DIM, EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(EMBED_DIM, eps=LAYER_NORM_EPS)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(EMBED_DIM, eps=LAYER_NORM_EPS)
        self.mlp = Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, EMBED_DIM, PATCH, PATCH)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """ViT-S/16 at 224 x 224: the only size its position embeddings cover, so no interpolation is needed."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (IMAGE_SIZE // PATCH) ** 2, EMBED_DIM))
        self.patch_embed = PatchEmbed()
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(EMBED_DIM, eps=LAYER_NORM_EPS)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLS embeddings ``[B, 384]`` of normalised pixels ``[B, 3, 224, 224]``."""
        patches = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def _fix(path: str) -> str:
    return (f"Use Facebook's DINO ViT-S/16 backbone {RELEASE_FILE} ({DOWNLOAD}), unchanged, or a .safetensors "
            f"with the same keys, in the dino model folder (this file: {path}).")


def dino_state_dict(raw: Mapping, path: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The file's tensors if they are exactly DINO ViT-S/16's keys and shapes, else an error listing the
    differences."""
    if not isinstance(raw, Mapping):
        raise WeightFileError(f"DINO file '{path}' holds a {type(raw).__name__}, not a state dict.", _fix(path))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DinoViT().state_dict().items()}
    missing = [k for k in expected if k not in raw]
    unexpected = [str(k) for k in raw if k not in expected]
    wrong = [f"{k} {list(raw[k].shape)} (expected {list(shape)})" for k, shape in expected.items()
             if k in raw and (not isinstance(raw[k], torch.Tensor) or tuple(raw[k].shape) != shape)]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:_LISTED])}{', …' if len(keys) > _LISTED else ''}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys)
        raise WeightFileError(f"DINO file '{path}' is not a DINO ViT-S/16 backbone: {details}.", _fix(path))
    return dict(raw)


def load_dino(path: str) -> DinoViT:
    """DINO ViT-S/16 from a weights-only torch file or a safetensors file, fp32, eval mode, on CPU."""
    state = dino_state_dict(read_tensors(path, "a DINO ViT-S/16 backbone", _fix(path)), path)
    with torch.device("meta"):
        model = DinoViT()
    model.load_state_dict(state, assign=True)
    return model.float().train(False).requires_grad_(False)


def dino_pixels(image: Image.Image) -> torch.Tensor:
    """``[3, 224, 224]`` float32: the image padded with black to a centred square, PIL-bicubic resized to 224,
    x1/255, ImageNet mean/std.

    Padded rather than cropped, so no part of a region near the frame's edge is cut off, and black, the colour
    around every region of a masked composite; the aspect ratio is kept, so a region has the same shape in a
    portrait and a landscape frame.
    """
    image = image.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    pixels = np.asarray(square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float32) / 255
    normalised = (pixels - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy())


@torch.inference_mode()
def dino_embed(model: DinoViT, pixels: torch.Tensor) -> torch.Tensor:
    """CLS embeddings ``[B, 384]`` float32 on the CPU, computed on the model's device in fp32."""
    device = next(model.parameters()).device
    return model(pixels.to(device, torch.float32)).float().cpu()
