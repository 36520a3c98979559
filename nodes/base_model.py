"""Which base model a CLIP or a MODEL belongs to: the one detector every node uses, and the pack's refusal of any
base model ConsistentID does not exist for (SD2, SD3, Flux, an SDXL refiner, …)."""
from ..consistentid_core.checkpoint import RELEASE_FILES, ConsistentIDWeights
from ..consistentid_core.errors import ModelMismatchError
from ..consistentid_core.unet_layout import ARCH_NAMES, CROSS_ATTENTION_DIM
from . import host

# The text encoders of each supported base model's CLIP, by ComfyUI's names for them.
_ENCODERS = {frozenset({"clip_l"}): "sd15", frozenset({"clip_l", "clip_g"}): "sdxl"}
_ARCH_OF_CONTEXT_DIM = {dim: arch for arch, dim in CROSS_ATTENTION_DIM.items()}
_SUPPORTED = "ConsistentID exists for SD1.5 and SDXL only"


def clip_base(clip) -> str | None:
    """"sd15" for a CLIP of CLIP-L alone, "sdxl" for CLIP-L with CLIP-G, ``None`` for any other text encoder."""
    return _ENCODERS.get(frozenset(host.text_tokenizers(clip)))


def model_base(model) -> str | None:
    """"sd15"/"sdxl" from the UNet's cross-attention width, ``None`` for any other model."""
    return _ARCH_OF_CONTEXT_DIM.get(host.unet_context_dim(model))


def check_clip(clip, weights: ConsistentIDWeights) -> str:
    """The CLIP's base model, refused unless it is the adapter's."""
    arch = clip_base(clip)
    if arch is None:
        encoders = ", ".join(sorted(host.text_tokenizers(clip))) or type(clip.tokenizer).__name__
        raise ModelMismatchError(
            f"The CLIP holds the text encoders {encoders}, which belong to no SD1.5 or SDXL model; {_SUPPORTED}.",
            f"Connect the CLIP of an {weights.arch_name} checkpoint (Load Checkpoint's CLIP output).")
    _check(arch, weights, "the CLIP")
    return arch


def check_model(model, weights: ConsistentIDWeights) -> str:
    """The MODEL's base model, refused unless it is the adapter's."""
    arch = model_base(model)
    if arch is None:
        raise ModelMismatchError(
            f"'{weights.name}' is an {weights.arch_name} ConsistentID adapter, but the MODEL is "
            f"{host.model_name(model)}; {_SUPPORTED}.", f"Use an {weights.arch_name} checkpoint.")
    _check(arch, weights, "the MODEL")
    return arch


def _check(arch: str, weights: ConsistentIDWeights, what: str) -> None:
    if arch == weights.arch:
        return
    raise ModelMismatchError(
        f"'{weights.name}' is an {weights.arch_name} ConsistentID adapter, but {what} is {ARCH_NAMES[arch]}.",
        f"Load the {ARCH_NAMES[arch]} ConsistentID file ({RELEASE_FILES[arch]}) with ConsistentID Loader, "
        f"or connect {weights.arch_name} models to keep '{weights.name}'.")
