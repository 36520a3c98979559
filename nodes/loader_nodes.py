"""ConsistentID checkpoint loader.

It hands on the core's :class:`ConsistentIDModel`: the checked weights, with the encoders built on
first use (``model.facial_encoder(dtype)``, ``model.projection(dtype)``); the nodes that run them
put them under the host's model management with ``managed.on_device``.
"""
import weakref

from comfy_api.latest import io

from ..consistentid_core.checkpoint import ConsistentIDModel, load_checkpoint
from . import paths
from .caches import shared_file
from .common import PackNode, node_schema
from .types import ConsistentID

_LOADED: weakref.WeakValueDictionary[tuple[str, float], ConsistentIDModel] = weakref.WeakValueDictionary()


def load_consistentid(path: str) -> ConsistentIDModel:
    """The checkpoint at ``path``, read once while in use and unchanged on disk."""
    return shared_file(_LOADED, path, lambda p: ConsistentIDModel(load_checkpoint(p)))


class ConsistentIDLoader(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDLoader",
            display_name="ConsistentID Loader",
            description="Loads a ConsistentID checkpoint (SD1.5 ConsistentID-v1.bin or SDXL ConsistentID_SDXL-v1.bin) "
                        "from models/consistentid. It checks every weight and tells SD1.5 and SDXL files apart; "
                        "nothing is run until an encoder or apply node needs it.",
            inputs=[
                paths.model_input("consistentid_name", "consistentid",
                                  "ConsistentID checkpoint in models/consistentid (.bin or .safetensors). Use the "
                                  "SD1.5 file with SD1.5 models and the SDXL file with SDXL models. A missing release file is "
                                  "flagged, with its folder and download page, when the workflow opens."),
            ],
            outputs=[ConsistentID.Output(display_name="consistentid",
                                          tooltip="For Face Encode, the Facial Encoder, Apply and Load Identity.")],
        )

    @classmethod
    def execute(cls, consistentid_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_consistentid(paths.resolve("consistentid", consistentid_name)))


NODES = [ConsistentIDLoader]
