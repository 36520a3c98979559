"""The identity value: encode reference photos once, save and load it, blend two."""
import hashlib
import json
import os

import cv2
import numpy as np
import torch

import comfy.utils
import folder_paths
from comfy_api.latest import io, ui

from ..consistentid_core.errors import ConsistentIDError
from ..consistentid_core.face_id import FACE_CHOICES, ON_NO_FACE, face_ids, left_to_right, photos_used
from ..consistentid_core.identity import COMBINE, AdapterRef, blend, check_adapter, encode_identity, image_sha256
from ..consistentid_core.identity_file import load_identity, save_identity
from ..consistentid_core.images import check_same_photos, images_from_batch
from ..consistentid_core.regions import clip_pixels
from ..consistentid_core.tensor_files import tensors_sha256
from .clip_vision import encode_penultimate, zero_image_features
from .common import PackNode, node_schema
from .managed import compute_dtype, on_device
from . import host, paths
from .paths import IDENTITY_FOLDER, ModelInput
from .types import ConsistentID, Identity, InsightFace, RegionEmbeds

_file_hashes: dict[tuple[str, float], str] = {}  # (path, mtime) -> sha256 of an InsightFace model file


def _file_sha256(path: str) -> str:
    key = (path, os.path.getmtime(path))
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            # In chunks, not hashlib.file_digest: that needs Python 3.11, and the pack runs on 3.10.
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def _source(clip_vision, insightface, photos, region_embeds, **settings) -> dict[str, str]:
    """What produced an identity, as the strings a file's metadata holds."""
    recognition = insightface.models["recognition"].model_file
    patch = host.patch_embedding(clip_vision)
    return {
        # Of the first layer only, as float32: enough to tell CLIP models apart, cheap, and the same whichever
        # dtype the host loaded it in from a float32 file.
        "clip_vision_sha256": tensors_sha256({"patch_embedding": patch.float()}),
        "insightface": os.path.basename(os.path.dirname(recognition)),
        "insightface_recognition": os.path.basename(recognition),
        "insightface_recognition_sha256": _file_sha256(recognition),
        "det_size": json.dumps(list(getattr(insightface, "det_size", []) or [])),
        "images_sha256": ",".join(image_sha256(rgb) for rgb in photos),
        "photo_regions": json.dumps([regions.names for regions in region_embeds]),
        **{key: str(value) for key, value in settings.items()},
    }


