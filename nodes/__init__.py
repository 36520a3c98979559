"""The ComfyUI side of the pack: thin V3 nodes over ``consistentid_core``."""
from comfy_api.latest import ComfyExtension

from . import paths
from .apply_nodes import NODES as APPLY_NODES
from .encoder_nodes import NODES as ENCODER_NODES
from .face_nodes import NODES as FACE_NODES
from .identity_nodes import NODES as IDENTITY_NODES
from .insightface_nodes import NODES as INSIGHTFACE_NODES
from .loader_nodes import NODES as LOADER_NODES
from .metrics_nodes import NODES as METRICS_NODES
from .simple_node import NODES as SIMPLE_NODES


class ConsistentIDExtension(ComfyExtension):
    async def get_node_list(self):
        return [*LOADER_NODES, *INSIGHTFACE_NODES, *FACE_NODES, *IDENTITY_NODES, *ENCODER_NODES, *APPLY_NODES, *SIMPLE_NODES,
                *METRICS_NODES]


paths.register_model_folders()
