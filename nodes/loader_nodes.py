"""ConsistentID checkpoint loader.

It hands on the core's :class:`ConsistentIDModel`: the checked weights, with the encoders built on
first use (``model.facial_encoder(dtype)``, ``model.projection(dtype)``); the nodes that run them
put them under the host's model management with ``managed.on_device``.
"""
from comfy_api.latest import io

from ..consistentid_core.checkpoint import ConsistentIDModel, load_checkpoint
from . import paths
from .common import CATEGORY, errors_named, load_cached
from .types import ConsistentID

_LOADED: dict[str, tuple[float, ConsistentIDModel]] = {}  # path -> (mtime, model)


def load_consistentid(path: str) -> ConsistentIDModel:
    """The checkpoint at ``path``, read once until the file changes."""
    return load_cached(_LOADED, path, lambda p: ConsistentIDModel(load_checkpoint(p)))

class ConsistentIDLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ConsistentIDLoader",
            display_name="ConsistentID Loader",
            category=CATEGORY,
            description="Loads a ConsistentID checkpoint (SD1.5 ConsistentID-v1.bin or SDXL ConsistentID_SDXL-v1.bin) "
                        "from models/consistentid. It checks every weight and tells SD1.5 and SDXL files apart; "
                        "nothing is run until an encoder or apply node needs it.",
            inputs=[
                io.Combo.Input("consistentid_name", options=paths.model_choices("consistentid"),
                               tooltip="ConsistentID checkpoint in models/consistentid (.bin or .safetensors). "
                                       "Use the SD1.5 file with SD1.5 models and the SDXL file with SDXL models."),
            ],
            outputs=[ConsistentID.Output(display_name="consistentid")],
        )

    @classmethod
    def execute(cls, consistentid_name: str) -> io.NodeOutput:
        with errors_named("Loader"):
            path = paths.resolve("consistentid", consistentid_name, "ConsistentID-v1.bin")
            return io.NodeOutput(load_consistentid(path))


NODES = [ConsistentIDLoader]