def _preview(rgb: np.ndarray, result) -> np.ndarray:
    """The photo with every detected face boxed and numbered from the left (as face_index counts), the face
    used in green."""
    out = rgb.copy()
    if result.boxes is None:
        return out
    thickness = max(1, min(out.shape[:2]) // 200)
    for number, i in enumerate(left_to_right(result.boxes)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in result.boxes[i])
        colour = (0, 220, 0) if i == result.index else (220, 40, 40)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness * (2 if i == result.index else 1))
        cv2.putText(out, str(number), (x1 + thickness, max(y1 - 3 * thickness, 10 * thickness)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thickness, colour, thickness)
    return out


class ConsistentIDFaceEncode(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDFaceEncode",
            display_name="ConsistentID Face Encode",
            description="Turns the reference photo(s) into one IDENTITY: the face-ID tokens (InsightFace ArcFace + "
                        "CLIP-H of the whole photo through the adapter's projection) and the region features of "
                        "ConsistentID Region Embed, combined over the photos. Everything that looks at the face runs "
                        "here, once per photo; Apply, the Facial Encoder, Save and Blend take the identity. The "
                        "node shows which face of each photo was used.",
            inputs=[
                ConsistentID.Input("consistentid",
                                   tooltip="From ConsistentID Loader, the adapter the identity is for."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP-ViT-H-14-laion2B-s32B-b79K from Load CLIP Vision."),
                InsightFace.Input("insightface", tooltip="From ConsistentID InsightFace Loader (or IPAdapter's "
                                                         "InsightFace loader): buffalo_l."),
                io.Image.Input("image", tooltip="The reference photo(s) of one person; a batch of several photos "
                                                "makes one identity."),
                RegionEmbeds.Input("region_embeds", tooltip="From ConsistentID Region Embed, of the same photo(s)."),
                io.Combo.Input("face", options=list(FACE_CHOICES), default="highest score",
                               tooltip="Which face to use when a photo holds several: the highest detector score "
                                       "(official), the largest, or the one at face_index."),
                io.Int.Input("face_index", default=0, min=0, max=63,
                             tooltip="With face 'index': the face to use, counted from the left from 0 (the preview "
                                     "numbers the faces)."),
                io.Combo.Input("combine", options=list(COMBINE), default="average",
                               tooltip="Several photos: average their face-ID tokens into one set (default), or "
                                       "concatenate them so the model attends to every photo's tokens together. "
                                       "Region features are averaged per region over the photos that show it."),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), default="error",
                               tooltip="When InsightFace finds no face in a photo: stop with an error, use the "
                                       "official zero face embedding (zero), or leave that photo out of the face-ID "
                                       "tokens (skip; with no face at all only the adapter's LoRA applies)."),
            ],
            outputs=[Identity.Output(display_name="identity", tooltip="For Apply, the Facial Encoder and Save Identity."),
                     io.Image.Output(display_name="preview", tooltip="The faces found, the one used in green.")],
        )

    @classmethod
    def execute(cls, consistentid, clip_vision, insightface, image, region_embeds, face, face_index, combine,
                on_no_face) -> io.NodeOutput:
        photos = images_from_batch(image)
        check_same_photos(len(photos), len(region_embeds), "the region embeds")
        sdxl = consistentid.weights.arch == "sdxl"
        bar = comfy.utils.ProgressBar(len(photos) + 1)
        results = face_ids(insightface, photos, on_no_face, det_size=None, bgr_input=sdxl, choose=face,
                           index=face_index, done=lambda: bar.update(1))
        used = photos_used(results, on_no_face)
        zero = zero_image_features(clip_vision)
        hidden = (encode_penultimate(clip_vision, torch.stack([clip_pixels(photos[i]) for i in used]))
                  if used else zero.new_zeros(0, *zero.shape))
        projection = on_device(consistentid.projection(compute_dtype()))
        source = _source(clip_vision, insightface, photos, region_embeds, face=face,
                         face_index=face_index, combine=combine, on_no_face=on_no_face, bgr_input=sdxl)
        adapter = AdapterRef(consistentid.weights.arch, consistentid.weights.name, consistentid.projection_sha256())
        identity = encode_identity(projection, [results[i] for i in used], hidden, zero, region_embeds, combine,
                                   shortcut=sdxl, adapter=adapter, source=source)
        bar.update(1)
        preview = torch.from_numpy(np.stack([_preview(rgb, r) for rgb, r in zip(photos, results)])).float() / 255
        return io.NodeOutput(identity, preview, ui=ui.PreviewImage(preview, cls=cls))


def _identity_path(name: str) -> str:
    return paths.resolve(IDENTITY_FOLDER, name)


_MAX_PREFIX = 200  # characters: file systems allow 255 per name, and the counter and extension follow
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def _prefix_problem(prefix: str) -> str | None:
    """Why Save Identity's prefix would write a hidden, odd or unportable file (beyond the host's own rule that
    it stays inside the folder), or ``None``."""
    if len(prefix) > _MAX_PREFIX:
        return f"it is {len(prefix)} characters long, more than {_MAX_PREFIX}"
    if any(not c.isprintable() or c in '<>:"|?*\\' for c in prefix):
        return "it holds a control character (a line break, NUL, …) or one of < > : \" | ? * \\"
    parts = prefix.split("/")
    if any(part.strip() in ("", ".", "..") or part.startswith((".", "~")) for part in parts):
        return "a part of it is empty or starts with '.' or '~', which would write a hidden or misplaced file"
    if any(part.split(".")[0].strip().lower() in _RESERVED for part in parts):
        return "a part of it is a name Windows reserves (CON, NUL, COM1, …)"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# The mode of files ComfyUI writes (0644 under the usual umask): safetensors writes identity files 0600.
_FILE_MODE = 0o666 & ~_umask()


