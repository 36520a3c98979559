"""Loader for the InsightFace pack that gives ConsistentID its face-ID vector."""
import glob
import logging
import os
import weakref

import folder_paths
from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, WeightFileError
from .caches import shared
from .common import PackNode, node_schema, warn
from .paths import ModelInput
from .types import InsightFace

# Packs offered even before they are installed, so a workflow that names one still opens
# and its run says where the files go. The files are what each insightface zip holds.
KNOWN_PACKS = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}
TRAINED_WITH = "buffalo_l"  # ConsistentID's face-ID vectors are this pack's ArcFace embeddings
DOWNLOADS = {"buffalo_l": "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"}
# UI name -> onnxruntime provider (DirectML's provider is not "DirectMLExecutionProvider").
PROVIDERS = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "ROCM": "ROCMExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
}

# (pack folder, provider, det_size) -> FaceAnalysis prepared for that size; one per size, since prepare() would
# change the size under every other node holding the same object.
_apps: "weakref.WeakValueDictionary[tuple[str, str, int], object]" = weakref.WeakValueDictionary()


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
    # Only the listed folders: a name sent by an API client never leads outside the model folders.
    for root, folder in candidates if pack in pack_choices() else ():
        if glob.glob(os.path.join(folder, "*.onnx")):
            return root, folder
    expected = os.path.join(folder_paths.models_dir, "insightface", "models", *pack.split("/"))
    files = " and ".join(KNOWN_PACKS.get(pack, ("its detection and recognition .onnx files",)))
    source = DOWNLOADS.get(pack, "the insightface model zoo")
    raise WeightFileError(
        f"InsightFace pack '{pack}' was not found: no .onnx files in "
        f"{' or '.join(folder for _, folder in candidates) or expected}.",
        f"Put {files} into {expected} (unzip {pack}.zip from {source} there), "
        "then run the workflow again.",
    )


def pack_input(id: str, tooltip: str) -> ModelInput:
    return ModelInput(id, pack_choices(), _find_pack, default=TRAINED_WITH, tooltip=tooltip)


def _providers(name: str) -> list[str]:
    import onnxruntime

    provider = PROVIDERS[name]  # name is one of them: the node checked its options
    if provider not in onnxruntime.get_available_providers():
        logging.warning("[ConsistentID] onnxruntime has no %s here (available: %s); InsightFace runs on CPU.",
                        provider, ", ".join(onnxruntime.get_available_providers()))
        provider = PROVIDERS["CPU"]
    # CPU last, so operators the accelerator lacks still run.
    return list(dict.fromkeys([provider, PROVIDERS["CPU"]]))


def load_insightface(pack: str, provider: str, det_size: int):
    """An ``insightface.app.FaceAnalysis`` prepared for ``det_size``, shared while in use."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError as err:
        raise ConsistentIDError(f"The insightface package cannot be imported ({err}).",
                                "Install it into ComfyUI's Python: pip install insightface onnxruntime") from err
    root, folder = _find_pack(pack)
    providers = _providers(provider)

    def load():
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
        app.prepare(ctx_id=0, det_size=(det_size, det_size))
        return app
    return shared(_apps, (folder, providers[0], det_size), load)


class ConsistentIDInsightFaceLoader(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDInsightFaceLoader",
            display_name="ConsistentID InsightFace Loader",
            description="Loads an InsightFace pack (face detector + ArcFace) from models/insightface/models/ "
                        "for the face-ID vector of ConsistentID. Its INSIGHTFACE output is the same as "
                        "IPAdapter_plus's, so either pack's loader can feed the other.",
            inputs=[
                pack_input("pack", "Folder under models/insightface/models/. ConsistentID was trained and "
                                   "released with buffalo_l (det_10g.onnx + w600k_r50.onnx); a pack with another "
                                   "recognition model (antelopev2's glintr100.onnx) runs with a warning in the log."),
                io.Combo.Input("provider", options=list(PROVIDERS), default="CPU",
                               tooltip="onnxruntime device. Falls back to CPU, with a warning in the log, "
                                       "when this onnxruntime build lacks the chosen one."),
                io.Int.Input("det_size", default=640, min=128, max=2048, step=32,
                             tooltip="Face detector input size in pixels. The official SD1.5 code uses 640, "
                                     "SDXL 512."),
            ],
            outputs=[InsightFace.Output(tooltip="For Face Encode and FaceSim (also IPAdapter_plus's FaceID nodes).")],
        )

    @classmethod
    def execute(cls, pack: str, provider: str, det_size: int) -> io.NodeOutput:
        app = load_insightface(pack, provider, det_size)
        arcface = os.path.basename(app.models["recognition"].model_file)
        trained = KNOWN_PACKS[TRAINED_WITH][1]
        if arcface != trained:
            warn(cls, f"The InsightFace pack '{pack}' recognises faces with {arcface}, not {TRAINED_WITH}'s "
                      f"{trained}: ConsistentID was trained on {TRAINED_WITH}'s ArcFace embeddings, so the "
                      "face-ID tokens will match the person less well.",
                 f"Select {TRAINED_WITH} (download: {DOWNLOADS[TRAINED_WITH]}).")
        return io.NodeOutput(app)


NODES = [ConsistentIDInsightFaceLoader]
