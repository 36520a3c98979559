"""ComfyUI-ConsistentID: identity-preserving portraits from one face photo (ConsistentID, SD1.5/SDXL)."""
from .nodes import ConsistentIDExtension

WEB_DIRECTORY = "./web/js"


async def comfy_entrypoint() -> ConsistentIDExtension:
    return ConsistentIDExtension()
