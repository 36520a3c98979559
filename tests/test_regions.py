"""Region masks, region selection, CLIP pixels and the 5-slot features."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from consistentid_core.regions import (LABEL_NAMES, MAX_SLOTS, REGION_KEYWORD, RegionFeatures, clip_pixels,
                                       face_regions, masks_for_unique_values, region_pixels, select_regions)


def facial_mask(masks: dict, size: int) -> torch.Tensor:
    """The official (inference-unused) ``facial_mask``: each kept region mask as 0/1, zero-padded to 5 slots."""
    out = torch.zeros(MAX_SLOTS, size, size)
    for slot, mask in enumerate(masks.values()):
        out[slot] = torch.from_numpy(mask).float() / 255
    return out


def test_golden_g2_regions(golden_dir):
    """Every G2 case: masks of every class, key selection, facial_mask and facial_clip_image.

    Alignment to the caption is the prompt code's job, so the CLIP input is built for the
    stored ``region_keys_kept``.
    """
    cases = sorted(golden_dir.glob("g2_*.json"))
    assert cases, f"no g2_*.json in {golden_dir}"
    for case in cases:
        meta = json.loads(case.read_text())
        tensors = load_file(case.with_suffix(".safetensors"))
        masks = masks_for_unique_values(tensors["label_map"].numpy())

        assert list(masks) == [entry["key"] for entry in meta["mask_files"]], case.name
        for entry in meta["mask_files"]:
            expected = np.array(Image.open(case.parent / f"{case.stem}_masks" / entry["file"]))
            np.testing.assert_array_equal(masks[entry["key"]], expected, err_msg=f"{case.name} {entry['key']}")

        assert list(select_regions(masks)) == meta["keys_selected_get_prepare_facemask"], case.name

        kept = {name: masks[name] for name in meta["region_keys_kept"]}
        size = tensors["label_map"].shape[0]
        assert torch.equal(facial_mask(kept, size), tensors["facial_mask"].float()), case.name

        photo = np.array(Image.open(golden_dir / meta["photo"]).convert("RGB"))
        pixels = region_pixels(photo, kept)
        assert pixels.shape[0] == meta["num_valid_slots"]
        padded = torch.cat([pixels, torch.zeros(5 - len(pixels), 3, 224, 224)])
        torch.testing.assert_close(padded, tensors["facial_clip_image"], atol=1e-5, rtol=0, msg=case.name)


def test_mask_names_follow_the_official_table():
    assert len(LABEL_NAMES) == 25
    assert [LABEL_NAMES[i] for i in (1, 4, 5, 7, 8, 10, 12, 13)] == [
        "Face", "Left_Eye", "Right_Eye", "Left_Ear", "Right_Ear", "Nose", "Upper_Lip", "Lower_Lip"]
    assert REGION_KEYWORD == {"Face": "face", "Left_Eye": "eyes", "Right_Eye": "eyes", "Left_Ear": "ears",
                              "Right_Ear": "ears", "Nose": "nose", "Upper_Lip": "mouth", "Lower_Lip": "mouth"}


def test_masks_fill_holes_keep_blobs_and_split_background():
    label_map = np.zeros((64, 64), np.uint8)
    label_map[10:40, 10:40] = 1
    label_map[20:25, 20:25] = 4  # an eye: a hole in the skin
    label_map[50:60, 50:60] = 1  # a second, separate skin blob
    masks = masks_for_unique_values(label_map)
    assert list(masks) == ["WithoutBackground", "Background", "Face", "Left_Eye"]
    assert all(mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} for mask in masks.values())
    face = masks["Face"]
    assert face[22, 22] == 255, "holes inside the face are filled"
    assert face[55, 55] == 255, "disconnected blobs are kept"
    assert face[45, 45] == 0
    np.testing.assert_array_equal(masks["WithoutBackground"], 255 - masks["Background"])


def test_selection_keeps_one_of_each_pair_in_class_order():
    label_map = np.zeros((64, 64), np.uint8)
    for value, row in ((1, 0), (5, 8), (4, 16), (8, 24), (10, 32), (11, 40), (13, 48), (12, 56)):
        label_map[row:row + 6, 20:40] = value
    kept = select_regions(masks_for_unique_values(label_map))
    assert list(kept) == ["Face", "Left_Eye", "Right_Ear", "Nose", "Upper_Lip"]

    label_map[label_map == 12] = 0
    label_map[label_map == 4] = 0
    assert list(face_regions(label_map).masks) == ["Face", "Right_Eye", "Right_Ear", "Nose", "Lower_Lip"]


def test_clip_pixels_match_transformers_pil_processor_on_non_square_images():
    import transformers

    processor = transformers.CLIPImageProcessorPil
    rng = np.random.default_rng(0)
    for height, width in ((300, 260), (260, 301), (844, 640), (225, 700)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = processor()(images=Image.fromarray(image), return_tensors="pt").pixel_values[0]
        torch.testing.assert_close(clip_pixels(image), expected, atol=1e-6, rtol=0)


def test_region_pixels_are_full_frame_composites():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    mask = np.zeros((512, 512), np.uint8)
    mask[:, :256] = 255
    pixels = region_pixels(photo, {"Face": mask, "Nose": np.full((512, 512), 255, np.uint8)})
    assert pixels.shape == (2, 3, 224, 224) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[1], clip_pixels(photo), atol=0, rtol=0)
    black = clip_pixels(np.zeros((300, 200, 3), np.uint8))
    torch.testing.assert_close(pixels[0][..., -10:], black[..., -10:], atol=0, rtol=0)
    assert region_pixels(photo, {}).shape == (0, 3, 224, 224)
    with pytest.raises(ValueError, match="6 regions do not fit in 5 slots"):
        region_pixels(photo, {str(i): mask for i in range(6)})


def test_slots_fill_kept_regions_in_slot_order_and_pad_with_zero_features():
    features = torch.randn(3, 257, 1280)
    zero = torch.randn(257, 1280)
    embeds = RegionFeatures(["Face", "Left_Eye", "Nose"], features, zero)

    cond, uncond, slot_mask = embeds.slots(["Nose", "Face"])
    assert cond.shape == uncond.shape == (5, 257, 1280)
    assert slot_mask.tolist() == [True, True, False, False, False]
    assert torch.equal(cond[0], features[0]) and torch.equal(cond[1], features[2])
    assert all(torch.equal(cond[i], zero) for i in range(2, 5))
    assert all(torch.equal(uncond[i], zero) for i in range(5))

    cond, _, slot_mask = embeds.slots([])
    assert not slot_mask.any() and torch.equal(cond, uncond)
    with pytest.raises(ValueError, match="Right_Ear"):
        embeds.slots(["Right_Ear"])
