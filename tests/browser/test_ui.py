"""The pack as users see it in a real browser: on the host's pinned frontend and on a newer one, each with the
classic canvas and with Nodes 2.0 (the Vue node renderer)."""
import json
from pathlib import Path

import pytest
from conftest import RENDERERS, set_models
from ui import ComfyPage

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "example_workflows").glob("*.json"))
BASIC = REPO / "example_workflows" / "consistentid_sd15_basic.json"
# consistentid_sd15_basic.json: the ids of its nodes
MERGE, SAMPLER = 13, 15


@pytest.fixture(params=list(RENDERERS))
def page(request, browser, server):
    set_models(server, pack=True)
    ui = ComfyPage(browser, server, request.param)
    yield ui
    ui.close()


def _saved(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_example_loads_as_saved(page):
    for path in EXAMPLES:
        page.drop_workflow(path)
        graph, saved = page.graph(), _saved(path)
        for node in saved["nodes"]:
            shown = graph["nodes"][str(node["id"])]
            assert shown["type"] == node["type"] and shown["registered"], f"{path.name}: node {node['id']} missing"
            values = [w["value"] for name, w in shown["widgets"].items()
                      if name != "control_after_generate" or node["type"] != "KSampler"]
            expected = [v for i, v in enumerate(node.get("widgets_values", []))
                        if not (node["type"] == "KSampler" and i == 1)]  # KSampler's control_after_generate
            assert values[:len(expected)] == expected, f"{path.name}: node {node['id']} {node['type']}"
        assert sorted(map(tuple, graph["links"])) == sorted(map(tuple, saved["links"])), path.name
    assert page.errors == []


def test_sampler_edits_reach_the_merge_step(page):
    page.drop_workflow(BASIC)
    assert page.widget(MERGE, "steps")["value"] == 50

    page.type_number(SAMPLER, "steps", 20)
    page.choose(SAMPLER, "scheduler", "karras")

    assert page.widget(SAMPLER, "steps")["value"] == 20
    assert page.widget(MERGE, "steps")["value"] == 20
    assert page.widget(MERGE, "scheduler")["value"] == "karras"
    assert page.shown_label(MERGE, "steps") == "steps"  # in step: no flag
    assert page.errors == []


def test_a_merge_step_out_of_step_is_flagged_and_cleared(page):
    page.drop_workflow(BASIC)
    page.type_number(MERGE, "steps", 25)

    flag = "⚠ steps ≠ sampler (50)"
    assert page.widget(MERGE, "steps")["label"] == flag
    # Frontend 1.27's experimental Vue nodes draw a widget's name, never its label.
    shows_labels = not (page.vue and page.frontend.startswith("1.27."))
    assert page.shown_label(MERGE, "steps") == (flag if shows_labels else "steps")
    page.type_number(MERGE, "steps", 50)
    assert page.widget(MERGE, "steps")["label"] == "steps"
    assert page.shown_label(MERGE, "steps") == "steps"


@pytest.mark.parametrize("renderer", list(RENDERERS))
def test_missing_pack_files_are_named_with_folder_and_download_page_on_opening(browser, server, renderer):
    set_models(server, pack=False)
    ui = ComfyPage(browser, server, renderer)
    try:
        ui.drop_workflow(BASIC)
        shown = ui.message("ConsistentID: model files missing")
    finally:
        ui.close()
        set_models(server, pack=True)

    assert ("ConsistentID Loader: ConsistentID-v1.bin is not in models/consistentid/. Download it from "
            "https://huggingface.co/JackAILab/ConsistentID and put it there" in shown)
    assert ("ConsistentID Face Parser Loader: face_parsing.pth is not in models/face_parsing/. Download it from "
            "https://huggingface.co/JackAILab/ConsistentID and put it there" in shown)
    assert "v1-5-pruned-emaonly.safetensors is not in" not in shown  # present core files are not reported
