"""Facial regions from a BiSeNet label map, and the CLIP pixels of each region.

Everything here follows the official code (docs/method.md §2.2-2.3, quirks §8.7-8.8): hole-filled
per-class masks, one eye / ear / lip, full-frame composites on black and the PIL-bicubic CLIP
preprocessing of ``CLIPImageProcessor()``.
"""
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

# Official ``mapping_table`` names by label value. Several do not match BiSeNet's classes
# (6 is eyeglasses, 17 hair); they are kept because the region keys are these names.
LABEL_NAMES = (
    "Background", "Face", "Left_Eyebrow", "Right_Eyebrow", "Left_Eye", "Right_Eye", "Hair", "Left_Ear",
    "Right_Ear", "Mouth_External Contour", "Nose", "Mouth_Inner_Contour", "Upper_Lip", "Lower_Lip", "Neck",
    "Neck_Inner Contour", "Cloth", "Hat", "Earring", "Necklace", "Glasses", "Hand", "Wristband",
    "Clothes_Upper", "Clothes_Lower",
)
# ``mapping_table`` colours, used for the preview.
LABEL_COLOURS = (
    (0, 0, 0), (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 0, 85), (255, 0, 170), (0, 0, 255),
    (85, 0, 255), (170, 0, 255), (0, 255, 85), (0, 255, 0), (0, 255, 170), (85, 255, 0), (170, 255, 0),
    (0, 85, 255), (0, 170, 255), (255, 255, 0), (255, 0, 255), (255, 85, 255), (255, 255, 85),
    (255, 170, 255), (255, 0, 255), (0, 255, 255), (85, 255, 255), (170, 255, 255),
)
WITHOUT_BACKGROUND = "WithoutBackground"

REGION_KEYWORD = {
    "Face": "face",
    "Left_Eye": "eyes", "Right_Eye": "eyes",
    "Left_Ear": "ears", "Right_Ear": "ears",
    "Nose": "nose",
    "Upper_Lip": "mouth", "Lower_Lip": "mouth",
}

# The region parts, as the caption names them, in slot order: face, eyes, ears, nose, mouth.
REGION_PARTS = tuple(dict.fromkeys(REGION_KEYWORD.values()))
MAX_SLOTS = 5
CLIP_SIZE = 224
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass
class FaceRegions:
    """One reference image after parsing."""
    label_map: np.ndarray  # [S, S] uint8, the parse
    masks: dict[str, np.ndarray]  # kept regions in slot order -> hole-filled 0/255 uint8 [S, S]


@dataclass
class RegionFeatures:
    """One reference image after CLIP vision."""
    names: list[str]  # kept region names, slot order
    features: torch.Tensor  # [len(names), 257, 1280] penultimate CLIP-H states of each region composite
    zero_features: torch.Tensor  # [257, 1280] CLIP-H penultimate of the all-zeros normalised image

    @classmethod
    def stacked(cls, names: list[str], features: Sequence[torch.Tensor],
                zero_features: torch.Tensor) -> "RegionFeatures":
        """The regions ``names`` with one ``[257, 1280]`` tensor each (no region at all is an empty set)."""
        if not features:
            return cls(names, zero_features.new_zeros(0, *zero_features.shape), zero_features)
        return cls(names, torch.stack(list(features)), zero_features)

    def slots(self, keep: Sequence[str], max_slots: int = MAX_SLOTS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cond, uncond, slot_mask)``: ``[max_slots, 257, 1280]`` twice and ``[max_slots]`` bool.

        The regions in ``keep`` fill the first slots in slot order (class-id order), the rest
        are ``zero_features``; ``uncond`` is ``zero_features`` in every slot. The official code
        drops regions first and encodes the survivors afterwards; CLIP encodes each image on
        its own, so encoding every region once and selecting here gives the same tensors.
        """
        unknown = [name for name in keep if name not in self.names]
        if unknown:
            raise ValueError(f"regions {unknown} were not encoded; encoded: {self.names}")
        rows = [i for i, name in enumerate(self.names) if name in keep]
        uncond = self.zero_features.expand(max_slots, *self.zero_features.shape).clone()
        cond = uncond.clone()
        cond[:len(rows)] = self.features[rows]
        slot_mask = torch.arange(max_slots) < len(rows)
        return cond, uncond, slot_mask


def masks_for_unique_values(label_map: np.ndarray) -> dict[str, np.ndarray]:
    """A hole-filled 0/255 mask per class present, in ascending class order.

    Every connected blob of a class is kept and its holes are filled (the Face mask covers the
    eyes, nose and mouth). Class 0 gives ``WithoutBackground`` (the inverse) before
    ``Background``; values without an official name are skipped.
    """
    masks = {}
    for value in np.unique(label_map):
        binary = np.uint8(label_map == value) * 255
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        mask = np.zeros_like(binary)
        # One contour at a time: drawing them together could leave overlaps unfilled.
        for contour in contours:
            cv2.drawContours(mask, [contour], -1, 255, thickness=cv2.FILLED)
        if value == 0:
            masks[WITHOUT_BACKGROUND] = 255 - mask
        if value < len(LABEL_NAMES):
            masks[LABEL_NAMES[value]] = mask
    return masks


def select_regions(masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The regions ConsistentID uses, in slot order: Face, one eye, one ear, Nose, one lip.

    Of each left/right (upper/lower) pair only the first present is used: Left_Eye over
    Right_Eye, Left_Ear over Right_Ear, Upper_Lip over Lower_Lip.
    """
    selected, parts_seen = {}, set()
    for name, mask in masks.items():
        if name not in REGION_KEYWORD:
            continue
        part = name.split("_")[-1]
        if part in parts_seen:
            continue
        parts_seen.add(part)
        selected[name] = mask
    return selected


