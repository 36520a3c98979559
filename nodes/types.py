"""Socket types the pack adds to ComfyUI."""
from comfy_api.latest import io

ConsistentID = io.Custom("CONSISTENTID")
FaceParser = io.Custom("FACE_PARSER")
FaceRegions = io.Custom("FACE_REGIONS")
RegionEmbeds = io.Custom("CONSISTENTID_REGION_EMBEDS")
Identity = io.Custom("CONSISTENTID_IDENTITY")
# Same name and object (insightface.app.FaceAnalysis) as IPAdapter_plus, so either pack's loader feeds the other.
InsightFace = io.Custom("INSIGHTFACE")
Dino = io.Custom("DINO_VIT")
