"""ConsistentIDApply: an identity's face-ID tokens and the adapter's LoRA on a clone of the MODEL."""
from comfy_api.latest import io

from ..consistentid_core.identity import check_adapter
from .common import PackNode, node_label, node_schema, warn
from .merge_step import NODES as MERGE_NODES
from .official_sampling import NODES as OFFICIAL_NODES
from .types import ConsistentID, Identity
from .base_model import check_model
from .unet_patch import apply_to_model


class ConsistentIDApply(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDApply",
            display_name="ConsistentID Apply",
            description="Patches a copy of the MODEL with ConsistentID: merges the adapter's LoRA into every "
                        "attention layer and adds the identity's 4 face-ID tokens through extra cross-attention. "
                        "Sample with its MODEL and ConsistentID Merge Step's positive. "
                        "Moving a slider here re-runs no face analysis: that happened in Face Encode. Two Applies "
                        "with two identities and two masks put two people in one picture (the LoRA is merged once).",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 (or SDXL) model; it is cloned, never changed."),
                ConsistentID.Input("consistentid", tooltip="From ConsistentID Loader, for the same base model."),
                Identity.Input("identity", tooltip="From ConsistentID Face Encode, Load Identity or Blend Identities, "
                                                   "made with the same adapter."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.05,
                               tooltip="Strength of the face-ID tokens; 1.0 is the official value."),
                io.Float.Input("lora_strength", default=1.0, min=-1.0, max=2.0, step=0.05,
                               tooltip="Strength of the adapter's LoRA in the attention layers; 1.0 is the "
                                       "official value, 0 leaves the weights alone."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the face-ID tokens start (official: 0)."),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the face-ID tokens stop (official: 1)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where this identity's face-ID tokens act (white = fully, grey = partly), at "
                                      "any size; e.g. one person's half with two Applies for two people. Unconnected: "
                                      "everywhere. Restrict the Facial Encoder's prompts to the same area with "
                                      "Conditioning (Set Mask)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The patched copy of the MODEL, for the sampler.")],
        )

    @classmethod
    def execute(cls, model, consistentid, identity, weight, lora_strength, start_at, end_at,
                mask=None) -> io.NodeOutput:
        check_model(model, consistentid.weights)
        check_adapter(identity, consistentid.weights.arch, consistentid.projection_sha256(),
                      consistentid.weights.name)
        tokens = identity.cond_tokens
        if tokens is None:
            warn(cls, "The identity has no face-ID tokens (no face was found and on_no_face was 'skip'), so "
                      "only the adapter's LoRA applies.",
                 "Use a clear, well-lit frontal photo of one face, or set Face Encode's on_no_face to 'error'.")
            weight = 0.0
        patched = apply_to_model(model, consistentid.weights, tokens, identity.uncond_tokens, weight, start_at,
                                 end_at, lora_strength, mask, node_label(cls))
        return io.NodeOutput(patched)


NODES = [ConsistentIDApply, *MERGE_NODES, *OFFICIAL_NODES]
