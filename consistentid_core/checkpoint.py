"""Reading and checking ConsistentID checkpoints (docs/method.md §1), and building their encoders.

Accepted layouts, SD1.5 and SDXL alike (docs/method.md §1.1, §8.17):
* the released ``.bin``: ``{"FacialEncoder": sd, "image_proj" | "image_proj_model": sd, "adapter_modules": sd}``;
* flat files (``.safetensors`` or ``.bin``) with keys prefixed ``FacialEncoder.``, ``image_proj.`` or
  ``image_proj_model.``, ``adapter_modules.``;
* training dumps of the same keys, with ``unet.*`` copies (ignored) and a DDP ``module.`` prefix (stripped).

The base model is read from the shapes, and every key is checked against modules built on the
``meta`` device, so a reduced test checkpoint goes through exactly the same code as a released one.
"""
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .attention import PROJECTIONS
from .errors import WeightFileError
from .facial_encoder import FacialEncoder
from .projection import ProjPlus
from .tensor_files import read_tensors, tensors_sha256
from .unet_layout import ARCH_NAMES, CROSS_ATTENTION_DIM, PROCESSORS, Processor

SECTIONS = ("FacialEncoder", "image_proj", "adapter_modules")
_SECTION_ALIASES = {"image_proj_model": "image_proj"}
RELEASE_FILES = {"sd15": "ConsistentID-v1.bin", "sdxl": "ConsistentID_SDXL-v1.bin"}
DOWNLOAD = "https://huggingface.co/JackAILab/ConsistentID"
RELEASE_LORA_RANK = 128
_LISTED = 10  # keys named per problem in an error message


@dataclass
class ConsistentIDWeights:
    path: str
    arch: str  # "sd15" or "sdxl"
    facial_encoder: dict[str, torch.Tensor]
    image_proj: dict[str, torch.Tensor]
    adapter: dict[str, torch.Tensor]  # "{i}.to_q_lora.down.weight", …, "{i}.to_k_ip.weight" (odd i)
    cross_attention_dim: int
    lora_rank: int

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def arch_name(self) -> str:
        return ARCH_NAMES[self.arch]

    @property
    def processors(self) -> tuple[Processor, ...]:
        """The UNet attention layer of each ``adapter`` index."""
        return PROCESSORS[self.arch]


def load_checkpoint(path: str | os.PathLike) -> ConsistentIDWeights:
    """Read ``path`` without executing code, split it into its three parts and check every key and shape."""
    path = os.fspath(path)
    parts = _split(_read(path), path)
    arch = _detect_arch(parts, path)
    c = CROSS_ATTENTION_DIM[arch]
    down = parts["adapter_modules"].get("0.to_q_lora.down.weight")
    rank = down.shape[0] if down is not None else RELEASE_LORA_RANK
    expected = {
        # Internal sizes come from the file and the output width from the base model, so a wrong
        # width is reported as wrong shapes instead of being taken as the truth.
        "FacialEncoder": _module_shapes(lambda: FacialEncoder.from_state_dict(parts["FacialEncoder"], output_dim=c),
                                        lambda: FacialEncoder(output_dim=c)),
        "image_proj": _module_shapes(lambda: ProjPlus.from_state_dict(parts["image_proj"], cross_attention_dim=c),
                                     lambda: ProjPlus(c)),
        "adapter_modules": expected_adapter_shapes(arch, rank),
    }
    _validate(parts, expected, path, arch)
    return ConsistentIDWeights(path, arch, parts["FacialEncoder"], parts["image_proj"], parts["adapter_modules"],
                               c, rank)


def expected_adapter_shapes(arch: str, rank: int, cross_attention_dim: int | None = None) -> dict[str, tuple]:
    """Key → shape of ``adapter_modules`` for ``arch``, from the processor layout (docs/method.md §1.2).

    Self-attention processors carry four LoRA pairs; cross-attention ones read the text context
    (width c) in k/v and add ``to_k_ip``/``to_v_ip``.
    """
    c = cross_attention_dim or CROSS_ATTENTION_DIM[arch]
    shapes = {}
    for p in PROCESSORS[arch]:
        h = p.hidden_size
        context = c if p.kind == "cross" else h
        for _, name in PROJECTIONS:
            shapes[f"{p.index}.{name}.down.weight"] = (rank, context if name in ("to_k_lora", "to_v_lora") else h)
            shapes[f"{p.index}.{name}.up.weight"] = (h, rank)
        if p.kind == "cross":
            shapes[f"{p.index}.to_k_ip.weight"] = (h, c)
            shapes[f"{p.index}.to_v_ip.weight"] = (h, c)
    return shapes


def build_facial_encoder(weights: ConsistentIDWeights, device: torch.device | str = "cpu",
                         dtype: torch.dtype = torch.float32) -> FacialEncoder:
    return _build(lambda: FacialEncoder.from_state_dict(weights.facial_encoder), weights.facial_encoder, device, dtype)


