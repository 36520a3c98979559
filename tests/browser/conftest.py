"""Real-browser fixtures: a headless ComfyUI per frontend and Debian's Chromium driven by Playwright.

The frontends are the host's pinned one and ``dev_env.NEW_FRONTEND`` (installed by ``dev_env.py setup`` and served
with ``--front-end-root``); each page opens with the classic canvas or with Nodes 2.0 (the Vue node renderer).
Nothing is queued, so every model file is an empty placeholder under the name the examples use (their nodes'
``properties.models``); ``set_models`` removes the pack's, so one server shows both a complete install and one
without the pack's downloads.
"""
import json
import shutil
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "host"))
from comfy_host import ComfyServer  # noqa: E402
from dev_env import NEW_FRONTEND, HostNotFound, comfyui_path, frontend_root, host_python, unavailable  # noqa: E402


FRONTENDS = ["pinned", NEW_FRONTEND]
RENDERERS = {"classic": False, "nodes2": True}  # the Comfy.VueNodes.Enabled setting
REPO = Path(__file__).resolve().parents[2]
PACK_FOLDERS = {"consistentid", "face_parsing", "insightface", "dino"}
# models/<path> of every file the examples name, and the InsightFace pack (a folder of two files, not named there).
MODEL_FILES = sorted({f"{m['directory']}/{m['name']}" for path in (REPO / "example_workflows").glob("*.json")
                      for node in json.loads(path.read_text())["nodes"] for m in node["properties"].get("models", [])}
                     | {"insightface/models/buffalo_l/det_10g.onnx", "insightface/models/buffalo_l/w600k_r50.onnx"})


@pytest.fixture(scope="session")
def chromium_path():
    path = shutil.which("chromium")
    if path is None:
        unavailable("the browser tests need Debian's chromium (`python3 tests/dev_env.py setup` installs it)")
    return path


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="session", params=FRONTENDS)
def server(request, tmp_path_factory):
    try:
        path, python = comfyui_path(), str(host_python())
    except HostNotFound as err:
        pytest.fail(str(err))
    args = () if request.param == "pinned" else ("--front-end-root", str(frontend_root(request.param)))
    server = ComfyServer(path, python, tmp_path_factory.mktemp(f"comfyui-{request.param}"))
    server.frontend = request.param
    server.start(args=args)
    try:
        yield server
    finally:
        server.stop()


def set_models(server: ComfyServer, pack: bool) -> None:
    """Every model file present, or all but the pack's (``pack=False``)."""
    for name in MODEL_FILES:
        path = server.models_dir / name
        if pack or name.split("/")[0] not in PACK_FOLDERS:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.unlink(missing_ok=True)


def save_setting(server: ComfyServer, name: str, value) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/settings/{name}", method="POST",
                                     data=json.dumps(value).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
