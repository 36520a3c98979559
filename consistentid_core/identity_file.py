"""Identity files: an :class:`~.identity.Identity` as ``.safetensors``, tensors and metadata only.

Tensors: ``cond_tokens`` (absent when no face was found), ``uncond_tokens``, ``arcface``, ``faces``,
``zero_features`` and ``region.<name>`` per region found. Metadata (strings): ``format`` =
``consistentid-identity``, ``format_version``, ``regions`` (the region names in slot order), the adapter
(``base_model``, ``adapter``, ``adapter_sha256``) and the identity's free-form ``source``. Saved tensors keep their
dtype, so a loaded identity is bit-identical to the saved one.

A file is checked whole before anything uses it (:func:`_check_tensors`): an identity file is something users
share, and a changed one must be refused with its name, not give a black or silently different picture.
"""
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import WeightFileError
from .identity import FACE_COLUMNS, AdapterRef, Identity
from .regions import REGION_KEYWORD, RegionFeatures
from .unet_layout import ARCH_NAMES

FORMAT = "consistentid-identity"
FORMAT_VERSION = "1"
_REGION = "region."
_ADAPTER_KEYS = ("base_model", "adapter", "adapter_sha256")
MAX_ROWS = 64  # photos in one identity (one row of face-ID tokens each with combine 'concatenate')
_FIX = "Select a file written by ConsistentID Save Identity, or encode the photos again."


def save_identity(identity: Identity, path: str) -> None:
    tensors = {"uncond_tokens": identity.uncond_tokens, "arcface": identity.arcface, "faces": identity.faces,
               "zero_features": identity.regions.zero_features}
    if identity.cond_tokens is not None:
        tensors["cond_tokens"] = identity.cond_tokens
    for name, features in zip(identity.regions.names, identity.regions.features):
        tensors[_REGION + name] = features
    adapter = identity.adapter
    metadata = {**identity.source, "base_model": adapter.arch, "adapter": adapter.name,
                "adapter_sha256": adapter.sha256, "format": FORMAT, "format_version": FORMAT_VERSION,
                "regions": json.dumps(identity.regions.names)}
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, path, metadata)


def load_identity(path: str) -> Identity:
    """The identity in ``path``; anything else (another safetensors file, a pickle under any name, a damaged
    file) is refused without running any of it: only the safetensors reader ever sees the bytes."""
    name = os.path.basename(path)
    fix = _FIX
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if head[8:9] != b"{":
            raise WeightFileError(
                f"'{name}' is not an identity file: it is not a safetensors file (a pickle or other file is never "
                "opened, as it could run code).", fix)
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise WeightFileError(f"'{name}' is a safetensors file but not a ConsistentID identity (its "
                                      f"metadata has no format '{FORMAT}').", fix)
            if metadata.get("format_version") != FORMAT_VERSION:
                raise WeightFileError(
                    f"'{name}' is an identity of format version {metadata.get('format_version')!r}; this version "
                    f"of the pack reads version {FORMAT_VERSION}.",
                    "Update ComfyUI-ConsistentID, or encode the photos again with this version.")
            if metadata.get("base_model") not in ARCH_NAMES:
                raise WeightFileError(f"'{name}' does not say which base model it was made for.", fix)
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise WeightFileError(f"'{name}' is not a readable identity file ({err}).", fix) from err
    names = _region_names(name, metadata.get("regions"))
    _check_tensors(name, tensors, names)
    regions = RegionFeatures.stacked(names, [tensors[_REGION + region] for region in names], tensors["zero_features"])
    adapter = AdapterRef(metadata["base_model"], metadata.get("adapter", "?"), metadata.get("adapter_sha256", ""))
    source = {key: value for key, value in metadata.items() if key not in ("regions", *_ADAPTER_KEYS)}
    return Identity(tensors.get("cond_tokens"), tensors["uncond_tokens"], regions, tensors["arcface"],
                    tensors["faces"], adapter, source)


def _invalid(name: str, problem: str) -> WeightFileError:
    return WeightFileError(f"'{name}' is not a valid identity file: {problem}.", _FIX)


def _region_names(name: str, text: str | None) -> list[str]:
    try:
        names = json.loads(text or "")
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _invalid(name, "its metadata 'regions' is not a list of region names")
    unknown = [n for n in names if n not in REGION_KEYWORD]
    if unknown:
        raise _invalid(name, f"it names regions ConsistentID does not have ({', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(REGION_KEYWORD)})")
    if len(set(names)) != len(names):
        raise _invalid(name, f"it names a region twice ({', '.join(names)})")
    return names


def _check_tensors(name: str, tensors: dict[str, torch.Tensor], names: list[str]) -> None:
    """Every tensor present and no other, floating point, of consistent shapes, rows within MAX_ROWS, finite (a
    face row may be NaN: a photo without face)."""
    expected = {"uncond_tokens", "arcface", "faces", "zero_features", *(_REGION + n for n in names)}
    missing = sorted(expected - set(tensors))
    extra = sorted(set(tensors) - expected - {"cond_tokens"})
    if missing or extra:
        raise _invalid(name, "; ".join(part for part in (
            missing and f"it lacks {', '.join(missing)}", extra and f"it holds tensors its regions do not name "
                                                                    f"({', '.join(extra)})") if part))
    for key, value in tensors.items():
        if not value.is_floating_point():
            raise _invalid(name, f"{key} is {str(value.dtype).removeprefix('torch.')}, not floating point")
        if key != "faces" and not bool(torch.isfinite(value).all()):
            raise _invalid(name, f"{key} holds NaN or infinite values")
    uncond, zero = tensors["uncond_tokens"], tensors["zero_features"]
    if uncond.ndim != 3 or tuple(uncond.shape[:2]) != (1, 4):
        raise _invalid(name, f"uncond_tokens has the shape {list(uncond.shape)}, not [1, 4, width]")
    if "cond_tokens" in tensors and tensors["cond_tokens"].shape[-1] != uncond.shape[-1]:
        raise _invalid(name, f"cond_tokens and uncond_tokens differ in width ({tensors['cond_tokens'].shape[-1]} and "
                             f"{uncond.shape[-1]})")
    shapes = {"arcface": (None, 512), "faces": (None, FACE_COLUMNS), "zero_features": tuple(zero.shape),
              **{_REGION + n: tuple(zero.shape) for n in names}}
    if "cond_tokens" in tensors:
        shapes["cond_tokens"] = (None, 4, uncond.shape[-1])
    if zero.ndim != 2:
        raise _invalid(name, f"zero_features has the shape {list(zero.shape)}, not [tokens, width]")
    for key, shape in shapes.items():
        got = tuple(tensors[key].shape)
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
            wanted = ", ".join("rows" if s is None else str(s) for s in shape)
            raise _invalid(name, f"{key} has the shape {list(got)}, not [{wanted}]")
    photos = tensors["arcface"].shape[0]
    if photos > MAX_ROWS or tensors["faces"].shape[0] != photos:
        raise _invalid(name, f"arcface has {photos} rows and faces {tensors['faces'].shape[0]}; they hold one row "
                             f"per photo each, at most {MAX_ROWS}")
    if "cond_tokens" in tensors and not 1 <= tensors["cond_tokens"].shape[0] <= MAX_ROWS:
        raise _invalid(name, f"cond_tokens has {tensors['cond_tokens'].shape[0]} rows; an identity has 1 (photos "
                             f"averaged) to {MAX_ROWS} (one per photo)")
