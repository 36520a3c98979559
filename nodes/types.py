"""Socket types the pack adds to ComfyUI, and what their values must be."""
from comfy_api.latest import io

from ..consistentid_core.checkpoint import ConsistentIDModel
from ..consistentid_core.dino import DinoViT
from ..consistentid_core.identity import Identity as IdentityValue
from ..consistentid_core.parsing import BiSeNet
from ..consistentid_core.regions import FaceRegions as FaceRegionsValue, RegionFeatures

ConsistentID = io.Custom("CONSISTENTID")
FaceParser = io.Custom("FACE_PARSER")
FaceRegions = io.Custom("FACE_REGIONS")
RegionEmbeds = io.Custom("CONSISTENTID_REGION_EMBEDS")
Identity = io.Custom("CONSISTENTID_IDENTITY")
# Same name and object (insightface.app.FaceAnalysis) as IPAdapter_plus, so either pack's loader feeds the other.
InsightFace = io.Custom("INSIGHTFACE")
Dino = io.Custom("DINO_VIT")


def _list_of(kind: type):
    return lambda value: isinstance(value, list) and bool(value) and all(isinstance(v, kind) for v in value)


# socket type -> (what its values are, as a noun; a test of one value)
VALUE_CHECKS = {
    "CONSISTENTID": ("a ConsistentID model", lambda value: isinstance(value, ConsistentIDModel)),
    "FACE_PARSER": ("a face parser", lambda value: isinstance(value, BiSeNet)),
    "FACE_REGIONS": ("face regions", _list_of(FaceRegionsValue)),
    "CONSISTENTID_REGION_EMBEDS": ("region embeddings", _list_of(RegionFeatures)),
    "CONSISTENTID_IDENTITY": ("an identity", lambda value: isinstance(value, IdentityValue)),
    # IPAdapter_plus's loader gives the same FaceAnalysis; insightface itself is imported only when one is loaded.
    "INSIGHTFACE": ("an InsightFace model", lambda value: callable(getattr(value, "get", None))
                    and hasattr(value, "models")),
    "DINO_VIT": ("a DINO model", lambda value: isinstance(value, DinoViT)),
}
