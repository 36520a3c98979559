"""On a real ComfyUI: the node texts and help pages the frontend shows are those of the nodes (see
``node_pages.py``), served where the frontend fetches them, and the search aliases reach the node search where the
host has them."""
import importlib.util
import urllib.error
import urllib.request

import node_pages
import pytest
from comfy_host import PACK_DIR_NAME
from dev_env import FLOOR, REPO

pytestmark = pytest.mark.host
REGENERATE = "out of date: regenerate them with `python tests/host/node_pages.py` (see its docstring)"


def _search_aliases() -> dict:
    # nodes/search_aliases.py is plain data; loaded by path, since the nodes package needs a host to import.
    spec = importlib.util.spec_from_file_location("search_aliases", REPO / "nodes" / "search_aliases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SEARCH_ALIASES


def _fetch(server, path: str) -> tuple[int, str, str]:
    """Status, content type and text of a GET, as the frontend's fetch sees them."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=60) as reply:
            return reply.status, reply.headers.get("Content-Type", ""), reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), ""


def test_locale_and_help_pages_are_those_of_the_nodes(comfy_server):
    expected = node_pages.expected_files(comfy_server.pack_nodes())
    stored = {path: path.read_text() for path in [node_pages.NODE_DEFS, *node_pages.HELP_DIR.glob("*.md")]}
    assert set(stored) == set(expected), f"the help pages are {REGENERATE}"
    for path, text in expected.items():
        assert stored[path] == text, f"{path.relative_to(REPO)} is {REGENERATE}"


def test_frontend_reads_the_node_texts_from_i18n(comfy_server):
    served = comfy_server.get("/i18n")["en"]["nodeDefs"]
    defs = node_pages.node_defs(comfy_server.pack_nodes())
    assert {node_id: served.get(node_id) for node_id in defs} == defs
    assert served["ConsistentIDApply"]["display_name"] == "ConsistentID Apply"


def test_help_page_is_served_where_the_help_panel_fetches_it(comfy_server):
    # The frontend takes the folder from python_module "custom_nodes.<folder>", tries the locale's page first and
    # falls back to docs/<node id>.md; ComfyUI 0.3.64's frontend (1.27) checks only the status, so the locale
    # page must be a plain 404 there, not an HTML page.
    nodes = comfy_server.pack_nodes()
    assert {info["python_module"] for info in nodes.values()} == {f"custom_nodes.{PACK_DIR_NAME}"}
    for node_id in nodes:
        status, _, _ = _fetch(comfy_server, f"/extensions/{PACK_DIR_NAME}/docs/{node_id}/en.md")
        assert status == 404, node_id
        status, kind, text = _fetch(comfy_server, f"/extensions/{PACK_DIR_NAME}/docs/{node_id}.md")
        assert status == 200 and "text/html" not in kind, (node_id, status, kind)
        assert text == (node_pages.HELP_DIR / f"{node_id}.md").read_text()
        assert text.startswith(f"# {nodes[node_id]['display_name']}\n")
        assert "\n## Inputs\n" in text and "\n## Outputs\n" in text and "\n## Example\n" in text


def test_search_aliases_reach_the_node_search_where_the_host_has_them(comfy_server):
    nodes = comfy_server.pack_nodes()
    aliases = _search_aliases()
    assert set(aliases) <= set(nodes)
    if comfy_server.version() == FLOOR:
        # The floor's schema has no search_aliases: the pack loads without them (every other test runs on it).
        assert all("search_aliases" not in info for info in nodes.values())
    else:
        assert {node_id: info["search_aliases"] for node_id, info in nodes.items() if info["search_aliases"]} == aliases
        assert "face id" in nodes["ConsistentIDSimple"]["search_aliases"]
