"""The face-ID vector: InsightFace ArcFace embedding of the reference face, as the official code takes it.

Official SD1.5 behaviour (docs/method.md §2.4, quirk §8.9): ``app.get(np.array(pil_rgb_image))`` with
det_size 640. InsightFace expects BGR, so the released model was used with the red and
blue channels swapped for both detection and ArcFace; ``bgr_input=False`` (the default)
reproduces that by passing our RGB array unchanged, ``bgr_input=True`` gives InsightFace
the channel order it expects (as the SDXL script and the training data did). The face
kept is ``faces[0]``, the highest detector score; no face gives the zero vector.
"""
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputImageError, NoFaceError

EMBED_DIM = 512
ON_NO_FACE = ("error", "zero", "skip")
DEFAULT_DET_SIZE = (640, 640)  # SD1.5 (SDXL used 512)


FACE_CHOICES = ("highest score", "largest", "index")


@dataclass
class FaceIDResult:
    embedding: np.ndarray | None  # float32 [512], unit norm; None when no face was found
    num_faces: int
    bbox: np.ndarray | None  # x1, y1, x2, y2 in image pixels
    score: float | None
    index: int | None = None  # position of the kept face in the detector's list
    boxes: np.ndarray | None = None  # [num_faces, 4] every detected face, the detector's order


def _prepare(app, det_size: tuple[int, int] | None) -> None:
    """Re-prepare the detector only for a new size; ``None`` keeps the size the app was prepared with.

    ``FaceAnalysis`` does not remember its ``ctx_id``; ``ctx_id >= 0`` leaves the
    providers chosen at load time alone, and the app's detection threshold is kept.
    """
    current = getattr(app, "det_size", None)
    if det_size is None:
        if current is not None:
            return
        det_size = DEFAULT_DET_SIZE
    if current is None or tuple(current) != tuple(det_size):
        app.prepare(ctx_id=0, det_thresh=getattr(app, "det_thresh", 0.5), det_size=tuple(det_size))


def left_to_right(boxes) -> list[int]:
    """Positions of the detected faces (boxes ``x1, y1, x2, y2`` in the detector's order) from the left of the
    picture: the one numbering of faces that face_index, the log and the preview use (from 0)."""
    return sorted(range(len(boxes)), key=lambda i: float(boxes[i][0]))


def face_number(result: FaceIDResult) -> int:
    """The face used, numbered from the left from 0 (as :func:`left_to_right`)."""
    return left_to_right(result.boxes).index(result.index)


def _chosen(faces: list, choose: str, index: int) -> int:
    """Position in ``faces`` of the face to use: the highest detector score (the official ``faces[0]``), the
    largest box, or the ``index``-th face counted from the left of the picture."""
    if choose == "largest":
        return max(range(len(faces)), key=lambda i: float(np.prod(faces[i].bbox[2:] - faces[i].bbox[:2])))
    if choose == "index":
        if index >= len(faces):
            raise InputImageError(
                f"face_index {index} asks for face {index + 1} from the left, but only {len(faces)} "
                f"face(s) were found.",
                f"Set face_index to 0..{len(faces) - 1} (0 is the leftmost face; the preview numbers them).")
        return left_to_right([face.bbox for face in faces])[index]
    return max(range(len(faces)), key=lambda i: float(faces[i].det_score))


def face_embedding(app, rgb: np.ndarray, det_size: tuple[int, int] | None = DEFAULT_DET_SIZE,
                   bgr_input: bool = False, choose: str = "highest score", index: int = 0) -> FaceIDResult:
    """Embed one face of an RGB ``uint8 [H, W, 3]`` image with a ``FaceAnalysis`` app: by default the
    highest-scoring one, as the official code; ``choose`` and ``index`` as in :func:`_chosen`.

    ``det_size=None`` keeps the detection size the app was prepared with (e.g. by a loader node).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputImageError(
            f"The face-ID image must be RGB uint8 [H, W, 3], got {rgb.dtype} {list(rgb.shape)}.",
            "Convert it with consistentid_core.images.to_rgb_uint8 first.",
        )
    if choose not in FACE_CHOICES:
        raise ValueError(f"choose must be one of {FACE_CHOICES}, got {choose!r}")
    _prepare(app, det_size)
    faces = app.get(np.ascontiguousarray(rgb[..., ::-1]) if bgr_input else rgb)
    if not faces:
        return FaceIDResult(None, 0, None, None)
    kept = _chosen(faces, choose, index)
    best = faces[kept]
    return FaceIDResult(np.asarray(best.normed_embedding, dtype=np.float32), len(faces),
                        np.asarray(best.bbox, dtype=np.float32), float(best.det_score), kept,
                        np.stack([np.asarray(face.bbox, dtype=np.float32) for face in faces]))


def face_ids(app, images: list[np.ndarray], on_no_face: str = "error",
             det_size: tuple[int, int] | None = DEFAULT_DET_SIZE, bgr_input: bool = False,
             choose: str = "highest score", index: int = 0,
             done: Callable[[], None] | None = None) -> list[FaceIDResult]:
    """The face of each image (:func:`face_embedding`), logging which one when there are several; ``done`` is
    called after each image (a progress bar).

    ``on_no_face``: ``"error"`` raises :class:`NoFaceError` naming the image; ``"zero"`` (the official
    behaviour: the zero vector, see :func:`id_vectors`) and ``"skip"`` (the caller leaves the image out) log it.
    """
    if on_no_face not in ON_NO_FACE:
        raise ValueError(f"on_no_face must be one of {ON_NO_FACE}, got {on_no_face!r}")
    total = len(images)
    results = []
    for number, image in enumerate(images, start=1):
        result = face_embedding(app, image, det_size, bgr_input, choose, index)
        where = f"image {number} of {total}"
        if result.embedding is None:
            if on_no_face == "error":
                raise NoFaceError(
                    f"InsightFace found no face in {where} (detection size {tuple(app.det_size)}).",
                    "Use a clear, well-lit frontal photo of one face, or set on_no_face to 'zero' to use "
                    "the zero ID vector as the official code does.",
                )
            logging.warning("[ConsistentID] No face found in %s; %s.", where,
                            "using the zero ID vector" if on_no_face == "zero" else "its face-ID tokens are left out")
        elif result.num_faces > 1:
            box = ", ".join(f"{v:.0f}" for v in result.bbox)
            why = {"highest score": f"the highest detector score ({result.score:.3f})", "largest": "the largest",
                   "index": "as face_index asks"}[choose]
            logging.warning("[ConsistentID] %s: %d faces found; using face %d (numbered from the left from 0, as "
                            "face_index and the preview count), %s, box x1,y1,x2,y2 = %s.",
                            where, result.num_faces, face_number(result), why, box)
        results.append(result)
        if done is not None:
            done()
    return results


def photos_used(results: list[FaceIDResult], on_no_face: str) -> list[int]:
    """Which photos enter the identity: every one with a face, and under 'zero' (the official behaviour) also those
    without, as the zero vector; under 'skip' a photo without face is left out ('error' stopped in face_ids)."""
    return [i for i, result in enumerate(results) if result.embedding is not None or on_no_face == "zero"]


def id_vectors(results: list[FaceIDResult]) -> torch.Tensor:
    """Face-ID vectors ``[B, 512]`` float32, the zero vector where no face was found (as the official code)."""
    rows = [r.embedding if r.embedding is not None else np.zeros(EMBED_DIM, dtype=np.float32) for r in results]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, EMBED_DIM)
