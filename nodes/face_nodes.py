"""Face parser loader, face parsing into regions, and CLIP features of the regions."""
import weakref

import cv2
import numpy as np
import torch

import comfy.utils
from comfy_api.latest import io, ui

from ..consistentid_core.images import check_same_photos, images_from_batch
from ..consistentid_core.parsing import load_face_parser, parse_labels
from ..consistentid_core.regions import (LABEL_COLOURS, RegionFeatures, face_regions, mask_at_size,
                                         region_pixels)
from .clip_vision import encode_penultimate, zero_image_features
from .caches import shared_file
from .common import PackNode, node_schema
from .managed import on_device
from .paths import model_input, resolve
from .types import FaceParser, FaceRegions, RegionEmbeds

PARSE_SIZES = {"512": "SD1.5", "1280": "SDXL"}

_parsers: weakref.WeakValueDictionary[tuple[str, float], torch.nn.Module] = weakref.WeakValueDictionary()


class ConsistentIDFaceParserLoader(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDFaceParserLoader",
            display_name="ConsistentID Face Parser Loader",
            description="Loads the BiSeNet face parser (19 face-part classes) that finds the face, eye, ear, nose "
                        "and mouth regions ConsistentID encodes. Accepts ConsistentID's face_parsing.pth and "
                        "facexlib's parsing_bisenet.pth from models/face_parsing/.",
            inputs=[
                model_input("parser_name", "face_parsing",
                            "BiSeNet weights in models/face_parsing/: face_parsing.pth from the ConsistentID "
                            "release (a missing one is flagged, with its folder and download page, when the workflow opens), "
                            "or facexlib's parsing_bisenet.pth."),
            ],
            outputs=[FaceParser.Output(display_name="face_parser", tooltip="For ConsistentID Face Parse.")],
        )

    @classmethod
    def execute(cls, parser_name) -> io.NodeOutput:
        return io.NodeOutput(shared_file(_parsers, resolve("face_parsing", parser_name), load_face_parser))


def _preview(rgb: np.ndarray, label_map: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The parse coloured per class over the photo (background left as is), kept regions outlined."""
    height, width = rgb.shape[:2]
    labels = cv2.resize(label_map, (width, height), interpolation=cv2.INTER_NEAREST)
    colours = np.asarray(LABEL_COLOURS, dtype=np.uint8)[np.minimum(labels, len(LABEL_COLOURS) - 1)]
    blended = cv2.addWeighted(rgb, 0.4, colours, 0.6, 0)
    preview = np.where((labels > 0)[..., None], blended, rgb)
    thickness = max(1, min(height, width) // 256)
    for mask in masks:
        contours, _ = cv2.findContours(np.uint8(mask >= 128) * 255, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(preview, contours, -1, (255, 255, 255), thickness)
    return preview


class ConsistentIDFaceParse(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDFaceParse",
            display_name="ConsistentID Face Parse",
            description="Parses each reference photo into face parts as the official ConsistentID does (square "
                        "resize, BiSeNet, hole-filled masks) and keeps its regions in slot order: face, one eye, "
                        "one ear, nose, one lip. The node shows the parse over the photo.",
            inputs=[
                FaceParser.Input("face_parser", tooltip="From ConsistentID Face Parser Loader."),
                io.Image.Input("image", tooltip="Reference photo(s) of the person; each image of a batch is parsed "
                                                "on its own."),
                io.Combo.Input("parse_size", options=list(PARSE_SIZES), default="512",
                               tooltip="Square size the photo is parsed at, one of the official pipelines' two: "
                                       "512 for SD1.5, 1280 for SDXL."),
            ],
            outputs=[
                FaceRegions.Output(display_name="face_regions",
                                   tooltip="The kept regions of each photo, for Region Embed or FGIS."),
                io.Image.Output(display_name="preview",
                                tooltip="Face parts coloured over the photo, kept regions outlined in white."),
                io.Mask.Output(display_name="region_masks",
                               tooltip="The kept regions at the photo's size, in slot order, image after image "
                                       "(one empty mask if none was found)."),
            ],
        )

    @classmethod
    def execute(cls, face_parser, image, parse_size) -> io.NodeOutput:
        photos = images_from_batch(image)
        parser = on_device(face_parser)
        bar = comfy.utils.ProgressBar(len(photos))
        regions, previews, masks = [], [], []
        for rgb in photos:
            found = face_regions(parse_labels(parser, rgb, int(parse_size)))
            height, width = rgb.shape[:2]
            at_size = [np.array(mask_at_size(mask, width, height)) for mask in found.masks.values()]
            regions.append(found)
            previews.append(torch.from_numpy(_preview(rgb, found.label_map, at_size)))
            masks.extend(torch.from_numpy(mask) for mask in at_size)
            bar.update(1)
        if not masks:
            masks.append(torch.zeros(photos[0].shape[:2], dtype=torch.uint8))
        preview = torch.stack(previews).float().div_(255)
        # Shown on the node itself, so the regions can be checked without wiring a Preview Image.
        return io.NodeOutput(regions, preview, torch.stack(masks).float().div_(255),
                             ui=ui.PreviewImage(preview, cls=cls))


class ConsistentIDRegionEmbed(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDRegionEmbed",
            display_name="ConsistentID Region Embed",
            description="Encodes every kept face region with CLIP-ViT-H as the official ConsistentID does: the full "
                        "photo with everything but the region black, PIL-bicubic CLIP preprocessing, penultimate "
                        "hidden states. All regions of all images run in one batch.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="CLIP-ViT-H-14-laion2B-s32B-b79K from Load CLIP Vision."),
                io.Image.Input("image", tooltip="The same photo(s) that went into ConsistentID Face Parse."),
                FaceRegions.Input("face_regions", tooltip="From ConsistentID Face Parse."),
            ],
            outputs=[RegionEmbeds.Output(display_name="region_embeds", tooltip="For ConsistentID Face Encode.")],
        )

    @classmethod
    def execute(cls, clip_vision, image, face_regions) -> io.NodeOutput:
        photos = images_from_batch(image)
        check_same_photos(len(photos), len(face_regions), "the face regions")
        bar = comfy.utils.ProgressBar(len(photos) + 1)
        pixels = []
        for rgb, found in zip(photos, face_regions):
            pixels.append(region_pixels(rgb, found.masks))
            bar.update(1)
        zero = zero_image_features(clip_vision)
        batch = torch.cat(pixels)
        # A parse may keep no region at all; the zero features then fill every slot.
        features = encode_penultimate(clip_vision, batch) if len(batch) else zero.new_zeros(0, *zero.shape)
        bar.update(1)
        embeds, start = [], 0
        for found, region in zip(face_regions, pixels):
            embeds.append(RegionFeatures(list(found.masks), features[start:start + len(region)], zero))
            start += len(region)
        return io.NodeOutput(embeds)


NODES = [ConsistentIDFaceParserLoader, ConsistentIDFaceParse, ConsistentIDRegionEmbed]
