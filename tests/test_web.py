"""The frontend extension in web/js: its pure logic under Node's test runner, every file parseable."""
import importlib.util
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from dev_env import unavailable

ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = ROOT / "web" / "js"
NODE = shutil.which("node")
# Node loads web/js's ES modules (no package.json) by syntax detection, on by default since 20.19.
MIN_NODE = (20, 19)


def _node_version() -> tuple[int, ...]:
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(part) for part in re.findall(r"\d+", out)[:2])


@pytest.fixture
def node():
    if NODE is None or _node_version() < MIN_NODE:
        unavailable("the web extension's tests need Node.js 20.19 or newer on PATH")
    return NODE


def test_web_directory_is_the_one_comfyui_serves():
    spec = importlib.util.spec_from_file_location("pack_init", ROOT / "__init__.py")
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    assert (ROOT / pack.WEB_DIRECTORY).resolve() == WEB_DIR
    assert (WEB_DIR / "consistentid.js").is_file()


def test_web_directory_is_registered_once():
    # ComfyUI serves pyproject's [tool.comfy] web as well as WEB_DIRECTORY, under two names; with both,
    # every script loads twice and the second registerExtension fails in the browser console.
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert "web" not in comfy, "remove `web` from [tool.comfy]: __init__.py's WEB_DIRECTORY registers web/js"


@pytest.mark.parametrize("script", sorted(WEB_DIR.glob("*.js")), ids=lambda p: p.name)
def test_web_script_parses(node, script):
    done = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_web_merge_sync_logic_under_node_test(node):
    tests = sorted(str(p) for p in (ROOT / "tests" / "web").glob("*.test.mjs"))
    assert tests
    done = subprocess.run([node, "--test", *tests], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^# fail 0$", done.stdout, re.M) and not re.search(r"^# pass 0$", done.stdout, re.M)

