"""ComfyUI IMAGE tensors to RGB uint8 arrays: channels, rounding, sizes and memory."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from consistentid_core.errors import InputImageError
from consistentid_core.images import MIN_SIDE, check_same_photos, images_from_batch, to_rgb_uint8


def comfy_image(path) -> torch.Tensor:
    """What ComfyUI's LoadImage gives for a file: [1, H, W, 3] float32 of k/255."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"), dtype=np.float32) / 255)[None]


def test_round_trip_of_loaded_photo_is_exact(images_dir):
    photo = np.array(Image.open(images_dir / "grace_hopper.jpg").convert("RGB"))
    (rgb,) = images_from_batch(comfy_image(images_dir / "grace_hopper.jpg"))
    assert rgb.dtype == np.uint8 and rgb.shape == (600, 512, 3)
    np.testing.assert_array_equal(rgb, photo)


def test_values_are_rounded_not_truncated():
    image = torch.full((MIN_SIDE, MIN_SIDE, 3), 254.6 / 255)
    image[0, 0] = torch.tensor([0.4 / 255, 0.6 / 255, 1.2])
    rgb = to_rgb_uint8(image)
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert rgb[0, 0].tolist() == [0, 1, 255]


def test_grayscale_becomes_rgb(images_dir):
    gray = np.array(Image.open(images_dir / "camera.png").convert("L"))
    rgb = to_rgb_uint8(torch.from_numpy(gray.astype(np.float32) / 255)[..., None])
    assert rgb.shape == (*gray.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_alpha_is_dropped():
    colour = torch.rand(80, 70, 3)
    rgba = torch.cat([colour, torch.zeros(80, 70, 1)], dim=-1)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), to_rgb_uint8(colour))
    gray_alpha = torch.cat([colour[..., :1], torch.ones(80, 70, 1)], dim=-1)
    np.testing.assert_array_equal(to_rgb_uint8(gray_alpha), to_rgb_uint8(colour[..., :1].expand(80, 70, 3)))


@pytest.mark.parametrize("height,width", [(1, 1), (32, 32), (63, 500)])
def test_tiny_images_are_refused(height, width):
    with pytest.raises(InputImageError) as err:
        images_from_batch(torch.rand(1, height, width, 3))
    assert f"{width}x{height} pixels" in str(err.value)
    assert f"at least {MIN_SIDE} pixels on the short side" in str(err.value)
    assert "Fix:" in str(err.value)


def test_smallest_allowed_size_passes():
    assert to_rgb_uint8(torch.rand(MIN_SIDE, MIN_SIDE, 3)).shape == (MIN_SIDE, MIN_SIDE, 3)


@pytest.mark.parametrize("shape", [(2, 64, 64, 5), (64, 64), (0, 64, 64, 3)])
def test_wrong_shapes_are_refused(shape):
    with pytest.raises(InputImageError, match="channels"):
        images_from_batch(torch.rand(shape))


def test_batch_of_three_gives_three_arrays():
    batch = torch.rand(3, 70, 90, 3)
    arrays = images_from_batch(batch)
    assert len(arrays) == 3
    for image, rgb in zip(batch, arrays):
        np.testing.assert_array_equal(rgb, (image * 255).round().numpy().astype(np.uint8))


_HUGE_SCRIPT = """
import json, resource, sys
import numpy as np, torch
from consistentid_core.images import images_from_batch
from consistentid_core.parsing import BiSeNet, parse_labels
from consistentid_core.regions import face_regions, region_pixels

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

model = BiSeNet().eval()
label_map = np.zeros((512, 512), np.uint8)
label_map[100:400, 100:400] = 1
regions = face_regions(label_map)
image = torch.rand(1, 4000, 6000, 3)
base = peak_mb()
(rgb,) = images_from_batch(image)
converted = peak_mb()
labels = parse_labels(model, rgb)
parsed = peak_mb()
pixels = region_pixels(rgb, regions.masks)
json.dump({"convert": converted - base, "parse": parsed - base, "total": peak_mb() - base,
           "rgb": list(rgb.shape), "labels": list(labels.shape), "pixels": list(pixels.shape)}, sys.stdout)
"""


def test_6000x4000_image_runs_with_bounded_memory():
    """A separate process, so its peak RSS measures this chain alone. Bounds are in uint8
    frames (72 MB): a single float32 copy of the frame would add 4 of them."""
    result = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    stats = json.loads(result.stdout)
    frame_mb = 6000 * 4000 * 3 / 2**20
    assert stats["rgb"] == [4000, 6000, 3] and stats["labels"] == [512, 512] and stats["pixels"] == [1, 3, 224, 224]
    assert stats["convert"] < 2 * frame_mb, stats
    assert stats["parse"] < 4 * frame_mb, stats
    assert stats["total"] < 6 * frame_mb, stats


def test_per_photo_inputs_from_another_batch_are_refused():
    check_same_photos(3, 3, "the face regions")
    with pytest.raises(InputImageError) as err:
        check_same_photos(2, 1, "the region embeds")
    assert str(err.value) == ("[ConsistentID] The image batch has 2 image(s) but the region embeds come from 1. "
                              "Fix: Connect the same image to ConsistentID Face Parse and to this node.")
