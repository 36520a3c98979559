"""A person's identity as one value: what ConsistentID takes from the reference photos, computed once.

It holds the face-ID tokens (from ArcFace and the whole photo's CLIP-H states), the per-region CLIP-H features
with the regions found, the ArcFace embeddings and faces used, the adapter it belongs to (``adapter``: checked
before any use) and what else produced it (``source``, free-form provenance: models' hashes, photos' hashes,
settings). Several photos combine into one identity, and identities
blend; both are plain tensor arithmetic, so one photo, or a blend at weight 1 or 0, is the input exactly
(docs/method.md §7.5).
"""
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import ConsistentIDError, ModelMismatchError
from .face_id import FaceIDResult, id_vectors
from .projection import ProjPlus, id_tokens
from .regions import REGION_KEYWORD, REGION_PARTS, RegionFeatures
from .unet_layout import ARCH_NAMES, CROSS_ATTENTION_DIM

COMBINE = ("average", "concatenate")
FACE_COLUMNS = 6  # x1, y1, x2, y2, detector score, index in the detector's list; NaN where no face was found


@dataclass(frozen=True)
class AdapterRef:
    """The ConsistentID adapter an identity's face-ID tokens were projected with."""
    arch: str  # "sd15" or "sdxl"
    name: str  # its file name, for messages
    sha256: str  # of its projection weights (ConsistentIDModel.projection_sha256)


@dataclass(frozen=True)
class Identity:
    cond_tokens: torch.Tensor | None  # [n, 4, c]: one row averaged, one per photo concatenated; None: no face
    uncond_tokens: torch.Tensor  # [1, 4, c]
    regions: RegionFeatures  # one region per part, in slot order
    arcface: torch.Tensor  # [P, 512] the ArcFace embedding of each photo used (zero: no face, on_no_face 'zero')
    faces: torch.Tensor  # [P, FACE_COLUMNS] the face used in each photo
    adapter: AdapterRef
    source: Mapping[str, str] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.adapter.arch


def image_sha256(rgb: np.ndarray) -> str:
    return hashlib.sha256(f"{rgb.shape}".encode() + np.ascontiguousarray(rgb).tobytes()).hexdigest()


def combine_regions(per_photo: Sequence[RegionFeatures]) -> RegionFeatures:
    """One region set: each part's features averaged over the photos where it was found, so a region missing
    from one photo does not erase it; a part keeps the name (left/right, upper/lower) of its first photo."""
    found: dict[str, list[torch.Tensor]] = {}
    names: dict[str, str] = {}
    for regions in per_photo:
        for name, features in zip(regions.names, regions.features):
            names.setdefault(REGION_KEYWORD[name], name)
            found.setdefault(REGION_KEYWORD[name], []).append(features)
    parts = [part for part in REGION_PARTS if part in found]
    return RegionFeatures.stacked([names[part] for part in parts],
                                  [torch.stack(found[part]).mean(0) for part in parts], per_photo[0].zero_features)


