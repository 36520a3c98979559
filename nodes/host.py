"""Every fact the pack reads from ComfyUI's objects beyond their documented node types, one small function each.

ComfyUI's Python objects (CLIP, MODEL, CLIP_VISION, the sampler's guider) have no stable public API for what the
pack must know of them; reading their attributes here, and nowhere else, means a host that changes one changes this
module, and ``tests/host_inprocess/test_host_facts.py`` fails on that host by name. (The attention patch's own
keys in ``transformer_options`` live with the patch in ``unet_patch.py``.)
"""
import torch

import comfy.sd1_clip


def text_tokenizers(clip) -> dict[str, object]:
    """The CLIP's tokenizers by the name ComfyUI gives each text encoder (``clip_l``, ``clip_g``, ``t5xxl``, …):
    SD1.5's CLIP holds ``clip_l`` alone, SDXL's ``clip_l`` and ``clip_g``, SD3's and Flux's a T5 beside them."""
    return {name: value for name, value in vars(clip.tokenizer).items()
            if isinstance(value, comfy.sd1_clip.SDTokenizer)}


def vocabulary(tokenizer) -> object:
    """The Hugging Face ``CLIPTokenizer`` inside one of :func:`text_tokenizers`' tokenizers."""
    return tokenizer.tokenizer


def unet_context_dim(model) -> int | None:
    """The cross-attention width of a MODEL's UNet (768 SD1.5, 2048 SDXL); ``None`` for a model without one."""
    return model.model.model_config.unet_config.get("context_dim")


def model_name(model) -> str:
    """The name ComfyUI's model detection gave the MODEL (``SD15``, ``SDXL``, ``Flux``, …)."""
    return type(model.model.model_config).__name__


def beta_schedule(model) -> str:
    """The MODEL's beta schedule as ComfyUI names it ("linear" is diffusers' "scaled_linear")."""
    return model.model.model_config.sampling_settings.get("beta_schedule", "linear")


def run_conds(guider) -> dict[str, list[dict]]:
    """The conditionings a sampler run uses, by name (``positive``, ``negative``), each a list of entry options,
    as a ``SAMPLER_SAMPLE`` wrapper sees them."""
    return guider.conds


def run_model_sampling(guider):
    """The model sampling (sigma ↔ percent) of the MODEL a sampler run samples, as a ``SAMPLER_SAMPLE`` wrapper
    sees it."""
    return guider.inner_model.model_sampling


def run_sampler_name(executor) -> str:
    """The k-diffusion sampler (``euler``, ``heun``, …) of a sampler run, as a ``SAMPLER_SAMPLE`` wrapper sees it:
    the wrapper's executor wraps the KSAMPLER object, which holds its sampler function."""
    function = getattr(executor.class_obj, "sampler_function", None)
    return getattr(function, "__name__", type(executor.class_obj).__name__).removeprefix("sample_")


def show_on_node(node_id: str | None, text: str) -> None:
    """Show ``text`` on a node in the browser, as ComfyUI's nodes show progress text; nothing where ComfyUI runs
    as a library without its server."""
    try:
        from server import PromptServer
    except ImportError:
        return
    if node_id is not None and PromptServer.instance is not None:
        PromptServer.instance.send_progress_text(text, node_id)


def vision_tower(clip_vision) -> tuple[int, int] | None:
    """``(width, layers)`` of a CLIP vision model's ViT, ``None`` when it is not a CLIP ViT (SigLIP, DINO, …)."""
    vision = getattr(getattr(clip_vision, "model", None), "vision_model", None)
    if vision is None or getattr(clip_vision, "return_all_hidden_states", False):
        return None
    return vision.post_layernorm.weight.shape[-1], len(vision.encoder.layers)


def patch_embedding(clip_vision) -> torch.Tensor:
    """The weight of a CLIP vision model's first layer (its patch embedding)."""
    return clip_vision.model.vision_model.embeddings.patch_embedding.weight


def penultimate_states(clip_vision, pixels: torch.Tensor) -> torch.Tensor:
    """The hidden states of the layer before the last (no post-LayerNorm) for pixels already on the model's
    device and in its dtype."""
    _, penultimate, _, _ = clip_vision.model(pixel_values=pixels, intermediate_output=-2)
    return penultimate


def _model_patcher() -> type:
    import comfy.model_patcher
    return comfy.model_patcher.ModelPatcher


def _clip() -> type:
    import comfy.sd
    return comfy.sd.CLIP


def _clip_vision() -> type:
    import comfy.clip_vision
    return comfy.clip_vision.ClipVisionModel


# The Python class of the values each host socket type carries, by socket type.
OBJECT_SOCKETS = {"MODEL": _model_patcher, "CLIP": _clip, "CLIP_VISION": _clip_vision}