def face_regions(label_map: np.ndarray) -> FaceRegions:
    return FaceRegions(label_map, select_regions(masks_for_unique_values(label_map)))


def mask_at_size(mask: np.ndarray, width: int, height: int) -> Image.Image:
    """A parse-sized mask at the photo's size, with PIL's default filter for "L" images
    (bicubic): the soft, clipped edges are part of what the official model saw."""
    return Image.fromarray(mask).resize((width, height), Image.BICUBIC)


def clip_pixels(image: np.ndarray | Image.Image) -> torch.Tensor:
    """``CLIPImageProcessor()`` with its defaults: PIL bicubic resize of the shortest edge to 224,
    centre crop 224, x1/255, CLIP mean/std. Returns float32 ``[3, 224, 224]``."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(CLIP_SIZE * long / short)
    size = (CLIP_SIZE, resized_long) if width <= height else (resized_long, CLIP_SIZE)
    pixels = np.asarray(image.resize(size, Image.BICUBIC))
    top, left = (pixels.shape[0] - CLIP_SIZE) // 2, (pixels.shape[1] - CLIP_SIZE) // 2
    crop = pixels[top:top + CLIP_SIZE, left:left + CLIP_SIZE]
    # float64 rescale then float32 normalisation, in transformers' order, to match it to the last bit
    scaled = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    return torch.from_numpy(((scaled - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy())


def _on_black(photo: Image.Image, mask: Image.Image) -> Image.Image:
    """``Image.composite(photo, black, mask)``, which is a copy of a black frame with the photo
    pasted through the mask; pasting onto a fresh black frame saves one full-size copy."""
    out = Image.new("RGB", photo.size)
    out.paste(photo, None, mask)
    return out


def region_composites(rgb: np.ndarray, masks: dict[str, np.ndarray]) -> Iterator[Image.Image]:
    """Each region as the official code shows it to CLIP: the full frame with everything outside the region
    black (not a crop). One at a time, since each is a full-size frame."""
    photo = Image.fromarray(rgb)
    for mask in masks.values():
        yield _on_black(photo, mask_at_size(mask, *photo.size))


def region_pixels(rgb: np.ndarray, masks: dict[str, np.ndarray], max_slots: int = MAX_SLOTS) -> torch.Tensor:
    """CLIP pixels ``[len(masks), 3, 224, 224]`` of each region composite (:func:`region_composites`)."""
    if len(masks) > max_slots:
        raise ValueError(f"{len(masks)} regions do not fit in {max_slots} slots")
    if not masks:
        return torch.zeros(0, 3, CLIP_SIZE, CLIP_SIZE)
    return torch.stack([clip_pixels(composite) for composite in region_composites(rgb, masks)])

