"""FGIS, the fine-grained identity similarity of the ConsistentID paper (§IV, metrics): "the average cosine
similarity between DINO embeddings of the facial regions in reference and generated images", DINO being ViT-S/16.

No code for it was released, so this is the paper's definition as implemented here: the regions are the pack's
own (BiSeNet parse, ConsistentID's face, eyes, ears, nose and mouth), each region is the masked full-frame
composite ConsistentID shows CLIP, embedded by DINO's CLS token (:func:`dino.dino_pixels` preprocessing); a
region is compared when both images have it, and FGIS is the mean over the compared regions. Left and right (or
upper and lower) parts are one region, whichever of the pair the parse kept on each side.
"""
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from .dino import dino_pixels
from .regions import REGION_KEYWORD, REGION_PARTS, FaceRegions, region_composites
from .score_chart import Bar, bar_chart
from .similarity import cosine, mean_of

MISSING_IN = {(False, True): "reference", (True, False): "image", (False, False): "both"}  # by (in ref, in image)
_MISSING_TEXT = {"reference": "not in the reference", "image": "not in the image", "both": "in neither image"}


@dataclass
class FgisResult:
    scores: dict[str, float | None]  # every region of REGION_PARTS; None where it is missing
    missing: dict[str, str]  # region -> where it was not found: "reference", "image" or "both"

    @property
    def fgis(self) -> float | None:
        """The mean over the compared regions; None when the two images share none."""
        return mean_of(self.scores.values())

    def row(self, number: int) -> dict:
        return {"image": number, "fgis": self.fgis, "regions": dict(self.scores), "missing": dict(self.missing)}

    def line(self, number: int) -> str:
        parts = [f"{region} {score:.4f}" for region, score in self.scores.items() if score is not None]
        parts += [f"{region}: {_MISSING_TEXT[where]}" for region, where in self.missing.items()]
        value = "no common region" if self.fgis is None else f"{self.fgis:.4f}"
        return f"image {number}: FGIS {value} ({'; '.join(parts)})"

    def bars(self) -> list[Bar]:
        return [*(Bar(region, score, "missing") for region, score in self.scores.items()),
                Bar("FGIS", self.fgis, "none")]


def by_region(found: FaceRegions) -> dict[str, np.ndarray]:
    """The kept masks under their FGIS region names."""
    return {REGION_KEYWORD[name]: mask for name, mask in found.masks.items()}


def fgis_scores(embed: Callable[[torch.Tensor], torch.Tensor], reference: np.ndarray, reference_regions: FaceRegions,
                images: list[np.ndarray], image_regions: list[FaceRegions]) -> list[FgisResult]:
    """FGIS of each RGB ``uint8`` image against ``reference``; ``embed`` maps DINO pixels ``[n, 3, 224, 224]`` to
    CLS embeddings ``[n, D]`` (all regions of all images go in one call)."""
    ref_masks = by_region(reference_regions)
    masks = [{region: mask for region, mask in by_region(found).items() if region in ref_masks}
             for found in image_regions]
    # Composites are full-size frames: each is turned into 224 x 224 pixels before the next is made.
    composites = chain(region_composites(reference, ref_masks),
                       *(region_composites(rgb, kept) for rgb, kept in zip(images, masks)))
    pixels = [dino_pixels(composite) for composite in composites]
    embeddings = iter(embed(torch.stack(pixels)) if pixels else ())
    ref_embeds = {region: next(embeddings) for region in ref_masks}
    results = []
    for found, kept in zip(image_regions, masks):
        embeds = {region: next(embeddings) for region in kept}
        present = by_region(found)
        results.append(FgisResult(
            {region: cosine(ref_embeds[region], embeds[region]) if region in embeds else None for region in REGION_PARTS},
            {region: MISSING_IN[region in ref_masks, region in present] for region in REGION_PARTS
             if region not in embeds}))
    return results


def report(results: list[FgisResult]) -> str:
    head = ("FGIS: mean cosine similarity of DINO ViT-S/16 embeddings of the face regions, reference vs image "
            "(the ConsistentID paper's definition as implemented here; no official code exists).")
    return "\n".join([head, *(result.line(number) for number, result in enumerate(results, start=1))])


def chart(results: list[FgisResult]) -> np.ndarray:
    return bar_chart("FGIS per region and image", [(f"image {number}", result.bars())
                                                    for number, result in enumerate(results, start=1)])