class ConsistentIDSaveIdentity(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDSaveIdentity",
            display_name="ConsistentID Save Identity",
            description="Saves an identity as a .safetensors file (tensors and metadata only: format version, base "
                        "model, model names and hashes, the photos' hashes and settings) into "
                        "models/consistentid_identities/, for ConsistentID Load Identity on this or any machine.",
            is_output_node=True,
            inputs=[
                Identity.Input("identity", tooltip="From ConsistentID Face Encode, Load Identity or Blend Identities."),
                io.String.Input("filename_prefix", default="person",
                                tooltip="File name, optionally with subfolders (e.g. 'family/anna'); a counter is "
                                        "added as with saved images."),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, identity, filename_prefix) -> io.NodeOutput:
        problem = _prefix_problem(filename_prefix)
        if problem is not None:
            raise ConsistentIDError(f"filename_prefix {filename_prefix[:60]!r} cannot be used: {problem}.",
                                    "Use a name inside the identities folder, e.g. 'person' or 'family/anna'.")
        folder = folder_paths.get_folder_paths(IDENTITY_FOLDER)[0]
        try:
            full_folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder)
        except Exception as err:  # the host raises a bare Exception for a prefix leading outside the folder
            raise ConsistentIDError(f"filename_prefix '{filename_prefix}' cannot be used ({err}).",
                                    "Use a name inside the identities folder, e.g. 'person' or "
                                    "'family/anna'.") from err
        os.makedirs(full_folder, exist_ok=True)
        file = f"{name}_{counter:05}_.safetensors"
        save_identity(identity, os.path.join(full_folder, file))
        os.chmod(os.path.join(full_folder, file), _FILE_MODE)
        saved = os.path.join(subfolder, file) if subfolder else file
        return io.NodeOutput(ui=ui.PreviewText(f"Saved {saved} in {folder}"))


class ConsistentIDLoadIdentity(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDLoadIdentity",
            display_name="ConsistentID Load Identity",
            description="Loads an identity saved by ConsistentID Save Identity from models/consistentid_identities/ "
                        "(or a folder added in extra_model_paths.yaml), checked against the ConsistentID adapter in "
                        "use. Only identity files are read; anything else is refused unopened.",
            inputs=[
                ConsistentID.Input("consistentid", tooltip="From ConsistentID Loader: the identity must have been "
                                                           "encoded with this adapter."),
                ModelInput("identity_name", folder_paths.get_filename_list(IDENTITY_FOLDER), _identity_path,
                           tooltip="An identity file in models/consistentid_identities/, or one sent with the job "
                                   "(uploaded into the input folder's consistentid_identities/)."),
            ],
            outputs=[Identity.Output(display_name="identity", tooltip="For Apply and the Facial Encoder.")],
        )

    @classmethod
    def execute(cls, consistentid, identity_name) -> io.NodeOutput:
        identity = load_identity(_identity_path(identity_name))
        check_adapter(identity, consistentid.weights.arch, consistentid.projection_sha256(),
                      consistentid.weights.name)
        return io.NodeOutput(identity)

    @classmethod
    def fingerprint_inputs(cls, identity_name, **_):
        # A file saved again under the same name is read again.
        path = folder_paths.get_full_path(IDENTITY_FOLDER, identity_name)
        return os.path.getmtime(path) if path else identity_name


class ConsistentIDBlendIdentities(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDBlendIdentities",
            display_name="ConsistentID Blend Identities",
            description="Mixes two identities: weight·A + (1 − weight)·B of the face-ID tokens and of each facial "
                        "region's features (a region only one of them has keeps its features). Weight 1 gives A "
                        "exactly, 0 gives B.",
            inputs=[
                Identity.Input("identity_a", tooltip="The first identity."),
                Identity.Input("identity_b", tooltip="The second identity, from the same ConsistentID adapter."),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of identity A (0.7 = 70 % A, 30 % B)."),
            ],
            outputs=[Identity.Output(display_name="identity", tooltip="The blend, for Apply and the Facial Encoder.")],
        )

    @classmethod
    def execute(cls, identity_a, identity_b, weight) -> io.NodeOutput:
        return io.NodeOutput(blend(identity_a, identity_b, weight))


NODES = [ConsistentIDFaceEncode, ConsistentIDSaveIdentity, ConsistentIDLoadIdentity, ConsistentIDBlendIdentities]