def build_projection(weights: ConsistentIDWeights, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> ProjPlus:
    return _build(lambda: ProjPlus.from_state_dict(weights.image_proj), weights.image_proj, device, dtype)


@dataclass(eq=False)
class ConsistentIDModel:
    """What the loader node hands on: the checked weights, and encoders built on first use.

    The encoders are built on the CPU, once per dtype; the node layer wraps them in the host's
    ModelPatcher so they are moved to the GPU and offloaded like the host's own models.
    """

    weights: ConsistentIDWeights
    _built: dict = field(default_factory=dict, repr=False)

    def facial_encoder(self, dtype: torch.dtype = torch.float32) -> FacialEncoder:
        return self._get(build_facial_encoder, dtype)

    def projection(self, dtype: torch.dtype = torch.float32) -> ProjPlus:
        return self._get(build_projection, dtype)

    def projection_sha256(self) -> str:
        """The hash an identity records and is checked against: its face-ID tokens are this projection's."""
        if "sha256" not in self._built:
            self._built["sha256"] = tensors_sha256(self.weights.image_proj)
        return self._built["sha256"]

    def _get(self, build, dtype):
        key = (build.__name__, dtype)
        if key not in self._built:
            self._built[key] = build(self.weights, "cpu", dtype)
        return self._built[key]


def _read(path: str) -> Mapping:
    fix = (f"Download the file again from {DOWNLOAD} ({RELEASE_FILES['sd15']} for SD1.5, "
           f"{RELEASE_FILES['sdxl']} for SDXL) and put it into models/consistentid.")
    return read_tensors(path, "a ConsistentID checkpoint", fix)


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _split(raw: Mapping, path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The three state dicts, from a nested or a flat (prefixed) layout."""
    parts = {s: {} for s in SECTIONS}
    if not isinstance(raw, Mapping):
        raw = {}
    for key, value in raw.items():
        key = _strip(str(key))
        if isinstance(value, Mapping):
            section = _SECTION_ALIASES.get(key, key)
            if section in parts:
                parts[section].update({_strip(k): v for k, v in value.items() if isinstance(v, torch.Tensor)})
            continue
        head, _, rest = key.partition(".")
        section = _SECTION_ALIASES.get(head, head)
        if section in parts and rest and isinstance(value, torch.Tensor):
            parts[section][rest] = value
    absent = [s for s in SECTIONS if not parts[s]]
    if absent:
        found = ", ".join(list(map(str, raw))[:_LISTED]) or "nothing"
        raise WeightFileError(
            f"'{os.path.basename(path)}' is not a ConsistentID checkpoint: it has no {', '.join(absent)} weights "
            f"(a ConsistentID file holds FacialEncoder, image_proj and adapter_modules; this one holds {found}).",
            f"Select a ConsistentID checkpoint ({RELEASE_FILES['sd15']} or {RELEASE_FILES['sdxl']} from "
            f"{DOWNLOAD}) in the loader.",
        )
    return parts


def _detect_arch(parts: Mapping[str, Mapping], path: str) -> str:
    """SD1.5 or SDXL from the number of attention processors, or else the cross-attention width."""
    adapter = parts["adapter_modules"]
    count = 1 + max((int(k.split(".")[0]) for k in adapter if k.split(".")[0].isdigit()), default=-1)
    ip = adapter.get("1.to_k_ip.weight")
    width = ip.shape[-1] if ip is not None else None
    for arch, processors in PROCESSORS.items():
        if count == len(processors):
            return arch
    for arch, c in CROSS_ATTENTION_DIM.items():
        if width == c:
            return arch
    raise WeightFileError(
        f"'{os.path.basename(path)}' has {count} attention processors with cross-attention width {width}; "
        "an SD1.5 ConsistentID checkpoint has 32 with width 768 and an SDXL one 140 with width 2048.",
        f"Use the released {RELEASE_FILES['sd15']} or {RELEASE_FILES['sdxl']} from {DOWNLOAD}.",
    )


def _module_shapes(make, real) -> dict[str, tuple]:
    """State-dict shapes of a module built on ``meta`` (no memory); real sizes when the file lacks a size key."""
    with torch.device("meta"):
        try:
            module = make()
        except (KeyError, IndexError, ValueError, ZeroDivisionError):
            module = real()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _validate(parts: Mapping[str, Mapping], expected: Mapping[str, Mapping], path: str, arch: str) -> None:
    missing, unexpected, wrong = [], [], []
    for section in SECTIONS:
        got, want = parts[section], expected[section]
        missing += [f"{section}.{k}" for k in want if k not in got]
        unexpected += [f"{section}.{k}" for k in got if k not in want]
        wrong += [f"{section}.{k} {list(got[k].shape)} (expected {list(s)})"
                  for k, s in want.items() if k in got and tuple(got[k].shape) != s]
    if not (missing or unexpected or wrong):
        return
    problems = [f"{len(keys)} {what}: {', '.join(keys[:_LISTED])}{', …' if len(keys) > _LISTED else ''}"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("keys with the wrong shape", wrong)) if keys]
    raise WeightFileError(
        f"'{os.path.basename(path)}' does not match the {ARCH_NAMES[arch]} ConsistentID layout: "
        + "; ".join(problems) + ".",
        f"Download the complete {ARCH_NAMES[arch]} file ({RELEASE_FILES[arch]}) again from {DOWNLOAD}; "
        "a partial download or a file of another adapter does not load.",
    )


def _build(make, sd: Mapping, device, dtype) -> torch.nn.Module:
    with torch.device("meta"):
        module = make()
    # assign=True adopts the loaded tensors instead of first allocating random weights.
    module.load_state_dict(sd, strict=True, assign=True)
    return module.to(device=device, dtype=dtype).train(False).requires_grad_(False)
