"""The ``comfy_server`` fixture: one real ComfyUI per test session (needs ``COMFYUI_PATH``)."""
import os
import sys
from pathlib import Path

import pytest
from comfy_host import ComfyServer, host_model_files


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    comfyui_path = os.environ.get("COMFYUI_PATH")
    if not comfyui_path:
        pytest.skip("COMFYUI_PATH is not set: host integration tests need a ComfyUI checkout")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    server = ComfyServer(Path(comfyui_path), python, tmp_path_factory.mktemp("comfyui"))
    server.prepare_models(host_model_files(python, server.comfyui_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()
