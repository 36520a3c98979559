"""The benchmark's API-format workflow: plain SD1.5 and ConsistentID samplers on one checkpoint."""
from dataclasses import dataclass

OFFICIAL_PROMPT = "A man, in a forest, adventuring"
OFFICIAL_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"
PROMPT_TEMPLATE = ("cinematic photo,{}, 50mm photograph, half-length portrait, film, bokeh, professional, 4k, "
                   "highly detailed")
SECOND_PROMPT = "A woman, on a beach, smiling"
# Nodes whose work is face analysis: none of them may re-run when only the prompt or the seed changes.
FACE_NODES = ("image", "parse", "regions", "identity")
PREPROCESSING_NODES = ("parse", "regions", "identity", "encode", "apply")


@dataclass(frozen=True)
class Settings:
    width: int
    height: int
    steps: int
    merge_step: int
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"


@dataclass(frozen=True)
class Files:
    checkpoint: str
    clip_vision: str
    consistentid: str
    face_parser: str
    insightface_pack: str
    provider: str


SAMPLERS = {"plain": "sampler_plain", "consistentid": "sampler_cid", "id_attention_only": "sampler_id"}


def workflow(files: Files, settings: Settings, image: str, seeds: dict[str, int], steps: dict[str, int],
             prompt: str = OFFICIAL_PROMPT) -> dict:
    """Plain SD1.5 and ConsistentID (LoRA on, and LoRA off: the ID attention alone) on one checkpoint.

    One graph holds the three samplers, so the host's cache keeps every branch while a queue runs only
    the sampler it asks for: timed runs of the three can then alternate, each seeing the same machine load.
    ``seeds`` and ``steps`` are per key of :data:`SAMPLERS`.
    """
    text = PROMPT_TEMPLATE.format(prompt)
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files.checkpoint}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": OFFICIAL_NEGATIVE, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": settings.width, "height": settings.height, "batch_size": 1}},
        "cid": {"class_type": "ConsistentIDLoader", "inputs": {"consistentid_name": files.consistentid}},
        "parser": {"class_type": "ConsistentIDFaceParserLoader", "inputs": {"parser_name": files.face_parser}},
        "insightface": {"class_type": "ConsistentIDInsightFaceLoader",
                        "inputs": {"pack": files.insightface_pack, "provider": files.provider, "det_size": 640}},
        "vision": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": files.clip_vision}},
        "image": {"class_type": "LoadImage", "inputs": {"image": image}},
        "parse": {"class_type": "ConsistentIDFaceParse",
                  "inputs": {"face_parser": ["parser", 0], "image": ["image", 0], "parse_size": "512"}},
        "regions": {"class_type": "ConsistentIDRegionEmbed",
                    "inputs": {"clip_vision": ["vision", 0], "image": ["image", 0], "face_regions": ["parse", 0]}},
        "identity": {"class_type": "ConsistentIDFaceEncode", "inputs": {
            "consistentid": ["cid", 0], "clip_vision": ["vision", 0], "insightface": ["insightface", 0],
            "image": ["image", 0], "region_embeds": ["regions", 0], "face": "highest score", "face_index": 0,
            "combine": "average", "on_no_face": "error"}},
        "encode": {"class_type": "ConsistentIDFacialEncoder", "inputs": {
            "consistentid": ["cid", 0], "clip": ["ckpt", 1], "identity": ["identity", 0], "prompt": text,
            "negative_prompt": OFFICIAL_NEGATIVE, "caption": ""}},
        **_sampler("plain", ["ckpt", 0], ["pos", 0], ["neg", 0], settings, seeds, steps),
    }
    for key, apply, lora_strength in (("consistentid", "apply", 1.0), ("id_attention_only", "apply_id", 0.0)):
        merge = f"merge_{apply}"
        # The official merge step (30 of 50) scaled to a shorter warm-up schedule.
        merge_step = settings.merge_step if steps[key] == settings.steps else min(steps[key] * 3 // 5, steps[key] - 2)
        graph[apply] = {"class_type": "ConsistentIDApply", "inputs": {
            "model": ["ckpt", 0], "consistentid": ["cid", 0], "identity": ["identity", 0], "weight": 1.0,
            "lora_strength": lora_strength, "start_at": 0.0, "end_at": 1.0}}
        graph[merge] = {"class_type": "ConsistentIDMergeStep", "inputs": {
            "text_only": ["encode", 0], "facial": ["encode", 1], "merge_step": merge_step, "steps": steps[key],
            "scheduler": settings.scheduler}}
        graph.update(_sampler(key, [apply, 0], [merge, 0], ["encode", 2], settings, seeds, steps))
    return graph


def _sampler(key: str, model: list, positive: list, negative: list, settings: Settings, seeds: dict[str, int],
             steps: dict[str, int]) -> dict:
    return {SAMPLERS[key]: {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": ["latent", 0],
        "seed": seeds[key], "steps": steps[key], "cfg": settings.cfg, "sampler_name": settings.sampler,
        "scheduler": settings.scheduler, "denoise": 1.0}}}
