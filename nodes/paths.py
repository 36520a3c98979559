"""Model folders of the pack, registered with ComfyUI so ``extra_model_paths.yaml`` works, and the inputs that
pick a model from them."""
import os
from collections.abc import Callable

import folder_paths
from comfy_api.latest import io

from ..consistentid_core import dino
from ..consistentid_core.checkpoint import DOWNLOAD, RELEASE_FILES
from ..consistentid_core.errors import WeightFileError

WEIGHT_EXTENSIONS = {".bin", ".safetensors", ".pth", ".pt"}
IDENTITY_FOLDER = "consistentid_identities"
# Identities sent with a job: a client uploads them through /upload/image (type input) into this subfolder of the
# server's input folder, and Load Identity offers them beside models/consistentid_identities/.
UPLOADED_IDENTITIES = IDENTITY_FOLDER

# folder name -> extensions listed in the UI for it
MODEL_FOLDERS = {
    "consistentid": WEIGHT_EXTENSIONS,
    "face_parsing": WEIGHT_EXTENSIONS,
    "insightface": {".onnx"},
    "dino": WEIGHT_EXTENSIONS,
    IDENTITY_FOLDER: {".safetensors"},
}


def register_model_folders() -> None:
    """Add our folders under ``models/`` with an extension filter.

    ``extra_model_paths.yaml`` is read before custom nodes load and creates entries
    that match every file; keep the paths it added and put our filter on them.
    """
    for name, extensions in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        paths, _ = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default not in paths:
            paths = [*paths, default]
        if name == IDENTITY_FOLDER:
            uploaded = os.path.join(folder_paths.get_input_directory(), UPLOADED_IDENTITIES)
            paths = paths if uploaded in paths else [*paths, uploaded]
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


# folder name -> (the release's files, named when missing; where to download them)
RELEASES = {
    "consistentid": ((RELEASE_FILES["sd15"], RELEASE_FILES["sdxl"]), DOWNLOAD),
    "face_parsing": (("face_parsing.pth",), DOWNLOAD),
    "dino": ((dino.RELEASE_FILE,), dino.DOWNLOAD),
}
_LISTED = 10  # files named when the selected one is not there


class ModelInput(io.Combo.Input):
    """A combo of models whose selected one is looked for when the prompt is queued, so a missing file is reported
    before anything runs, with the folder it belongs in."""

    def __init__(self, id: str, options: list[str], locate: Callable[[str], object], release_folder: str | None = None,
                 **kwargs):
        super().__init__(id, options=options, **kwargs)
        self.locate = locate  # raises WeightFileError when the selection is not there
        self.release_folder = release_folder  # a key of RELEASES

    def as_dict(self):
        if self.release_folder is None:
            return super().as_dict()
        # /object_info carries the folder and the release, so the frontend extension (web/js/missing_models.js)
        # can say where a missing file goes and where to get it before the prompt is queued.
        release, download = RELEASES[self.release_folder]
        return super().as_dict() | {"consistentid_models": {"folder": self.release_folder, "release": list(release),
                                                            "download": download}}


def model_input(id: str, folder: str, tooltip: str) -> ModelInput:
    """The files in ``folder``, and only those: the frontends take a listed file for present, so a workflow naming
    a release file the user has not downloaded shows it as missing, and its run says where the file goes."""
    options = folder_paths.get_filename_list(folder)
    return ModelInput(id, options, lambda name: resolve(folder, name), release_folder=folder, tooltip=tooltip)


def resolve(folder: str, name: str) -> str:
    """Full path of a model file, or an error naming the folders searched and where to get the file."""
    path = folder_paths.get_full_path(folder, name)
    if path is not None and os.path.isfile(path):
        return path
    folders = folder_paths.get_folder_paths(folder)
    present = folder_paths.get_filename_list(folder)
    there = (f" Files there: {', '.join(present[:_LISTED])}{' …' if len(present) > _LISTED else ''}." if present
             else " There are no model files there.")
    raise WeightFileError(f"Model file '{name}' was not found in {' or '.join(folders)}.{there}",
                          f"{_how_to_get(folder, name, folders[0])}, then press 'r' in ComfyUI to refresh the lists.")


def _how_to_get(folder: str, name: str, into: str) -> str:
    if folder == IDENTITY_FOLDER:
        return f"Select one of the files there, or save '{name}' there with ConsistentID Save Identity (or copy it there)"
    release, download = RELEASES[folder]
    if name in release:
        return f"Download {name} from {download} and put it into {into}"
    return (f"Select one of the files there, or put '{name}' into {into} (the release files "
            f"{' and '.join(release)} are at {download})")
