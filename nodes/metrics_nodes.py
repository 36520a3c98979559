"""How well the identity holds, measured in the graph: FaceSim (ArcFace) and FGIS (DINO over the face regions)."""
import math
import weakref

import torch
from comfy_api.latest import io, ui

from ..consistentid_core import fgis
from ..consistentid_core.dino import RELEASE_FILE, dino_embed, load_dino
from ..consistentid_core.errors import InputImageError
from ..consistentid_core.facesim import face_similarity
from ..consistentid_core.images import images_from_batch
from .caches import shared_file
from .common import PackNode, node_schema
from .managed import on_device
from .paths import model_input, resolve
from .types import Dino, FaceRegions, InsightFace

_dinos: weakref.WeakValueDictionary[tuple[str, float], torch.nn.Module] = weakref.WeakValueDictionary()


def _one_reference(image: torch.Tensor, input_name: str):
    """The single reference photo of ``image`` as RGB uint8."""
    photos = images_from_batch(image)
    if len(photos) != 1:
        raise InputImageError(f"{input_name} holds {len(photos)} images; the scores compare against one photo.",
                              f"Connect a single reference photo to {input_name} (pick one with an ImageFromBatch "
                              "node).")
    return photos[0]


def _numbers(scores) -> list[float]:
    """Scores as the FLOAT list output: NaN where nothing was measured, since a FLOAT cannot be empty."""
    return [math.nan if score is None else score for score in scores]


def _chart_ui(cls, chart, text: str, key: str, records: list) -> dict:
    """What the node shows (the chart) and what a client reads from the history: the text and ``key``'s rows."""
    return {**ui.PreviewImage(chart, cls=cls).as_dict(), "text": [text], key: records}


class ConsistentIDFaceSim(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDFaceSim",
            display_name="ConsistentID FaceSim",
            description="FaceSim, the identity score of face-ID papers: the cosine similarity of InsightFace's "
                        "ArcFace embedding of the reference face and of the face in each image (1 = same "
                        "embedding). An image without a face (or a reference without one) is flagged, not an "
                        "error. Shows a bar chart of the scores.",
            inputs=[
                InsightFace.Input("insightface", tooltip="From ConsistentID InsightFace Loader (buffalo_l, the pack "
                                                         "ArcFace FaceSim is usually reported with)."),
                io.Image.Input("reference", tooltip="One photo of the person, e.g. the photo given to "
                                                    "ConsistentID Apply."),
                io.Image.Input("images", tooltip="The generated image(s) to score, e.g. VAE Decode's output; each "
                                                 "image of the batch gets its own score."),
            ],
            outputs=[
                io.Float.Output(display_name="facesim", is_output_list=True,
                                tooltip="One score per image, in batch order; NaN where no face was found."),
                io.String.Output(display_name="report", tooltip="The scores as text, and their mean."),
                io.Image.Output(display_name="chart", tooltip="A bar per image; no-face images marked in red."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, insightface, reference, images) -> io.NodeOutput:
        result = face_similarity(insightface, _one_reference(reference, "reference"), images_from_batch(images))
        chart = torch.from_numpy(result.chart()).float().div_(255).unsqueeze(0)
        text = result.text()
        return io.NodeOutput(_numbers(result.scores), text, chart,
                             ui=_chart_ui(cls, chart, text, "facesim", result.records()))


class ConsistentIDDinoLoader(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDDinoLoader",
            display_name="ConsistentID DINO Loader",
            description=f"Loads DINO ViT-S/16, the image encoder of the FGIS metric, from models/dino/: Facebook's "
                        f"released backbone {RELEASE_FILE} as it is (read as tensors only, never run as a pickle), "
                        "or a .safetensors with the same keys.",
            inputs=[
                model_input("dino_name", "dino",
                            f"DINO ViT-S/16 weights in models/dino/: {RELEASE_FILE} from Facebook's DINO release "
                            "(a missing one is flagged, with its folder and download address, when the workflow opens)."),
            ],
            outputs=[Dino.Output(display_name="dino", tooltip="For ConsistentID FGIS.")],
        )

    @classmethod
    def execute(cls, dino_name) -> io.NodeOutput:
        return io.NodeOutput(shared_file(_dinos, resolve("dino", dino_name), load_dino))


class ConsistentIDFGIS(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDFGIS",
            display_name="ConsistentID FGIS",
            description="FGIS, the fine-grained identity score of the ConsistentID paper: the mean cosine "
                        "similarity of DINO ViT-S/16 embeddings of the face regions (face, eyes, ears, nose, mouth) "
                        "of the reference and of each image. The paper's definition as implemented here; no "
                        "official code exists to compare against. Each region is the masked full frame, padded "
                        "black to a square, resized to 224 (bicubic), ImageNet-normalised; a region missing on "
                        "either side is left out of the mean and named. Shows the per-region scores as a chart.",
            inputs=[
                Dino.Input("dino", tooltip="From ConsistentID DINO Loader."),
                io.Image.Input("reference", tooltip="One photo of the person, the one parsed into reference_regions."),
                FaceRegions.Input("reference_regions", tooltip="ConsistentID Face Parse of the reference photo."),
                io.Image.Input("images", tooltip="The generated image(s) to score; each image of the batch gets its "
                                                 "own score."),
                FaceRegions.Input("image_regions", tooltip="ConsistentID Face Parse of the same images (a second "
                                                           "Face Parse node, fed with these images)."),
            ],
            outputs=[
                io.Float.Output(display_name="fgis", is_output_list=True,
                                tooltip="One FGIS per image, in batch order; NaN where the two share no region."),
                io.String.Output(display_name="report", tooltip="FGIS and every region's score per image, as text."),
                io.Image.Output(display_name="chart", tooltip="Per image: a bar per region and one for FGIS; "
                                                              "missing regions marked in red."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, dino, reference, reference_regions, images, image_regions) -> io.NodeOutput:
        photo = _one_reference(reference, "reference")
        generated = images_from_batch(images)
        for name, pictures, regions in (("reference", [photo], reference_regions),
                                        ("images", generated, image_regions)):
            if len(pictures) != len(regions):
                raise InputImageError(
                    f"{name} has {len(pictures)} image(s) but its face regions come from {len(regions)}.",
                    f"Connect the image that goes into {name} to the ConsistentID Face Parse that feeds "
                    f"{'reference_regions' if name == 'reference' else 'image_regions'}.")
        model = on_device(dino)
        results = fgis.fgis_scores(lambda pixels: dino_embed(model, pixels), photo, reference_regions[0],
                                   generated, image_regions)
        chart = torch.from_numpy(fgis.chart(results)).float().div_(255).unsqueeze(0)
        text = fgis.report(results)
        records = [result.row(number) for number, result in enumerate(results, start=1)]
        return io.NodeOutput(_numbers(result.fgis for result in results), text, chart,
                             ui=_chart_ui(cls, chart, text, "fgis", records))


NODES = [ConsistentIDFaceSim, ConsistentIDDinoLoader, ConsistentIDFGIS]
