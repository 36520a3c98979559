"""Fixtures shared by the test modules: golden data, photos and generated model files."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from dev_env import unavailable  # noqa: E402


def _shared_dir() -> Path:
    return Path(os.environ.get("CONSISTENTID_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = Path(os.environ.get("CONSISTENTID_GOLDEN", _shared_dir() / "golden"))
    if not path.is_dir():
        unavailable(f"golden directory {path} is absent (set CONSISTENTID_GOLDEN)")
    return path


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    path = _shared_dir() / "spec"
    if not path.is_dir():
        unavailable(f"spec directory {path} is absent (set CONSISTENTID_SHARED)")
    return path


@pytest.fixture(scope="session")
def images_dir() -> Path:
    return REPO / "tests" / "data"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style models/ folder that the generator fixtures below fill."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def face_parser_files(models_dir):
    from weightgen.bisenet import write_face_parsers

    return write_face_parsers(models_dir)


@pytest.fixture(scope="session")
def consistentid_unit_files(models_dir):
    from weightgen.consistentid import write_checkpoints

    return write_checkpoints(models_dir, size="unit")


@pytest.fixture(scope="session")
def insightface_packs(models_dir):
    from weightgen.insightface_pack import write_packs

    return write_packs(models_dir)


@pytest.fixture(scope="session")
def clip_tokenizer():
    """The standard CLIP BPE of SD1.x (no ComfyUI checkout needed), as the prompt code sees it."""
    from clip_vocab import build_clip_tokenizer
    from consistentid_core.tokenizer import HFClipBPE

    return HFClipBPE(build_clip_tokenizer())
