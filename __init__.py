"""ComfyUI-ConsistentID: identity-preserving portraits from one face photo (ConsistentID, SD1.5/SDXL)."""

WEB_DIRECTORY = "./web/js"


async def comfy_entrypoint():
    # Imported here, not at module level, so the pack's folder stays importable
    # without a ComfyUI host (pytest imports it as the rootdir package).
    from .nodes import ConsistentIDExtension

    return ConsistentIDExtension()
