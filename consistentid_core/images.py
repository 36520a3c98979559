"""ComfyUI IMAGE tensors to the RGB uint8 arrays the rest of the core works on."""
import numpy as np
import torch

from .errors import InputImageError

# The face parser sees the photo resized to 512 (or 1280) and the ConsistentID regions are
# eyes, ears and lips; below 64 px on the short side those parts are a few pixels wide and
# the parse is noise, so such an image is refused instead of silently giving empty regions.
MIN_SIDE = 64

# Pixels converted at a time: a 6000x4000 frame then needs ~3 MB of float scratch, not a
# second full-resolution float copy (larger chunks also grew the process's peak memory).
_PIXELS_PER_CHUNK = 1 << 18


def check_size(height: int, width: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise InputImageError(
            f"The reference image is {width}x{height} pixels; the face regions need at least "
            f"{MIN_SIDE} pixels on the short side.",
            "Use a larger photo of the face (ideally 512 pixels or more on the short side), "
            "or upscale it before this node.",
        )


def check_same_photos(photos: int, other: int, what: str) -> None:
    """Refuse per-photo data ``what`` (e.g. "the face regions") that came from another number of photos."""
    if photos != other:
        raise InputImageError(f"The image batch has {photos} image(s) but {what} come from {other}.",
                              "Connect the same image to ConsistentID Face Parse and to this node.")


def to_rgb_uint8(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI image ``[H, W, C]`` (float 0..1) as an RGB ``uint8`` array ``[H, W, 3]``.

    Rounds (LoadImage stores ``k / 255``, so rounding gives back the file's bytes exactly).
    Grayscale (C=1) and gray+alpha (C=2) become RGB; alpha is dropped, as the host's own
    CLIP preprocessing does.
    """
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise InputImageError(
            f"Expected one image of shape [height, width, channels] with 1 to 4 channels, got {tuple(image.shape)}.",
            "Connect an IMAGE output (for example from Load Image) to this input.",
        )
    height, width, channels = image.shape
    check_size(height, width)
    colour = image[..., :3] if channels >= 3 else image[..., :1].expand(height, width, 3)
    out = torch.empty((height, width, 3), dtype=torch.uint8)
    step = max(1, _PIXELS_PER_CHUNK // width)
    for top in range(0, height, step):
        rows = colour[top:top + step].to("cpu", torch.float32)
        out[top:top + step] = rows.mul(255).round_().clamp_(0, 255)
    return out.numpy()


def images_from_batch(images: torch.Tensor) -> list[np.ndarray]:
    """A ComfyUI IMAGE batch ``[B, H, W, C]`` as a list of RGB ``uint8`` arrays."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputImageError(
            f"Expected an image batch of shape [batch, height, width, channels], got {tuple(images.shape)}.",
            "Connect an IMAGE output (for example from Load Image) to this input.",
        )
    return [to_rgb_uint8(image) for image in images]
