"""The ``comfy_server`` fixture: one real ComfyUI per test session, found by ``tests/dev_env.py``."""
import pytest
from comfy_host import ComfyServer, host_model_files
from dev_env import HostNotFound, comfyui_path, host_python


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    try:
        path, python = comfyui_path(), str(host_python())
    except HostNotFound as err:
        pytest.fail(str(err))
    server = ComfyServer(path, python, tmp_path_factory.mktemp("comfyui"))
    server.prepare_models(host_model_files(python, server.comfyui_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()
