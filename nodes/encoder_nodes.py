"""FacialEncoder: the text-only, facial and fused-negative conditionings of ConsistentID."""
import torch

from comfy_api.latest import io

from ..consistentid_core.conditioning import Embedding, facial_conditioning
from ..consistentid_core.prompt import DEFAULT_CAPTIONS
from ..consistentid_core.regions import REGION_PARTS
from ..consistentid_core.tokenizer import BIGG_PAD_TOKEN, HFClipBPE
from . import host
from .base_model import check_clip
from .common import PackNode, node_schema
from .managed import compute_dtype, on_device
from .types import ConsistentID, Identity

DEFAULT_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"


def _bpe(clip) -> dict[str, HFClipBPE]:
    """The official tokenizers on the host's vocabularies: CLIP-L as it is, bigG with its official pad token."""
    tokenizers = host.text_tokenizers(clip)
    bpe = {"l": HFClipBPE(host.vocabulary(tokenizers["clip_l"]))}
    if "clip_g" in tokenizers:
        bpe["g"] = HFClipBPE(host.vocabulary(tokenizers["clip_g"]), BIGG_PAD_TOKEN)
    return bpe


def _encoder(clip):
    """Token ids per encoder → (embeddings, pooled) through the host's CLIP, weights all 1.

    The ids are built by our prompt code, not ComfyUI's prompt parser, because the official
    tokenisation reads "(" and ")" literally and cuts at 77 tokens without re-adding EOS. ComfyUI pools
    the first EOS, else the last token it is given, as `TextEncode` expects.
    """
    def encode(ids):
        tokens = {name: [[(token, 1.0) for token in row]] for name, row in ids.items()}
        return clip.encode_from_tokens(tokens, return_pooled=True)
    return encode


def _conditioning(embedding: Embedding) -> list:
    return [[embedding.embeds, {"pooled_output": embedding.pooled}]]


class ConsistentIDFacialEncoder(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDFacialEncoder",
            display_name="ConsistentID Facial Encoder",
            description="Builds ConsistentID's three conditionings from the prompt and the face regions: "
                        "text-only (used up to the merge step), facial (the words face, ears, eyes, nose and "
                        "mouth of a 'Detail:' caption fused with their region features) and the negative "
                        "(fused with empty-image features, as the official pipeline does). Feed text-only and "
                        "facial to ConsistentID Merge Step, the negative to the sampler. The five region "
                        "weights strengthen, soften or leave out one region's features (1 = official).",
            inputs=[
                ConsistentID.Input("consistentid", tooltip="From ConsistentID Loader."),
                io.Clip.Input("clip", tooltip="The text encoder of your SD1.5 (or SDXL) checkpoint."),
                Identity.Input("identity", tooltip="From ConsistentID Face Encode, Load Identity or Blend Identities: "
                                                   "its region features (averaged over its photos) are fused in."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True,
                                default="A man, in a forest, adventuring",
                                tooltip="What to generate. The facial caption is appended as 'Detail:…'; "
                                        "parentheses are literal text here, not ComfyUI weights."),
                io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True, default=DEFAULT_NEGATIVE,
                                tooltip="What to avoid. Its tokens at the facial positions are fused with "
                                        "empty-image features, as in the official pipeline."),
                io.String.Input("caption", multiline=True, default="", optional=True,
                                tooltip="The facial caption whose words face, ears, eyes, nose and mouth carry "
                                        "the region features; a region whose word is missing is dropped. Empty "
                                        "= the official caption: '" + DEFAULT_CAPTIONS["sd15"] + "' (SD1.5)."),
                *(io.Float.Input(part, default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
                                 tooltip=f"Weight of the {part} region: 1 is the official result, 0 leaves the region "
                                         f"out as if the photo did not show it, values between (or above 1) move the "
                                         f"fused word less (or more) from the plain word towards the {part} "
                                         "features.") for part in REGION_PARTS),
            ],
            outputs=[
                io.Conditioning.Output(display_name="text_only",
                                       tooltip="Positive without facial features, for steps up to the merge step."),
                io.Conditioning.Output(display_name="facial",
                                       tooltip="Positive with the facial region features fused in."),
                io.Conditioning.Output(display_name="negative", tooltip="The fused negative, for every step."),
            ],
        )

    @classmethod
    def execute(cls, consistentid, clip, identity, prompt, negative_prompt, caption=None,
                **region_weights) -> io.NodeOutput:
        arch = check_clip(clip, consistentid.weights)
        encoder = on_device(consistentid.facial_encoder(compute_dtype()))
        with torch.no_grad():
            result = facial_conditioning(encoder, identity.regions, prompt, negative_prompt, _bpe(clip),
                                         _encoder(clip), arch, caption or None, region_weights)
        return io.NodeOutput(_conditioning(result.text_only), _conditioning(result.facial),
                             _conditioning(result.negative))


NODES = [ConsistentIDFacialEncoder]
