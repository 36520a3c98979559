"""Identity files: an :class:`~.identity.Identity` as ``.safetensors``, tensors and metadata only.

Tensors: ``cond_tokens`` (absent when no face was found), ``uncond_tokens``, ``arcface``, ``faces``,
``zero_features`` and ``region.<name>`` per region found. Metadata (strings): ``format`` =
``consistentid-identity``, ``format_version``, ``regions`` (the region names in slot order) and the identity's
``source``. Saved tensors keep their dtype, so a loaded identity is bit-identical to the saved one.
"""
import json
import os

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import WeightFileError
from .identity import Identity
from .regions import RegionFeatures
from .unet_layout import ARCH_NAMES

FORMAT = "consistentid-identity"
FORMAT_VERSION = "1"
_REGION = "region."


def save_identity(identity: Identity, path: str) -> None:
    tensors = {"uncond_tokens": identity.uncond_tokens, "arcface": identity.arcface, "faces": identity.faces,
               "zero_features": identity.regions.zero_features}
    if identity.cond_tokens is not None:
        tensors["cond_tokens"] = identity.cond_tokens
    for name, features in zip(identity.regions.names, identity.regions.features):
        tensors[_REGION + name] = features
    metadata = {**identity.source, "format": FORMAT, "format_version": FORMAT_VERSION,
                "regions": json.dumps(identity.regions.names)}
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, path, metadata)


def load_identity(path: str) -> Identity:
    """The identity in ``path``; anything else (another safetensors file, a pickle under any name, a damaged
    file) is refused without running any of it: only the safetensors reader ever sees the bytes."""
    name = os.path.basename(path)
    fix = "Select a file written by ConsistentID Save Identity, or encode the photos again."
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
        names = json.loads(metadata["regions"])
        features = [tensors[_REGION + region] for region in names]
        regions = RegionFeatures.stacked(names, features, tensors["zero_features"])
        source = {key: value for key, value in metadata.items() if key != "regions"}
        return Identity(tensors.get("cond_tokens"), tensors["uncond_tokens"], regions, tensors["arcface"],
                        tensors["faces"], source)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise WeightFileError(f"'{name}' is not a readable identity file ({err}).", fix) from err

