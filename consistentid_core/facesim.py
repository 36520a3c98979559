"""FaceSim: the ArcFace cosine similarity between the reference face and the face of each generated image, the
identity metric of every face-ID paper."""
from dataclasses import dataclass

import numpy as np

from .face_id import face_embedding
from .score_chart import Bar, bar_chart
from .similarity import cosine, mean_of

NO_FACE = "no face"
NO_REFERENCE = "no ref"


@dataclass
class FaceSimResult:
    reference_has_face: bool
    has_face: list[bool]  # per generated image
    scores: list[float | None]  # per generated image; None where it or the reference has no face

    def records(self) -> list[dict]:
        """One JSON-ready row per image, numbered from 1."""
        return [{"image": number, "facesim": score, "face": face}
                for number, (score, face) in enumerate(zip(self.scores, self.has_face), start=1)]

    def text(self) -> str:
        lines = ["FaceSim: ArcFace cosine similarity to the reference face (1 = same embedding)."]
        if not self.reference_has_face:
            lines.append("No face was found in the reference photo, so no image has a score.")
        for number, (score, face) in enumerate(zip(self.scores, self.has_face), start=1):
            lines.append(f"image {number}: {score:.4f}" if score is not None
                         else f"image {number}: {'a face, but none in the reference' if face else NO_FACE}")
        mean = mean_of(self.scores)
        measured = sum(score is not None for score in self.scores)
        if mean is not None:
            lines.append(f"mean of {measured} image(s) with a score: {mean:.4f}")
        return "\n".join(lines)

    def chart(self) -> np.ndarray:
        title = "FaceSim per image" + ("" if self.reference_has_face else " (no face in the reference)")
        bars = [Bar(str(number), score, NO_REFERENCE if face else NO_FACE)
                for number, (score, face) in enumerate(zip(self.scores, self.has_face), start=1)]
        return bar_chart(title, [("", bars)])


def face_similarity(app, reference: np.ndarray, images: list[np.ndarray]) -> FaceSimResult:
    """FaceSim of each RGB ``uint8`` image against ``reference``, with an InsightFace ``FaceAnalysis`` as loaded.

    The highest-scoring face of each image is compared. Images go to InsightFace in BGR, the order its models
    expect (how FaceSim is measured, unlike the official SD1.5 face-ID input), at the detection size the app was
    prepared with. A missing face is a ``None`` score, never an error: a metric should not stop a run.
    """
    ref = face_embedding(app, reference, det_size=None, bgr_input=True).embedding
    found = [face_embedding(app, rgb, det_size=None, bgr_input=True).embedding for rgb in images]
    scores = [cosine(ref, emb) if ref is not None and emb is not None else None for emb in found]
    return FaceSimResult(ref is not None, [emb is not None for emb in found], scores)
