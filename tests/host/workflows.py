"""The example workflows, each defined once here and written out twice: a UI-format file in
``example_workflows/`` (what the ComfyUI frontend opens, with a ``.jpg`` thumbnail) and its API-format
twin in ``example_workflows/api/`` (what ``/prompt`` takes, with ``_meta.title`` as the frontend writes it).

The files follow the oldest ComfyUI the pack supports (``dev_env.FLOOR``, 0.3.64): widget order, socket types,
outputs and the titles of untitled nodes are its ``/object_info``'s, kept for the stock nodes the examples use in
``floor_stock_nodes.json`` (the pack's own nodes are read from the running host: they are the same on every host).
The floor, because a workflow is saved once and opened by every newer host, and ComfyUI keeps loading older
workflows: the frontends of 0.3.64 (1.27.10) and of 0.28.0 (1.45.21) both set ``widgets_values`` by position and
leave any widget past the saved ones at its default, and take a node's slots from the file. A file from the floor
therefore opens on 0.28.0 as on 0.3.64 (untitled nodes take 0.28.0's names, e.g. Canny's "Detect Edges (Canny)"),
while one saved on 0.28.0 would carry slots 0.3.64's nodes lack (the IMAGE output of PreviewImage and SaveImage).
``tests/host/test_workflows.py`` checks on every host that the files are those of their definitions at the floor
and that what the host's frontend queues for a file is what the definition means on that host.

After changing a definition or a node's inputs, regenerate the files with a headless ComfyUI:

    .venv/bin/python tests/host/workflows.py   (the host that ``tests/dev_env.py`` finds)

On the floor host this also refreshes ``floor_stock_nodes.json``; on another host it reads the stored copy.
"""
import copy
import json
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
UI_DIR = REPO / "example_workflows"
API_DIR = UI_DIR / "api"  # not a template folder: the host lists only example_workflows/*.json
FLOOR_STOCK_NODES = Path(__file__).resolve().parent / "floor_stock_nodes.json"
PACK_ID = "consistentid"  # the registry id (pyproject [project] name), so the frontend can name the missing pack
# A node's "ver", as the frontend saves it: the pack's version for its nodes (ComfyUI-Manager installs that one
# for a missing pack), and for stock nodes the ComfyUI whose interfaces the files follow (the floor).
PACK_VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
STOCK_VERSION = json.loads(FLOOR_STOCK_NODES.read_text())["comfyui_version"]

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"MarkdownNote", "Note"}  # frontend-only: never sent to /prompt
SLOT_H, WIDGET_H, TEXT_H, IMAGE_H, TITLE_H, GAP = 20, 24, 90, 260, 30, 40
COLUMN_X = (0, 380, 760, 1180, 1560, 1980, 2400, 2820)

PROMPT = ("cinematic photo,A man, in a forest, adventuring, 50mm photograph, half-length portrait, film, bokeh, "
          "professional, 4k, highly detailed")
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"
HF = "https://huggingface.co"
CHECKPOINT = ("v1-5-pruned-emaonly.safetensors", "checkpoints",
              f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors")
CLIP_VISION = ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision",
               f"{HF}/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors")
