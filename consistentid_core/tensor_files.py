"""Reading a weight file that must hold tensors only, whatever loader asks."""
import hashlib
import os
from collections.abc import Mapping
from pickle import UnpicklingError

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import WeightFileError


def read_tensors(path: str, holder: str, fix: str) -> Mapping:
    """The contents of a safetensors or PyTorch file, read without executing code.

    ``holder`` names what the file should be ("a ConsistentID checkpoint"), ``fix`` what to do when it cannot be
    read; the format is told by the file's first bytes, not its name.
    """
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"'{path}' does not exist.", fix)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
            return load_file(path)
        if head.startswith((b"PK", b"\x80")):  # torch.save zip archive, or a legacy pickle
            # Zip archives are memory-mapped so a 1.7 GB SDXL file is not copied into RAM.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(b"PK"))
        raise ValueError("it starts like neither a safetensors nor a PyTorch file")
    except UnpicklingError as err:
        raise WeightFileError(
            f"'{name}' was refused: reading it would run code or build Python objects besides tensors, "
            f"which is unsafe, and {holder} holds tensors only.", fix) from err
    except (SafetensorError, RuntimeError, ValueError, KeyError, EOFError, OSError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightFileError(
            f"'{name}' is not a readable checkpoint: it is truncated, damaged or not a PyTorch/safetensors file "
            f"(for example a Git LFS pointer or a web page saved by a failed download). Reader said: {detail}.",
            fix) from err


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and values, whatever file layout they came from."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()
