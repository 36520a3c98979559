"""Random BiSeNet face parsers in the two released file layouts."""
from pathlib import Path

import torch
import torch.nn.functional as F

from consistentid_core.parsing import BiSeNet, IMAGENET_MEAN, IMAGENET_STD


def _calibration_images(generator: torch.Generator) -> torch.Tensor:
    """Smooth random colour fields, normalised like photos, so BN statistics fit real inputs."""
    coarse = torch.rand(2, 3, 8, 8, generator=generator)
    images = F.interpolate(coarse, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def random_bisenet(seed: int = 0) -> BiSeNet:
    """Default-initialised BiSeNet whose BN running statistics come from one cumulative
    train-mode pass, then BN affine set to 1 + 0.1·randn / 0.1·randn: finite, non-constant
    logits with several classes winning somewhere, like the golden G3 recipe."""
    torch.manual_seed(seed)
    model = BiSeNet()
    generator = torch.Generator().manual_seed(seed + 1)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in batch_norms:
        bn.momentum = None
        bn.reset_running_stats()
    with torch.no_grad():
        model.train()
        model.head_logits(_calibration_images(generator))
        for bn in batch_norms:
            bn.momentum = 0.1
            bn.weight.copy_(1 + 0.1 * torch.randn(bn.weight.shape, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=generator))
    return model.eval()


def write_face_parsers(models_dir: Path, seed: int = 0) -> dict[str, Path]:
    """``face_parsing/face_parsing.pth`` (ConsistentID release, 79999_iter layout) and
    ``face_parsing/parsing_bisenet.pth`` (facexlib release) holding the same random weights.

    facexlib's BiSeNet defines the same modules under the same names, so both files are plain
    state dicts with identical keys, as the two releases are.
    """
    folder = Path(models_dir) / "face_parsing"
    folder.mkdir(parents=True, exist_ok=True)
    state = random_bisenet(seed).state_dict()
    written = {
        "face_parsing_official": folder / "face_parsing.pth",
        "face_parsing_facexlib": folder / "parsing_bisenet.pth",
    }
    for path in written.values():
        torch.save(state, path)
    return written
