"""One node for beginners: the whole ConsistentID graph behind a single box.

It expands into the granular nodes (loaders, FaceParse, RegionEmbed, FaceEncode, FacialEncoder, Apply,
Merge Step) instead of calling them, so the host caches each part on its own: changing
the prompt or the seed re-runs neither face parsing nor InsightFace nor CLIP vision.
"""
from comfy_api.latest import io
from comfy_execution.graph_utils import GraphBuilder

import comfy.samplers

from .common import PackNode, node_schema
from .encoder_nodes import DEFAULT_NEGATIVE
from .insightface_nodes import PROVIDERS, pack_input
from .paths import model_input

# Upstream models and images are wired into the expanded graph as links, not passed as values.
LINKED = {"rawLink": True}
# The official pipelines' face parsing and face detection sizes per base model.
PARSE_SIZE = {"SD1.5": "512", "SDXL": "1280"}
DET_SIZE = {"SD1.5": 640, "SDXL": 512}


class ConsistentIDSimple(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDSimple",
            display_name="ConsistentID (all in one)",
            description="Everything ConsistentID needs in one node: give it your checkpoint's MODEL and CLIP, "
                        "CLIP-ViT-H and one face photo, and connect its model, positive and negative to a "
                        "KSampler (official settings: 50 steps, CFG 5, euler, 512x768). It runs the same "
                        "nodes as the advanced workflow, with the official defaults.",
            enable_expand=True,
            inputs=[
                io.Model.Input("model", extra_dict=LINKED, tooltip="Your SD1.5 (or SDXL) checkpoint's MODEL."),
                io.Clip.Input("clip", extra_dict=LINKED, tooltip="The same checkpoint's CLIP."),
                io.ClipVision.Input("clip_vision", extra_dict=LINKED,
                                    tooltip="CLIP-ViT-H-14-laion2B-s32B-b79K from Load CLIP Vision."),
                io.Image.Input("image", extra_dict=LINKED, tooltip="One clear photo of the person's face."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True,
                                default="A man, in a forest, adventuring", tooltip="What to generate."),
                io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True, default=DEFAULT_NEGATIVE,
                                tooltip="What to avoid."),
                model_input("consistentid_name", "consistentid",
                            "ConsistentID-v1.bin (SD1.5) or ConsistentID_SDXL-v1.bin in models/consistentid/."),
                model_input("parser_name", "face_parsing", "face_parsing.pth (BiSeNet) in models/face_parsing/."),
                pack_input("insightface_pack", "InsightFace pack in models/insightface/models/ (buffalo_l, the one "
                                               "ConsistentID was trained with)."),
                io.Combo.Input("provider", options=list(PROVIDERS), default="CPU",
                               tooltip="Where InsightFace runs (falls back to CPU)."),
                io.Combo.Input("base_model", options=list(PARSE_SIZE), default="SD1.5",
                               tooltip="The checkpoint's family; sets the official face parsing and detection sizes."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.05,
                               tooltip="Strength of the face-ID tokens (official 1.0)."),
                io.Int.Input("merge_step", default=30, min=0, max=10000,
                             tooltip="Last step using the prompt without facial features (official 30 of 50)."),
                io.Int.Input("steps", default=50, min=2, max=10000, tooltip="Set the same steps as the KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Set the same scheduler as the KSampler."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The patched model, for the KSampler."),
                io.Conditioning.Output(display_name="positive", tooltip="For the KSampler's positive."),
                io.Conditioning.Output(display_name="negative", tooltip="For the KSampler's negative."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, clip_vision, image, prompt, negative_prompt, consistentid_name, parser_name,
                insightface_pack, provider, base_model, weight, merge_step, steps, scheduler) -> io.NodeOutput:
        graph = GraphBuilder()
        adapter = graph.node("ConsistentIDLoader", consistentid_name=consistentid_name)
        parser = graph.node("ConsistentIDFaceParserLoader", parser_name=parser_name)
        insightface = graph.node("ConsistentIDInsightFaceLoader", pack=insightface_pack, provider=provider,
                                 det_size=DET_SIZE[base_model])
        regions = graph.node("ConsistentIDFaceParse", face_parser=parser.out(0), image=image,
                             parse_size=PARSE_SIZE[base_model])
        embeds = graph.node("ConsistentIDRegionEmbed", clip_vision=clip_vision, image=image,
                            face_regions=regions.out(0))
        identity = graph.node("ConsistentIDFaceEncode", consistentid=adapter.out(0), clip_vision=clip_vision,
                              insightface=insightface.out(0), image=image, region_embeds=embeds.out(0),
                              face="highest score", face_index=0, combine="average", on_no_face="error")
        encoded = graph.node("ConsistentIDFacialEncoder", consistentid=adapter.out(0), clip=clip,
                             identity=identity.out(0), prompt=prompt, negative_prompt=negative_prompt, caption="")
        patched = graph.node("ConsistentIDApply", model=model, consistentid=adapter.out(0), identity=identity.out(0),
                             weight=weight, lora_strength=1.0, start_at=0.0, end_at=1.0)
        merged = graph.node("ConsistentIDMergeStep", text_only=encoded.out(0), facial=encoded.out(1),
                            merge_step=merge_step, steps=steps, scheduler=scheduler)
        return io.NodeOutput(patched.out(0), merged.out(0), encoded.out(2), expand=graph.finalize())


NODES = [ConsistentIDSimple]
