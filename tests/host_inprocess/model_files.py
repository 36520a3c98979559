"""The ``models`` fixture: generated model files in folders registered with the in-process host."""

import pytest


@pytest.fixture(scope="module")
def models(host, pack, tmp_path_factory):
    """The unit-size files of every loader, in folders added as ``extra_model_paths.yaml`` would add them, and an
    ``antelopev2`` pack (buffalo_l's graphs under antelopev2's names: insightface routes models by signature)."""
    import folder_paths
    from weightgen import bisenet, consistentid, insightface_pack

    root = tmp_path_factory.mktemp("models")
    consistentid.write_checkpoints(root, size="unit")
    bisenet.write_face_parsers(root)
    insightface_pack.write_packs(root)
    insightface_pack.write_pack(root, "antelopev2", files=insightface_pack.ANTELOPEV2_FILES)
    pack.load("nodes.paths").register_model_folders()
    added = {name: str(root / name) for name in ("consistentid", "face_parsing", "insightface")}
    for name, path in added.items():
        folder_paths.add_model_folder_path(name, path, is_default=True)
    yield root
    for name, path in added.items():
        folder_paths.folder_names_and_paths[name][0].remove(path)
