"""Model folders of the pack, registered with ComfyUI so ``extra_model_paths.yaml`` works."""
import os

import folder_paths

from ..consistentid_core.errors import WeightFileError

WEIGHT_EXTENSIONS = {".bin", ".safetensors", ".pth", ".pt"}

# folder name -> extensions listed in the UI for it
MODEL_FOLDERS = {
    "consistentid": WEIGHT_EXTENSIONS,
    "face_parsing": WEIGHT_EXTENSIONS,
    "insightface": {".onnx"},
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
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def model_choices(folder: str) -> list[str]:
    return folder_paths.get_filename_list(folder)


def resolve(folder: str, name: str, example: str) -> str:
    """Full path of a model file, or an error naming where it was expected."""
    path = folder_paths.get_full_path(folder, name) if name else None
    if path is None or not os.path.isfile(path):
        where = " or ".join(folder_paths.get_folder_paths(folder))
        raise WeightFileError(
            f"Model file '{name or '(none selected)'}' was not found in {where}.",
            f"Put the file (for example '{example}') into {os.path.join(folder_paths.models_dir, folder)} "
            "and press 'r' in ComfyUI to refresh the list.",
        )
    return path
