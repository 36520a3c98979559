"""Loader for the InsightFace pack that gives ConsistentID its face-ID vector."""
import glob
import logging
import os

import folder_paths
from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, WeightFileError
from .common import CATEGORY, errors_named
from .types import InsightFace

NODE = "ConsistentIDInsightFaceLoader"
# Packs offered even before they are installed, so a workflow that names one still opens
# and its run says where the files go. The files are what each insightface zip holds.
KNOWN_PACKS = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
# UI name -> onnxruntime provider (DirectML's provider is not "DirectMLExecutionProvider").
PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
}

_apps = {}  # (root, pack, provider) -> FaceAnalysis


def pack_choices() -> list[str]:
    """Folders under ``insightface/models/`` that hold ``.onnx`` files, known packs first.

    A nested folder (``antelopev2/antelopev2``, as some zips unpack) is listed under its full path.
    """
    found = set()
    for name in folder_paths.get_filename_list("insightface"):
        parts = name.replace("\\", "/").split("/")
        if len(parts) >= 3 and parts[0] == "models":
            found.add("/".join(parts[1:-1]))
    return [*KNOWN_PACKS, *sorted(found - set(KNOWN_PACKS))]


def _find_pack(pack: str) -> tuple[str, str]:
    """``(insightface root, pack folder)`` of the first root that holds the pack's models."""
    candidates = [(root, os.path.join(root, "models", *pack.split("/")))
                  for root in folder_paths.get_folder_paths("insightface")]
    for root, folder in candidates:
        if glob.glob(os.path.join(folder, "*.onnx")):
            return root, folder
    expected = os.path.join(folder_paths.models_dir, "insightface", "models", *pack.split("/"))
    files = " and ".join(KNOWN_PACKS.get(pack, ("its detection and recognition .onnx files",)))
    raise WeightFileError(
        f"InsightFace pack '{pack}' was not found: no .onnx files in "
        f"{' or '.join(folder for _, folder in candidates) or expected}.",
        f"Put {files} into {expected} (unzip {pack}.zip from the insightface model zoo there), "
        "then run the workflow again.",
    )


def _providers(name: str) -> list[str]:
    import onnxruntime

    provider = PROVIDERS[name]
    if provider not in onnxruntime.get_available_providers():
        logging.warning("[ConsistentID] onnxruntime has no %s here (available: %s); InsightFace runs on CPU.",
                        provider, ", ".join(onnxruntime.get_available_providers()))
        provider = PROVIDERS["CPU"]
    # CPU last, so operators the accelerator lacks still run.
    return list(dict.fromkeys([provider, PROVIDERS["CPU"]]))


def load_insightface(pack: str, provider: str, det_size: int):
    """A prepared ``insightface.app.FaceAnalysis``, cached per pack folder and provider."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError as err:
        raise ConsistentIDError(f"The insightface package cannot be imported ({err}).",
                                "Install it into ComfyUI's Python: pip install insightface onnxruntime") from err
    root, folder = _find_pack(pack)
    providers = _providers(provider)
    key = (root, pack, providers[0])
    if key not in _apps:
        # The absolute folder as name: insightface then never tries to download the pack.
        # Only detection and recognition are used; buffalo_l's landmark and gender/age models
        # (and antelopev2's) would only cost load time and a pass per face.
        try:
            app = FaceAnalysis(name=folder, root=root, providers=providers,
                               allowed_modules=["detection", "recognition"])
        except AssertionError as err:
            raise WeightFileError(f"No face detection model was recognised in {folder}.",
                                  f"Replace the folder with the original {pack} pack files.") from err
        if "recognition" not in app.models:
            raise WeightFileError(f"No face recognition (ArcFace) model was recognised in {folder}.",
                                  f"Replace the folder with the original {pack} pack files.")
        _apps[key] = app
    app = _apps[key]
    app.prepare(ctx_id=0, det_size=(det_size, det_size))
    return app


class ConsistentIDInsightFaceLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE,
            display_name="ConsistentID InsightFace Loader",
            category=CATEGORY,
            description="Loads an InsightFace pack (face detector + ArcFace) from models/insightface/models/ "
                        "for the face-ID vector of ConsistentID. Its INSIGHTFACE output is the same as "
                        "IPAdapter_plus's, so either pack's loader can feed the other.",
            inputs=[
                io.Combo.Input("pack", options=pack_choices(), default="buffalo_l",
                               tooltip="Folder under models/insightface/models/. ConsistentID was trained and "
                                       "released with buffalo_l (det_10g.onnx + w600k_r50.onnx)."),
                io.Combo.Input("provider", options=list(PROVIDERS), default="CPU",
                               tooltip="onnxruntime device. Falls back to CPU, with a warning in the log, "
                                       "when this onnxruntime build lacks the chosen one."),
                io.Int.Input("det_size", default=640, min=128, max=2048, step=32,
                             tooltip="Face detector input size in pixels. The official SD1.5 code uses 640, "
                                     "SDXL 512."),
            ],
            outputs=[InsightFace.Output()],
        )

    @classmethod
    def execute(cls, pack: str, provider: str, det_size: int) -> io.NodeOutput:
        with errors_named(NODE):
            return io.NodeOutput(load_insightface(pack, provider, det_size))


NODES = [ConsistentIDInsightFaceLoader]