ADAPTER = ("ConsistentID-v1.bin", "consistentid", f"{HF}/JackAILab/ConsistentID/resolve/main/ConsistentID-v1.bin")
CHECKPOINT_SDXL = ("sd_xl_base_1.0.safetensors", "checkpoints",
                   f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors")
ADAPTER_SDXL = ("ConsistentID_SDXL-v1.bin", "consistentid",
                f"{HF}/JackAILab/ConsistentID/resolve/main/ConsistentID_SDXL-v1.bin")
PARSER = ("face_parsing.pth", "face_parsing", f"{HF}/JackAILab/ConsistentID/resolve/main/face_parsing.pth")
CONTROLNET = ("control_v11p_sd15_canny_fp16.safetensors", "controlnet",
              f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
              "control_v11p_sd15_canny_fp16.safetensors")


@dataclass(frozen=True)
class Base:
    """A base model's files and the official settings of its ConsistentID scripts."""
    name: str
    tag: str
    checkpoint: tuple
    adapter: tuple
    parse_size: str
    det_size: int
    official: dict


SD15 = Base("SD1.5", "sd15", CHECKPOINT, ADAPTER, "512", 640,
            {"width": 512, "height": 768, "steps": 50, "merge_step": 30, "cfg": 5.0, "sampler_name": "euler",
             "scheduler": "normal", "seed": 2024})
SDXL = Base("SDXL", "sdxl", CHECKPOINT_SDXL, ADAPTER_SDXL, "1280", 512,
            {**SD15.official, "width": 864, "height": 1152, "cfg": 7.5})


class Link(NamedTuple):
    node: int
    slot: int


@dataclass
class Node:
    id: int
    type: str
    column: int
    inputs: dict
    title: str | None = None
    models: tuple = ()
    width: int = 330

    def __getitem__(self, slot: int) -> Link:
        return Link(self.id, slot)


@dataclass
class Graph:
    name: str
    note: str
    nodes: list[Node] = field(default_factory=list)
    groups: list[tuple[str, list[int], str]] = field(default_factory=list)

    def add(self, type_: str, column: int, title: str | None = None, models: tuple = (), box_width: int = 330,
            **inputs) -> Node:
        node = Node(len(self.nodes) + 1, type_, column, inputs, title, models, box_width)
        self.nodes.append(node)
        return node

    def group(self, title: str, color: str, *nodes: Node) -> None:
        self.groups.append((title, [node.id for node in nodes], color))


# ---------------------------------------------------------------------------------------------------- definitions

def _note(base: Base) -> str:
    o = base.official
    demo = {"sd15": "Realistic Vision V6.0 B1", "sdxl": "RealVisXL V4.0"}[base.tag]
    return f"""## ConsistentID ({base.name})
Upload a clear photo of **one face** in *Reference face*, write the prompt in *ConsistentID Facial Encoder* and queue.

**Models** (ComfyUI/models/…):
- `checkpoints/` an {base.name} checkpoint (the official demo uses {demo})
- `consistentid/{base.adapter[0]}` and `face_parsing/face_parsing.pth` from huggingface.co/JackAILab/ConsistentID
- `clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors` (IP-Adapter's image encoder, renamed)
- `insightface/models/buffalo_l/` (det_10g.onnx, w600k_r50.onnx)

Official settings: {o["width"]}×{o["height"]}, {o["steps"]} steps, merge step {o["merge_step"]}, CFG {o["cfg"]:g}, euler /
normal; face parsing at {base.parse_size}, InsightFace detection at {base.det_size}. Sample with *Apply*'s MODEL
and *Merge Step*'s positive, and keep the Merge Step's steps and scheduler equal to the KSampler's. Face parsing,
InsightFace and CLIP vision run once per photo; changing the prompt or the seed reuses them."""


NOTE = _note(SD15)


def _models(g: Graph, base: Base) -> dict[str, Node]:
    models = {"ckpt": g.add("CheckpointLoaderSimple", 0, models=(base.checkpoint,), ckpt_name=base.checkpoint[0]),
              "adapter": g.add("ConsistentIDLoader", 0, models=(base.adapter,), consistentid_name=base.adapter[0]),
              "vision": g.add("CLIPVisionLoader", 0, models=(CLIP_VISION,), clip_name=CLIP_VISION[0]),
              "parser": g.add("ConsistentIDFaceParserLoader", 0, models=(PARSER,), parser_name=PARSER[0]),
              "insightface": g.add("ConsistentIDInsightFaceLoader", 0, pack="buffalo_l", provider="CPU",
                                   det_size=base.det_size)}
    g.group("Models", "#3f789e", *models.values())
    return models


def _face(g: Graph, column: int, models: dict[str, Node], base: Base, title: str, preview: bool = True) -> Node:
    """A reference photo through face parsing and region embedding into Face Encode; returns Face Encode."""
    photo = g.add("LoadImage", column, title=title, image="example.png")
    parsed = g.add("ConsistentIDFaceParse", column, face_parser=models["parser"][0], image=photo[0],
                   parse_size=base.parse_size)
    embeds = g.add("ConsistentIDRegionEmbed", column, clip_vision=models["vision"][0], image=photo[0],
                   face_regions=parsed[0])
    shown = [g.add("PreviewImage", column, title="Face parts", images=parsed[1])] if preview else []
    identity = g.add("ConsistentIDFaceEncode", column, consistentid=models["adapter"][0],
                     clip_vision=models["vision"][0], insightface=models["insightface"][0], image=photo[0],
                     region_embeds=embeds[0], face="highest score", face_index=0, combine="average",
                     on_no_face="error")
    g.group(title, "#8a6e3f", photo, parsed, *shown, embeds, identity)
    return identity


def _identity(g: Graph, base: Base = SD15, **region_weights) -> dict[str, Link]:
    """Loaders, face parsing and the ConsistentID patch: what every advanced example shares."""
    o = base.official
    models = _models(g, base)
    ckpt, adapter = models["ckpt"], models["adapter"]
    identity = _face(g, 1, models, base, "Reference face")
    encoder = g.add("ConsistentIDFacialEncoder", 2, box_width=400, consistentid=adapter[0], clip=ckpt[1],
                    identity=identity[0], prompt=PROMPT, negative_prompt=NEGATIVE, caption="", **region_weights)
    apply = g.add("ConsistentIDApply", 2, model=ckpt[0], consistentid=adapter[0], identity=identity[0], weight=1.0,
                  lora_strength=1.0, start_at=0.0, end_at=1.0)
    merge = g.add("ConsistentIDMergeStep", 2, text_only=encoder[0], facial=encoder[1], merge_step=o["merge_step"],
                  steps=o["steps"], scheduler=o["scheduler"])
    g.group("ConsistentID", "#5a3f8a", encoder, apply, merge)
    return {"model": apply[0], "positive": merge[0], "negative": encoder[2], "vae": ckpt[2]}


def _sample(g: Graph, column: int, model: Link, positive: Link, negative: Link, latent: Link, vae: Link,
            base: Base = SD15) -> None:
    o = base.official
    sampler = g.add("KSampler", column, model=model, positive=positive, negative=negative, latent_image=latent,
                    seed=o["seed"], steps=o["steps"], cfg=o["cfg"], sampler_name=o["sampler_name"],
                    scheduler=o["scheduler"], denoise=1.0)
    decoded = g.add("VAEDecode", column + 1, samples=sampler[0], vae=vae)
    g.add("SaveImage", column + 1, box_width=420, images=decoded[0], filename_prefix="ConsistentID")


def _empty_latent(g: Graph, column: int, base: Base = SD15) -> Node:
    return g.add("EmptyLatentImage", column, width=base.official["width"], height=base.official["height"],
                 batch_size=1)


def basic(base: Base = SD15) -> Graph:
    g = Graph(f"consistentid_{base.tag}_basic", _note(base))
    parts = _identity(g, base)
    _sample(g, 3, parts["model"], parts["positive"], parts["negative"], _empty_latent(g, 3, base)[0], parts["vae"],
            base)
    return g


def inpaint() -> Graph:
    g = Graph("consistentid_sd15_inpaint", NOTE + """

**Inpaint:** load the picture to change in *Image to inpaint*, right-click it → *Open in MaskEditor* and paint
the area to regenerate (e.g. the face). The result keeps the size of that picture; denoise stays 1.0 as in the
official inpaint pipeline (a 4-channel model is blended with the picture outside the mask at every step).""")
    parts = _identity(g)
    target = g.add("LoadImage", 3, title="Image to inpaint", image="example.png")
    conditioned = g.add("InpaintModelConditioning", 3, positive=parts["positive"], negative=parts["negative"],
                        vae=parts["vae"], pixels=target[0], mask=target[1], noise_mask=True)
    _sample(g, 3, parts["model"], conditioned[0], conditioned[1], conditioned[2], parts["vae"])
    return g


def controlnet() -> Graph:
    g = Graph("consistentid_sd15_controlnet", NOTE + """

**ControlNet:** *Pose / composition* gives the Canny edges that the generated picture follows (the official
ControlNet pipeline uses scale 0.5). Put `control_v11p_sd15_canny_fp16.safetensors` into `models/controlnet/`;
any SD1.5 ControlNet works with its matching preprocessor.""")
    parts = _identity(g)
    control = g.add("ControlNetLoader", 3, models=(CONTROLNET,), control_net_name=CONTROLNET[0])
    pose = g.add("LoadImage", 3, title="Pose / composition", image="example.png")
    edges = g.add("Canny", 3, image=pose[0], low_threshold=0.4, high_threshold=0.8)
    g.add("PreviewImage", 3, title="Edges", images=edges[0])
    applied = g.add("ControlNetApplyAdvanced", 4, positive=parts["positive"], negative=parts["negative"],
                    control_net=control[0], image=edges[0], strength=0.5, start_percent=0.0, end_percent=1.0)
    _sample(g, 4, parts["model"], applied[0], applied[1], _empty_latent(g, 4)[0], parts["vae"])
    return g


def all_in_one(base: Base = SD15) -> Graph:
    o = base.official
    g = Graph(f"consistentid_{base.tag}_all_in_one", f"""## ConsistentID (all in one, {base.name})
One node runs the whole ConsistentID graph with the official settings (it expands into the granular nodes, so
face analysis is cached). Upload a clear photo of **one face** in *Reference face* and queue.

**Models** (ComfyUI/models/…): an {base.name} checkpoint, `consistentid/{base.adapter[0]}`,
`face_parsing/face_parsing.pth`, `clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`,
`insightface/models/buffalo_l/`. Keep the node's steps and scheduler equal to the KSampler's.""")
    ckpt = g.add("CheckpointLoaderSimple", 0, models=(base.checkpoint,), ckpt_name=base.checkpoint[0])
    vision = g.add("CLIPVisionLoader", 0, models=(CLIP_VISION,), clip_name=CLIP_VISION[0])
    photo = g.add("LoadImage", 0, title="Reference face", image="example.png")
    simple = g.add("ConsistentIDSimple", 1, box_width=400, models=(base.adapter, PARSER), model=ckpt[0],
                   clip=ckpt[1], clip_vision=vision[0], image=photo[0], prompt=PROMPT, negative_prompt=NEGATIVE,
                   consistentid_name=base.adapter[0], parser_name=PARSER[0], insightface_pack="buffalo_l",
                   provider="CPU", base_model=base.name, weight=1.0, merge_step=o["merge_step"], steps=o["steps"],
                   scheduler=o["scheduler"])
    _sample(g, 3, simple[0], simple[1], simple[2], _empty_latent(g, 3, base)[0], ckpt[2], base)
    return g


def edit_one_region() -> Graph:
    g = Graph("consistentid_sd15_edit_one_region", NOTE + """

**Edit one region:** *ConsistentID Facial Encoder* has a weight per facial region (face, eyes, ears, nose, mouth).
Here the mouth is 0: the photo's mouth is left out exactly as if the parse had not found it, so the prompt
decides it (try "smiling"); the eyes are 1.3, kept closer to the photo. 1 everywhere is the official result;
values between 0 and 1 soften a region.""")
    parts = _identity(g, mouth=0.0, eyes=1.3)
    _sample(g, 3, parts["model"], parts["positive"], parts["negative"], _empty_latent(g, 3)[0], parts["vae"])
    return g


TWO_PEOPLE_SIZE = (768, 512)  # side by side: landscape
TWO_PEOPLE_PROMPTS = ("cinematic photo, a man on the left, two friends in a forest, adventuring, 50mm photograph, "
                      "film, bokeh, professional, 4k, highly detailed",
                      "cinematic photo, a woman on the right, two friends in a forest, adventuring, 50mm photograph, "
                      "film, bokeh, professional, 4k, highly detailed")


def two_people() -> Graph:
    o, (width, height) = SD15.official, TWO_PEOPLE_SIZE
    g = Graph("consistentid_sd15_two_people", NOTE + f"""

**Two people:** one identity per person, each in its half of the picture. *Person A* goes left, *Person B*
right: each Apply's mask limits that person's face-ID tokens, and Conditioning (Set Mask) limits that
person's text-only and facial prompts, to the half (the merge step keeps both). Move the masks (*Left* /
*Right*) to place the people elsewhere; any MASK works (painted, from a segmenter, soft edges). Official
size for one person is 512×768; this example is {width}×{height}.""")
    models = _models(g, SD15)
    ckpt, adapter = models["ckpt"], models["adapter"]
    canvas = g.add("SolidMask", 0, title="Canvas", value=0.0, width=width, height=height)
    half = g.add("SolidMask", 0, title="Half", value=1.0, width=width // 2, height=height)
    masks = [g.add("MaskComposite", 0, title=title, destination=canvas[0], source=half[0], x=x, y=0,
                   operation="add") for title, x in (("Left", 0), ("Right", width // 2))]
    g.group("Where each person goes", "#3f8a5a", canvas, half, *masks)
    model, text_only, facial, negatives = ckpt[0], [], [], []
    for column, (name, mask, prompt) in enumerate(zip(("Person A", "Person B"), masks, TWO_PEOPLE_PROMPTS), 1):
        identity = _face(g, column, models, SD15, name, preview=False)
        encoder = g.add("ConsistentIDFacialEncoder", 3, box_width=360, consistentid=adapter[0], clip=ckpt[1],
                        identity=identity[0], prompt=prompt, negative_prompt=NEGATIVE, caption="")
        model = g.add("ConsistentIDApply", 5, model=model, consistentid=adapter[0], identity=identity[0], weight=1.0,
                      lora_strength=1.0, start_at=0.0, end_at=1.0, mask=mask[0])[0]
        for kept, slot in ((text_only, 0), (facial, 1)):
            kept.append(g.add("ConditioningSetMask", 4, conditioning=encoder[slot], mask=mask[0], strength=1.0,
                              set_cond_area="default")[0])
        negatives.append(encoder[2])
    combined = [g.add("ConditioningCombine", 4, conditioning_1=a, conditioning_2=b)[0]
                for a, b in (text_only, facial, negatives)]
    merge = g.add("ConsistentIDMergeStep", 5, text_only=combined[0], facial=combined[1], merge_step=o["merge_step"],
                  steps=o["steps"], scheduler=o["scheduler"])
    latent = g.add("EmptyLatentImage", 5, width=width, height=height, batch_size=1)
    _sample(g, 6, model, merge[0], combined[2], latent[0], ckpt[2])
    return g


DEFINITIONS = {graph.name: graph for graph in (basic(), inpaint(), controlnet(), all_in_one(), edit_one_region(),
                                                  two_people(), basic(SDXL), all_in_one(SDXL))}

# ------------------------------------------------------------------------------------------- node interfaces

# The options of an input that the conversion reads; the rest (tooltips, ranges, combo choices such as the model
# files found on the machine) are not stored in the files.
READ_OPTIONS = ("default", "forceInput", "control_after_generate", "image_upload", "multiline")


def _is_stock(info: dict) -> bool:
    return not info["python_module"].startswith("custom_nodes.")


def interface(info: dict) -> dict:
    """What the conversion reads of a node's ``/object_info`` entry; a combo's type is written ``COMBO``."""
    def spec(value: list) -> list:
        options = value[1] if len(value) > 1 else {}
        return ["COMBO" if isinstance(value[0], list) else value[0],
                {key: options[key] for key in READ_OPTIONS if key in options}]

    sections = ("required", "optional")
    return {"display_name": info["display_name"], "python_module": info["python_module"],
            "input": {part: {name: spec(value) for name, value in info["input"][part].items()}
                      for part in sections if part in info["input"]},
            "input_order": {part: info["input_order"][part] for part in sections if part in info["input_order"]},
            "output": info["output"], "output_name": info["output_name"]}


def _used_types() -> set[str]:
    return {node.type for graph in DEFINITIONS.values() for node in graph.nodes}


def stock_interfaces(object_info: dict) -> dict:
    """The interfaces of the stock nodes the examples use, as the host of ``object_info`` has them."""
    return {name: interface(object_info[name]) for name in sorted(_used_types()) if _is_stock(object_info[name])}


def floor_interfaces(object_info: dict) -> dict:
    """The interfaces the files are written from: the stock nodes of the floor host (the stored copy) and the
    pack's nodes from ``object_info``, a running host's."""
    stock = json.loads(FLOOR_STOCK_NODES.read_text())["nodes"]
    ours = {name: object_info[name] for name in _used_types() - set(stock)}
    unstored = sorted(name for name, info in ours.items() if _is_stock(info))
    if unstored:
        raise ValueError(f"{FLOOR_STOCK_NODES.name} lacks the stock nodes {unstored}: run this module on the "
                         "floor host")
    return {**stock, **{name: interface(info) for name, info in ours.items()}}


# ------------------------------------------------------------------------------------------------ conversion


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"]
    return [(name, specs[name]) for name in order.get("required", []) + order.get("optional", [])]


def _is_widget(spec: list) -> bool:
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput")


def _widget_values(node: Node, info: dict) -> list:
    """Widget values in the frontend's order, with the extra values it stores after some widgets."""
    values = []
    for name, spec in _ordered_inputs(info):
        if not _is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 else {}
        values.append(node.inputs[name] if name in node.inputs else options["default"])
        if options.get("control_after_generate"):
            values.append("fixed")
        if options.get("image_upload"):
            values.append("image")
    return values


def _height(node: Node, info: dict) -> int:
    inputs = _ordered_inputs(info)
    sockets = sum(not _is_widget(spec) for _, spec in inputs)
    widgets = [spec for _, spec in inputs if _is_widget(spec)]
    multiline = sum(len(spec) > 1 and bool(spec[1].get("multiline")) for spec in widgets)
    shows_image = node.type in {"LoadImage", "PreviewImage", "SaveImage"}
    return (max(sockets, len(info["output"]), 1) * SLOT_H + len(widgets) * WIDGET_H + multiline * TEXT_H
            + shows_image * IMAGE_H + 16)


def _layout(graph: Graph, object_info: dict) -> dict[int, tuple[list[int], list[int]]]:
    """``pos`` and ``size`` of every node: stacked in its column, in the order of the definition."""
    next_y, placed = {}, {}
    for node in graph.nodes:
        height = _height(node, object_info[node.type])
        y = next_y.get(node.column, 0)
        placed[node.id] = ([COLUMN_X[node.column], y], [node.width, height])
        next_y[node.column] = y + height + TITLE_H + GAP
    return placed


def _topological(graph: Graph) -> dict[int, int]:
    order, done = {}, set()

    def visit(node: Node) -> None:
        if node.id in done:
            return
        done.add(node.id)
        for value in node.inputs.values():
            if isinstance(value, Link):
                visit(graph.nodes[value.node - 1])
        order[node.id] = len(order)

    for node in graph.nodes:
        visit(node)
    return order


def to_api(graph: Graph, object_info: dict) -> dict:
    """The graph as ``/prompt`` takes it: every input of every node, links as ``[node id, slot]``."""
    prompt = {}
    for node in graph.nodes:
        info = object_info[node.type]
        unknown = set(node.inputs) - {name for name, _ in _ordered_inputs(info)}
        if unknown:
            raise ValueError(f"{graph.name}: {node.type} has no input {sorted(unknown)}")
        inputs = {}
        for name, spec in _ordered_inputs(info):
            value = node.inputs.get(name, (spec[1] if len(spec) > 1 else {}).get("default"))
            if isinstance(value, Link):
                inputs[name] = [str(value.node), value.slot]
            elif name in node.inputs or _is_widget(spec):
                inputs[name] = value
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or info["display_name"] or node.type}}
    return prompt


def to_ui(graph: Graph, object_info: dict) -> dict:
    """The graph as the frontend saves it (litegraph ``nodes``/``links``/``groups``), with a note beside it."""
    placed, order = _layout(graph, object_info), _topological(graph)
    links, outputs = [], {}
    nodes = []
    for node in graph.nodes:
        info = object_info[node.type]
        inputs = []
        for name, spec in _ordered_inputs(info):
            value = node.inputs.get(name)
            if isinstance(value, Link) and _is_widget(spec):
                raise ValueError(f"{graph.name}: {node.type}.{name} is a widget; link it through a converted input")
            if _is_widget(spec):
                continue
            link = None
            if isinstance(value, Link):
                link = len(links) + 1
                links.append([link, value.node, value.slot, node.id, len(inputs), spec[0]])
                outputs.setdefault((value.node, value.slot), []).append(link)
            inputs.append({"name": name, "type": spec[0], "link": link})
        stock = _is_stock(info)
        properties = {"Node name for S&R": node.type, "cnr_id": "comfy-core" if stock else PACK_ID,
                      "ver": STOCK_VERSION if stock else PACK_VERSION}
        if node.models:
            properties["models"] = [{"name": name, "url": url, "directory": folder}
                                    for name, folder, url in node.models]
        pos, size = placed[node.id]
        entry = {"id": node.id, "type": node.type, "pos": pos, "size": size, "flags": {}, "order": order[node.id],
                 "mode": 0, "inputs": inputs, "outputs": [], "properties": properties,
                 "widgets_values": _widget_values(node, info)}
        if node.title:
            entry["title"] = node.title
        nodes.append(entry)
    for entry in nodes:
        info = object_info[entry["type"]]
        entry["outputs"] = [{"name": name, "type": kind, "slot_index": slot,
                             "links": outputs.get((entry["id"], slot), [])}
                            for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    note_id = len(graph.nodes) + 1
    nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [-480, 0], "size": [440, 520], "flags": {},
                  "order": note_id - 1, "mode": 0, "inputs": [], "outputs": [], "title": "Read me",
                  "properties": {}, "widgets_values": [graph.note], "color": "#432", "bgcolor": "#653"})
    groups = []
    for number, (title, members, color) in enumerate(graph.groups, 1):
        left = min(placed[i][0][0] for i in members) - 20
        top = min(placed[i][0][1] for i in members) - TITLE_H - 50
        right = max(placed[i][0][0] + placed[i][1][0] for i in members) + 20
        bottom = max(placed[i][0][1] + placed[i][1][1] for i in members) + 20
        groups.append({"id": number, "title": title, "bounding": [left, top, right - left, bottom - top],
                       "color": color, "font_size": 24, "flags": {}})
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/{graph.name}")), "revision": 0,
            "last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": groups,
            "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [560, 120]}}, "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """What the frontend queues for a UI-format workflow (its graphToPrompt, for plain graphs) once it has opened
    it on the host of ``object_info``: a widget with no saved value (one the host added since) keeps its default."""
    sources = {link[0]: link for link in ui["links"]}
    prompt = {}
    for entry in ui["nodes"]:
        if entry["type"] in VIRTUAL_NODES or entry.get("mode", 0) != 0:
            continue
        info = object_info[entry["type"]]
        values = iter(entry["widgets_values"])
        linked = {slot["name"]: slot["link"] for slot in entry["inputs"]}
        inputs = {}
        for name, spec in _ordered_inputs(info):
            options = spec[1] if len(spec) > 1 else {}
            if _is_widget(spec):
                inputs[name] = next(values, options.get("default"))
                for extra in ("control_after_generate", "image_upload"):
                    if options.get(extra):
                        next(values, None)
            elif linked.get(name) is not None:
                _, node, slot, *_ = sources[linked[name]]
                inputs[name] = [str(node), slot]
        prompt[str(entry["id"])] = {"class_type": entry["type"], "inputs": inputs,
                                    "_meta": {"title": entry.get("title") or info["display_name"] or entry["type"]}}
    return prompt


# ---------------------------------------------------------------------------------------------- test helpers


def load_api(name: str) -> dict:
    """A fresh copy of the API twin of an example workflow."""
    return json.loads((API_DIR / f"{name}.json").read_text())


def node_ids(prompt: dict, selector: str) -> list[str]:
    """Ids of the nodes whose class or title is ``selector``."""
    return [node_id for node_id, node in prompt.items()
            if selector in (node["class_type"], node.get("_meta", {}).get("title"))]


def set_inputs(prompt: dict, selector: str, /, **values) -> dict:
    """Set widget values of every node whose class or title is ``selector``; each name must be an input."""
    ids = node_ids(prompt, selector)
    if not ids:
        raise KeyError(f"no node is a {selector!r}")
    for node_id in ids:
        inputs = prompt[node_id]["inputs"]
        unknown = set(values) - set(inputs)
        if unknown:
            raise KeyError(f"{selector!r} has no input {sorted(unknown)}")
        inputs.update(copy.deepcopy(values))
    return prompt


# ------------------------------------------------------------------------------------------------- thumbnails

TYPE_COLOURS = {"MODEL": "#b39ddb", "CLIP": "#ffd500", "VAE": "#ff6e6e", "CONDITIONING": "#ffa931",
                "LATENT": "#ff9cf9", "IMAGE": "#64b5f6", "MASK": "#81c784", "CLIP_VISION": "#a8dadc",
                "CONTROL_NET": "#00d78d"}


def _bezier(start: tuple, end: tuple, bend: float, count: int = 24):
    """Points of the S-curve litegraph draws from an output socket to an input socket."""
    control = (start, (start[0] + bend, start[1]), (end[0] - bend, end[1]), end)
    for i in range(count + 1):
        t = i / count
        weights = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3)
        yield tuple(sum(w * point[axis] for w, point in zip(weights, control)) for axis in (0, 1))


def render_thumbnail(ui: dict, object_info: dict, width: int = 1600):
    """A drawing of the graph (groups, nodes with their sockets and widgets, coloured links) as a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    boxes = [(*n["pos"], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]]
    boxes += [(x, y, x + w, y + h) for x, y, w, h in (g["bounding"] for g in ui["groups"])]
    left, top = min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - TITLE_H - 20
    right, bottom = max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20
    scale = width / (right - left)
    image = Image.new("RGB", (width, round((bottom - top) * scale)), "#1e1e1e")
    draw = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.load_default(size=max(8, round(14 * scale)))
    big = ImageFont.load_default(size=max(11, round(22 * scale)))

    def at(x: float, y: float) -> tuple[float, float]:
        return (x - left) * scale, (y - top) * scale

    for group in ui["groups"]:
        x, y, w, h = group["bounding"]
        colour = group["color"].lstrip("#")
        rgb = tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))
        draw.rectangle([at(x, y), at(x + w, y + h)], fill=(*rgb, 60), outline=(*rgb, 255))
        draw.text(at(x + 10, y + 6), group["title"], font=big, fill="#dddddd")
    by_id = {n["id"]: n for n in ui["nodes"]}

    def socket(node: dict, slot: int, output: bool) -> tuple[float, float]:
        x = node["pos"][0] + (node["size"][0] if output else 0)
        return at(x, node["pos"][1] + (slot + 0.7) * SLOT_H)

    for _, source, slot, target, target_slot, kind in ui["links"]:
        start, end = socket(by_id[source], slot, True), socket(by_id[target], target_slot, False)
        points = list(_bezier(start, end, max(abs(end[0] - start[0]) / 2, 20 * scale)))
        draw.line(points, fill=TYPE_COLOURS.get(kind, "#aaaaaa"), width=max(1, round(3 * scale)))
    for node in ui["nodes"]:
        (x, y), (w, h) = node["pos"], node["size"]
        draw.rounded_rectangle([at(x, y - TITLE_H), at(x + w, y + h)], radius=6 * scale,
                               fill=node.get("bgcolor", "#353535"), outline="#111111")
        draw.rectangle([at(x, y - TITLE_H), at(x + w, y)], fill=node.get("color", "#222222"))
        title = node.get("title") or object_info.get(node["type"], {}).get("display_name") or node["type"]
        draw.text(at(x + 10, y - TITLE_H + 7), title, font=font, fill="#eeeeee")
        for slot, item in enumerate(node["inputs"]):
            draw.text(at(x + 12, y + slot * SLOT_H + 3), item["name"], font=font, fill="#bbbbbb")
        for slot, item in enumerate(node["outputs"]):
            draw.text(at(x + w - 12, y + slot * SLOT_H + 3), item["name"], font=font, fill="#bbbbbb", anchor="ra")
        rows = max(len(node["inputs"]), len(node["outputs"]))
        for row, value in enumerate(v for v in node["widgets_values"] if v not in ("fixed", "image")):
            text = str(value).splitlines()[0] if str(value).strip() else "…"
            if node["type"] in VIRTUAL_NODES:
                text = "Read me: models, settings, how to use"
            draw.rectangle([at(x + 10, y + rows * SLOT_H + row * WIDGET_H + 4),
                            at(x + w - 10, y + rows * SLOT_H + (row + 1) * WIDGET_H)], fill="#222222")
            draw.text(at(x + 16, y + rows * SLOT_H + row * WIDGET_H + 7), text[:48], font=font, fill="#dddddd")
    return image


def write_files(object_info: dict) -> list[Path]:
    """Write every example's UI file, thumbnail and API twin from its definition and the node interfaces
    (:func:`floor_interfaces`)."""
    UI_DIR.mkdir(exist_ok=True)
    API_DIR.mkdir(exist_ok=True)
    written = []
    for name, graph in DEFINITIONS.items():
        ui = to_ui(graph, object_info)
        written += [UI_DIR / f"{name}.json", UI_DIR / f"{name}.jpg", API_DIR / f"{name}.json"]
        written[-3].write_text(json.dumps(ui, indent=2) + "\n")
        render_thumbnail(ui, object_info).save(written[-2], quality=88)
        written[-1].write_text(json.dumps(to_api(graph, object_info), indent=2) + "\n")
    return written


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from comfy_host import scratch_server
    from dev_env import FLOOR

    with scratch_server() as server:
        object_info = server.object_info()
        if server.version() == FLOOR:
            stored = {"comfyui_version": FLOOR, "nodes": stock_interfaces(object_info)}
            FLOOR_STOCK_NODES.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
            print(FLOOR_STOCK_NODES.relative_to(REPO))
        for path in write_files(floor_interfaces(object_info)):
            print(path.relative_to(REPO))
