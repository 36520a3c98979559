"""BiSeNet face parser (ResNet-18 context path, 19 CelebAMask-HQ classes) and its loader.

Parameter names are exactly those of the official ``face_parsing.pth`` (face-parsing.PyTorch's
``79999_iter.pth``) and of facexlib's ``parsing_bisenet.pth``: both projects define the same
modules under the same names, so one state dict layout covers both files.
"""
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import WeightFileError
from .tensor_files import read_tensors

NUM_CLASSES = 19
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, in_chan: int, out_chan: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(in_chan, out_chan, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_chan))

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(in_chan: int, out_chan: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(in_chan, out_chan, stride), BasicBlock(out_chan, out_chan))


class Resnet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x):
        feat = self.conv(x)
        atten = self.bn_atten(self.conv_atten(F.avg_pool2d(feat, feat.shape[2:])))
        return feat * torch.sigmoid(atten)


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = Resnet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(F.avg_pool2d(feat32, feat32.shape[2:]))
        feat32_sum = self.arm32(feat32) + avg
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up


class FeatureFusionModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.avg_pool2d(feat, feat.shape[2:])))))
        return feat * atten + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_chan: int, mid_chan: int, n_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The official network. The two auxiliary heads only exist so the checkpoint loads
    strictly: inference uses the first head alone, as ``parsing_face_mask`` does."""

    def __init__(self, n_classes: int = NUM_CLASSES):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Main-head logits at 1/8 of the input size (the output of ``conv_out``)."""
        feat8, feat_cp8 = self.cp(x)
        return self.conv_out(self.ffm(feat8, feat_cp8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head_logits(x), x.shape[2:], mode="bilinear", align_corners=True)


def _fix_text(path: str) -> str:
    return (
        f"Use a BiSeNet face parser in one of the two known layouts: the ConsistentID release's "
        f"'face_parsing.pth' (face-parsing.PyTorch 79999_iter, keys 'cp.resnet.conv1.weight', ...) or "
        f"facexlib's 'parsing_bisenet.pth', and put it in the face_parsing model folder "
        f"(this file: {path})."
    )


def _read(path: str) -> Mapping:
    return read_tensors(path, "a face parser", _fix_text(path))


def official_state_dict(raw: Mapping, path: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Bring a loaded face-parser file to the official key layout, or explain why it is not one.

    Accepts the bare state dict of either release, a copy saved from ``DataParallel``
    (``module.`` prefix) or wrapped the way training tools save (``params``, ``params_ema``,
    ``state_dict``, ``model``), and files without ``num_batches_tracked`` (older PyTorch).
    """
    for wrapper in ("params_ema", "params", "state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
    if not isinstance(raw, Mapping):
        raise WeightFileError(f"Face parser file '{path}' holds a {type(raw).__name__}, not a state dict.",
                              _fix_text(path))
    state = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    with torch.device("meta"):
        expected = BiSeNet().state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in raw if str(k).removeprefix("module.") not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("wrong shapes", wrong_shape))
            if keys
        )
        raise WeightFileError(f"Face parser file '{path}' is not a 19-class BiSeNet face parser: {details}.",
                              _fix_text(path))
    # num_batches_tracked only matters for training; files from old PyTorch lack it
    return {k: state[k] if k in state else torch.tensor(0) for k in expected}


def load_face_parser(path: str) -> BiSeNet:
    """The BiSeNet in ``path`` (safetensors or a weights-only torch file), fp32, eval mode, on CPU."""
    state = official_state_dict(_read(path), path)
    # Built without storage and given the file's tensors: no time spent on a random init.
    with torch.device("meta"):
        model = BiSeNet()
    model.load_state_dict(state, assign=True)
    return model.float().train(False).requires_grad_(False)


def parser_input(rgb: np.ndarray, size: int = 512) -> torch.Tensor:
    """``[1, 3, size, size]`` as ``parsing_face_mask`` builds it: PIL bilinear resize to a square
    (aspect ratio not kept), ``ToTensor``, ImageNet normalisation."""
    square = np.array(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(square).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub_(mean).div_(std).unsqueeze(0)


@torch.inference_mode()
def parse_logits(model: BiSeNet, rgb: np.ndarray, size: int = 512) -> torch.Tensor:
    """Full-size main-head logits ``[1, 19, size, size]``, on the model's device."""
    device = next(model.parameters()).device
    return model(parser_input(rgb, size).to(device))


@torch.inference_mode()
def parse_labels(model: BiSeNet, rgb: np.ndarray, size: int = 512) -> np.ndarray:
    """The class of every pixel of the ``size`` x ``size`` parse, ``uint8 [size, size]``."""
    return parse_logits(model, rgb, size)[0].argmax(0).to("cpu", torch.uint8).numpy()
