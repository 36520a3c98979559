"""FGIS computed independently of the pack, for the tests: DINO ViT-S/16 written out in float64 from the state
dict (explicit softmax attention, patches by reshaping, no ``nn`` modules), the composites by ``Image.composite``,
the preprocessing by hand, the region matching by the names."""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PARTS = {"Face": "face", "Left_Eye": "eyes", "Right_Eye": "eyes", "Left_Ear": "ears", "Right_Ear": "ears",
         "Nose": "nose", "Upper_Lip": "mouth", "Lower_Lip": "mouth"}


def dino_cls(state: dict, pixels: torch.Tensor) -> torch.Tensor:
    """CLS embeddings ``[B, 384]`` (float64) of ``[B, 3, 224, 224]`` pixels."""
    sd = {k: v.double() for k, v in state.items()}
    x = pixels.double()
    batch = x.shape[0]
    patches = x.reshape(batch, 3, 14, 16, 14, 16).permute(0, 2, 4, 1, 3, 5).reshape(batch, 196, 3 * 16 * 16)
    tokens = patches @ sd["patch_embed.proj.weight"].reshape(384, -1).T + sd["patch_embed.proj.bias"]
    x = torch.cat([sd["cls_token"].expand(batch, 1, 384), tokens], 1) + sd["pos_embed"]

    def norm(t, name):
        return F.layer_norm(t, (384,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    for i in range(12):
        p = f"blocks.{i}."
        h = norm(x, p + "norm1") @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = (h[..., j * 384:(j + 1) * 384].reshape(batch, 197, 6, 64).transpose(1, 2) for j in range(3))
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(batch, 197, 384)
        x = x + attended @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = norm(x, p + "norm2") @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
        x = x + F.gelu(h) @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return norm(x, "norm")[:, 0]


def pixels_of(image: Image.Image) -> torch.Tensor:
    """Black centred square padding, PIL bicubic to 224, /255, ImageNet mean and std."""
    frame = np.asarray(image.convert("RGB"))
    side = max(frame.shape[:2])
    square = np.zeros((side, side, 3), np.uint8)
    top, left = (side - frame.shape[0]) // 2, (side - frame.shape[1]) // 2
    square[top:top + frame.shape[0], left:left + frame.shape[1]] = frame
    resized = np.asarray(Image.fromarray(square).resize((224, 224), Image.BICUBIC), np.float64) / 255
    return torch.from_numpy(((resized - MEAN) / STD).transpose(2, 0, 1).copy())


def composite(rgb: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The official region image: the photo through the (bicubic-resized) mask onto black."""
    photo = Image.fromarray(rgb)
    alpha = Image.fromarray(mask).resize(photo.size, Image.BICUBIC)
    return Image.composite(photo, Image.new("RGB", photo.size), alpha)


def fgis(state: dict, reference: np.ndarray, reference_masks: dict, image: np.ndarray, image_masks: dict):
    """``(per-region cosine of the regions both have, their mean)``."""
    ref = {PARTS[name]: mask for name, mask in reference_masks.items()}
    gen = {PARTS[name]: mask for name, mask in image_masks.items()}
    common = [part for part in ref if part in gen]
    pixels = torch.stack([pixels_of(composite(reference, ref[p])) for p in common]
                         + [pixels_of(composite(image, gen[p])) for p in common])
    embeddings = dino_cls(state, pixels)
    a, b = embeddings[:len(common)], embeddings[len(common):]
    scores = dict(zip(common, F.cosine_similarity(a, b, dim=1).tolist()))
    return scores, sum(scores.values()) / len(scores)
