"""ConsistentIDApply: the face-ID tokens and the adapter's LoRA on a clone of the MODEL."""
import hashlib
import weakref

import torch

from comfy_api.latest import io

from ..consistentid_core.errors import NoFaceError
from ..consistentid_core.face_id import face_id_batch
from ..consistentid_core.images import images_from_batch
from ..consistentid_core.projection import id_tokens
from ..consistentid_core.regions import clip_pixels
from .clip_vision import encode_penultimate, zero_image_features
from .common import PackNode, node_schema, warn
from .managed import compute_dtype, on_device
from .merge_step import NODES as MERGE_NODES
from .official_sampling import NODES as OFFICIAL_NODES
from .types import ConsistentID, InsightFace
from .unet_patch import apply_to_model, check_model_arch

NO_FACE_CHOICES = ["error", "zero", "skip"]

# The last photo's tokens: moving a slider (weight, lora_strength, start/end) re-runs this node, and the face
# analysis (InsightFace, CLIP-H, projection) need not run again for the same photo and models.
_last_tokens: dict = {}


def identity_tokens(consistentid, clip_vision, insightface, photos, on_no_face: str):
    """Cond ``[n, 4, c]`` and uncond ``[1, 4, c]`` face-ID tokens of the reference photos, or None when no face
    was found and ``on_no_face`` is "skip".

    The official pipelines: InsightFace's ArcFace embedding (SD1.5 passes the RGB array where BGR is
    expected; SDXL reads BGR), the whole photo's penultimate CLIP-H states, and ProjPlus; uncond tokens
    from a zero embedding and CLIP of the all-zeros (normalised) image.
    """
    sdxl = consistentid.weights.arch == "sdxl"
    try:
        embeds = face_id_batch(insightface, photos, "error" if on_no_face == "skip" else on_no_face,
                               det_size=None, bgr_input=sdxl)
    except NoFaceError:
        if on_no_face != "skip":
            raise
        return None
    hidden = encode_penultimate(clip_vision, torch.stack([clip_pixels(photo) for photo in photos]))
    projection = on_device(consistentid.projection(compute_dtype()))
    with torch.no_grad():
        return id_tokens(projection, embeds, hidden, zero_image_features(clip_vision)[None], shortcut=sdxl)


def _cached_identity_tokens(consistentid, clip_vision, insightface, image: torch.Tensor, on_no_face: str):
    models = (consistentid, clip_vision, insightface)
    key = (tuple(map(id, models)), getattr(insightface, "det_size", None), on_no_face, tuple(image.shape),
           hashlib.sha1(image.cpu().numpy().tobytes()).digest())
    # The models by weak reference, so the entry never keeps them loaded once the host lets go of them; a new
    # model at a freed one's address is told apart by identity.
    if _last_tokens.get("key") != key or any(ref() is not model for ref, model in zip(_last_tokens["models"], models)):
        _last_tokens.clear()
        tokens = identity_tokens(consistentid, clip_vision, insightface, images_from_batch(image), on_no_face)
        _last_tokens.update(key=key, models=tuple(map(weakref.ref, models)), tokens=tokens)
    return _last_tokens["tokens"]


class ConsistentIDApply(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDApply",
            display_name="ConsistentID Apply",
            description="Patches a copy of the MODEL with ConsistentID: merges the adapter's LoRA into every "
                        "attention layer and adds 4 face-ID tokens (ArcFace + CLIP-H of the reference photo) "
                        "through extra cross-attention. Connect its MODEL to ConsistentID Merge Step "
                        "Scheduler, whose MODEL goes to the sampler. Face analysis runs once and is cached "
                        "until the photo changes.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 (or SDXL) model; it is cloned, never changed."),
                ConsistentID.Input("consistentid", tooltip="From ConsistentID Loader, for the same base model."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP-ViT-H-14-laion2B-s32B-b79K from Load CLIP Vision."),
                InsightFace.Input("insightface", tooltip="From ConsistentID InsightFace Loader (or IPAdapter's "
                                                         "InsightFace loader): buffalo_l."),
                io.Image.Input("image", tooltip="The reference face photo. Several photos in a batch are "
                                                "attended to together."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.05,
                               tooltip="Strength of the face-ID tokens; 1.0 is the official value."),
                io.Float.Input("lora_strength", default=1.0, min=-1.0, max=2.0, step=0.05,
                               tooltip="Strength of the adapter's LoRA in the attention layers; 1.0 is the "
                                       "official value, 0 leaves the weights alone."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the face-ID tokens start (official: 0)."),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the face-ID tokens stop (official: 1)."),
                io.Combo.Input("on_no_face", options=NO_FACE_CHOICES, default="error",
                               tooltip="When InsightFace finds no face: stop with an error, use the official "
                                       "zero face embedding (zero), or leave the face-ID tokens out (skip)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, consistentid, clip_vision, insightface, image, weight, lora_strength, start_at,
                end_at, on_no_face) -> io.NodeOutput:
        with cls.running(weight=weight, lora_strength=lora_strength, start_at=start_at, end_at=end_at,
                         on_no_face=on_no_face):
            check_model_arch(model, consistentid.weights)
            tokens = _cached_identity_tokens(consistentid, clip_vision, insightface, image, on_no_face)
            if tokens is None:
                warn(cls, "InsightFace found no face, so the face-ID tokens are left out (on_no_face is 'skip'); "
                          "only the adapter's LoRA applies.",
                     "Use a clear, well-lit frontal photo of one face, or set on_no_face to 'error' to stop instead.")
                tokens, weight = (None, None), 0.0
            patched = apply_to_model(model, consistentid.weights, *tokens, weight, start_at, end_at, lora_strength)
            return io.NodeOutput(patched)


NODES = [ConsistentIDApply, *MERGE_NODES, *OFFICIAL_NODES]