def combine_tokens(cond_tokens: torch.Tensor, combine: str) -> torch.Tensor:
    """``[P, 4, c]`` tokens of P photos as the identity's: their mean, or all P (attended to together)."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    return cond_tokens.mean(0, keepdim=True) if combine == "average" else cond_tokens


def encode_identity(projection: ProjPlus, faces: Sequence[FaceIDResult], clip_hidden: torch.Tensor,
                    zero_clip_hidden: torch.Tensor, regions: Sequence[RegionFeatures], combine: str, shortcut: bool,
                    adapter: AdapterRef, source: Mapping[str, str]) -> Identity:
    """The identity of the photos whose ``faces`` (a result without embedding gives the zero vector) and
    penultimate CLIP-H states ``clip_hidden`` ``[P, 257, 1280]`` are given, with the region features of every
    photo. Tokens as the official pipelines make them (docs/method.md §4.3): ProjPlus of the ArcFace embedding and
    the CLIP states, uncond from the zero embedding and CLIP of the zero image; no face at all gives no tokens.
    """
    arcface = id_vectors(list(faces))
    with torch.no_grad():
        cond, uncond = id_tokens(projection, arcface if len(faces) else arcface.new_zeros(1, arcface.shape[1]),
                                 clip_hidden if len(faces) else zero_clip_hidden[None], zero_clip_hidden[None],
                                 shortcut=shortcut)
    rows = [[*(face.bbox if face.bbox is not None else [np.nan] * 4),
             np.nan if face.score is None else face.score, np.nan if face.index is None else face.index]
            for face in faces]
    return Identity(combine_tokens(cond, combine) if len(faces) else None, uncond, combine_regions(regions), arcface,
                    torch.tensor(rows, dtype=torch.float32).reshape(-1, FACE_COLUMNS), adapter, dict(source))


def check_adapter(identity: Identity, arch: str, adapter_hash: str, adapter_name: str) -> None:
    """Refuse an identity made with another adapter, or whose tokens do not have its width: its tokens are that
    adapter's projection of the face."""
    own = identity.adapter
    if own.arch != arch:
        raise ModelMismatchError(
            f"The identity was encoded for {ARCH_NAMES.get(own.arch, own.arch)} (with '{own.name}'), but the "
            f"ConsistentID model is {ARCH_NAMES[arch]} ('{adapter_name}').",
            "Encode the photos again with this ConsistentID model, or load the adapter the identity was made with.")
    if own.sha256 != adapter_hash:
        raise ModelMismatchError(
            f"The identity was encoded with another {ARCH_NAMES[arch]} ConsistentID adapter ('{own.name}', "
            f"projection hash {own.sha256[:12]}…) than '{adapter_name}' ({adapter_hash[:12]}…); its face-ID tokens "
            "belong to that adapter.",
            "Load the adapter the identity was made with, or encode the photos again with this one.")
    width = identity.uncond_tokens.shape[-1]
    if width != CROSS_ATTENTION_DIM[arch]:
        raise ModelMismatchError(
            f"The identity's face-ID tokens are {width} wide, but an {ARCH_NAMES[arch]} adapter's are "
            f"{CROSS_ATTENTION_DIM[arch]}: the identity file was changed after it was saved.",
            "Encode the photos again with this ConsistentID model.")


def blend(a: Identity, b: Identity, weight: float) -> Identity:
    """``weight``·A + (1 − ``weight``)·B of the face-ID tokens and of each region part's features.

    ``torch.lerp`` returns A exactly at weight 1 and B at 0. A part found in only one identity keeps that
    identity's features while its weight is above 0. The photos and faces are those of the identities that
    take part (weight above 0).
    """
    if a.adapter.sha256 != b.adapter.sha256 or a.arch != b.arch:
        raise ModelMismatchError(
            f"The two identities were encoded with different ConsistentID adapters ('{a.adapter.name}' "
            f"and '{b.adapter.name}'), so their face-ID tokens cannot be mixed.",
            "Encode both with the same ConsistentID model.")
    if a.cond_tokens is None or b.cond_tokens is None:
        raise ConsistentIDError("One of the identities has no face-ID tokens (no face was found in its photos).",
                                "Encode it from a photo with a detectable face, or set on_no_face to 'zero'.")
    if a.cond_tokens.shape != b.cond_tokens.shape:
        raise ConsistentIDError(
            f"The identities have {a.cond_tokens.shape[0]} and {b.cond_tokens.shape[0]} rows of face-ID tokens "
            "(photos concatenated), which cannot be mixed row by row.",
            "Encode both with combine set to 'average' (one row each).")
    mixed = lambda x, y: torch.lerp(y, x.to(y), weight)  # noqa: E731
    # By position, not by object: the same identity may be connected to both inputs.
    shares = ((a, weight), (b, 1.0 - weight))
    sides: dict[str, dict[int, tuple[str, torch.Tensor]]] = {part: {} for part in REGION_PARTS}
    for side, (identity, _) in enumerate(shares):
        for name, features in zip(identity.regions.names, identity.regions.features):
            sides[REGION_KEYWORD[name]][side] = (name, features)
    names, features = [], []
    for part, found in sides.items():
        if len(found) == 2:
            names.append(found[0][0])
            features.append(mixed(found[0][1], found[1][1]))
        elif found:
            [(side, (name, value))] = found.items()
            if shares[side][1] > 0:
                names.append(name)
                features.append(value)
    zero = mixed(a.regions.zero_features, b.regions.zero_features)
    taking_part = [identity for identity, share in shares if share > 0]
    source = {key: a.source[key] for key in ("clip_vision_sha256", "insightface", "insightface_recognition",
                                             "insightface_recognition_sha256") if key in a.source}
    source.update(blend=f"{weight:g}·A + {1 - weight:g}·B",
                  images_sha256=",".join(i.source.get("images_sha256", "") for i in taking_part))
    return Identity(mixed(a.cond_tokens, b.cond_tokens), mixed(a.uncond_tokens, b.uncond_tokens),
                    RegionFeatures.stacked(names, features, zero),
                    torch.cat([i.arcface for i in taking_part]), torch.cat([i.faces for i in taking_part]), a.adapter,
                    source)
