"""The example workflows on a real ComfyUI, queued through ``/prompt`` as the frontend would.

The graphs are the files of ``example_workflows/`` as the running host's frontend queues them, with the
generated random-weight models and a public-domain photo substituted, and cut down for a CPU: 64x96 px, 2 steps
and merge step 0, so step 0 samples with the text-only prompt and step 1 with the facial one. The images are
noise. What a prompt reuses is up to the classic node cache, which the server runs on every host
(``tests/host_facts.py``): the outputs of the previous prompt's nodes, for those whose inputs are unchanged.

With ``CONSISTENTID_HOST_REPORT_DIR`` set, the basic workflow's per-node times (``node_times.json``), one
generated image and one FaceParse preview are copied there.
"""
import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import workflows
from comfy_host import PACK_DIR_NAME, HostError, cached_nodes, executed_nodes, node_seconds
from dev_env import FLOOR
from PIL import Image
from safetensors.torch import load_file
from workflows import load_api, node_ids, set_inputs

pytestmark = pytest.mark.host

WIDTH, HEIGHT, STEPS, MERGE_STEP = 64, 96, 2, 0
PHOTO = "astronaut.png"
INPAINT_TARGET = "inpaint_target.png"
BASIC, INPAINT, CONTROLNET, ALL_IN_ONE, EDIT_ONE_REGION, TWO_PEOPLE = (
    f"consistentid_sd15_{name}" for name in ("basic", "inpaint", "controlnet", "all_in_one", "edit_one_region",
                                             "two_people"))
PERSON_B = "grace_hopper.jpg"
# Nodes that analyse the reference face: none may run again when only the seed or the prompt changes.
FACE_ANALYSIS = ["CLIPVisionLoader", "ConsistentIDFaceParserLoader", "ConsistentIDInsightFaceLoader",
                 "ConsistentIDFaceParse", "ConsistentIDRegionEmbed", "ConsistentIDFaceEncode", "ConsistentIDApply"]


def _report_dir() -> Path | None:
    path = os.environ.get("CONSISTENTID_HOST_REPORT_DIR")
    if not path:
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def _ids(prompt: dict, *selectors: str) -> set[str]:
    return {node_id for selector in selectors for node_id in node_ids(prompt, selector)}


@pytest.fixture(scope="module")
def server(comfy_server, images_dir):
    for name in (PHOTO, PERSON_B):
        shutil.copy(images_dir / name, comfy_server.input_dir / name)
    # LoadImage's mask is 1 - alpha: the transparent rectangle is the area to inpaint.
    target = Image.open(images_dir / PHOTO).convert("RGBA").resize((WIDTH, HEIGHT))
    alpha = np.full((HEIGHT, WIDTH), 255, np.uint8)
    alpha[16:64, 16:48] = 0
    target.putalpha(Image.fromarray(alpha))
    target.save(comfy_server.input_dir / INPAINT_TARGET)
    return comfy_server


def tiny(server, name: str, ui_dir: Path = workflows.UI_DIR) -> dict:
    """An example as saved, queued by this host's frontend, with the generated models, the test photos and CPU
    sizes."""
    ui = json.loads((ui_dir / f"{name}.json").read_text())
    prompt = workflows.ui_to_api(ui, server.object_info())
    for node in prompt.values():
        values = {"ckpt_name": server.model_files["sd15_checkpoint"].name,
                  "control_net_name": server.model_files["controlnet_sd15"].name,
                  "steps": STEPS, "merge_step": MERGE_STEP}
        if node["class_type"] == "LoadImage":
            values["image"] = PHOTO
        if node["class_type"] == "EmptyLatentImage":
            values.update(width=WIDTH, height=HEIGHT)
        node["inputs"].update({key: value for key, value in values.items() if key in node["inputs"]})
    if node_ids(prompt, "Image to inpaint"):
        set_inputs(prompt, "Image to inpaint", image=INPAINT_TARGET)
    if node_ids(prompt, "Person B"):
        set_inputs(prompt, "Person B", image=PERSON_B)
    return prompt


def saved_images(server, prompt: dict, entry: dict) -> list[Path]:
    [save] = node_ids(prompt, "SaveImage")
    return [server.image_file(image) for image in entry["outputs"][save]["images"]]


def check_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as image:
        assert (image.size, image.mode) == (size, "RGB")
        pixels = np.asarray(image, dtype=np.float32)
    # A NaN decode saves as one flat colour; noise from random weights does not.
    assert np.isfinite(pixels).all() and pixels.std() > 0
    return pixels


@pytest.fixture(scope="module")
def basic_run(server):
    """The basic example from a cold start (models unloaded, node cache empty): (prompt, history entry)."""
    server.free()
    prompt = tiny(server, BASIC)
    return prompt, server.queue(prompt)


def test_examples_use_the_official_defaults():
    stems = {path.stem for path in workflows.UI_DIR.glob("*.json")}
    assert stems == set(workflows.DEFINITIONS)
    assert stems == {path.stem for path in workflows.API_DIR.glob("*.json")}
    assert all((workflows.UI_DIR / f"{stem}.jpg").is_file() for stem in stems)
    assert {"consistentid_sdxl_basic", "consistentid_sdxl_all_in_one"} <= stems
    for stem in stems:
        prompt = load_api(stem)
        sdxl = "_sdxl_" in stem
        # The official scripts: SD1.5 512x768 CFG 5, face parsing at 512, detection at 640; SDXL 864x1152 CFG 7.5,
        # 1280, 512; both 50 Euler steps with the merge after step 30.
        size, cfg, parse_size, det_size = ((864, 1152), 7.5, "1280", 512) if sdxl else ((512, 768), 5.0, "512", 640)
        [sampler] = (prompt[i]["inputs"] for i in node_ids(prompt, "KSampler"))
        assert {key: sampler[key] for key in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
            "seed": 2024, "steps": 50, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
        # Two people stand side by side: the one example in landscape.
        size = workflows.TWO_PEOPLE_SIZE if stem == TWO_PEOPLE else size
        for node_id in node_ids(prompt, "EmptyLatentImage"):
            assert (prompt[node_id]["inputs"]["width"], prompt[node_id]["inputs"]["height"]) == size
        [merge] = (prompt[i]["inputs"] for i in _ids(prompt, "ConsistentIDMergeStep", "ConsistentIDSimple"))
        assert (merge["merge_step"], merge["steps"], merge["scheduler"]) == (30, 50, "normal")
        for node_id in node_ids(prompt, "ConsistentIDFaceParse"):
            assert prompt[node_id]["inputs"]["parse_size"] == parse_size
        for node_id in node_ids(prompt, "ConsistentIDInsightFaceLoader"):
            assert prompt[node_id]["inputs"]["det_size"] == det_size
        for node_id in _ids(prompt, "ConsistentIDLoader", "ConsistentIDSimple"):
            assert prompt[node_id]["inputs"]["consistentid_name"] == (
                "ConsistentID_SDXL-v1.bin" if sdxl else "ConsistentID-v1.bin")
        texts = [prompt[i]["inputs"] for i in _ids(prompt, "ConsistentIDFacialEncoder", "ConsistentIDSimple")]
        prompts = list(workflows.TWO_PEOPLE_PROMPTS) if stem == TWO_PEOPLE else [workflows.PROMPT]
        assert sorted(text["prompt"] for text in texts) == prompts
        assert all(text["negative_prompt"] == workflows.NEGATIVE for text in texts)
        assert all(text["prompt"].startswith("cinematic photo,") for text in texts)


def test_example_files_match_their_definitions(server):
    object_info = server.object_info()
    floor = workflows.floor_interfaces(object_info)
    regenerate = "out of date: regenerate them with `python tests/host/workflows.py` (see its docstring)"
    stored = json.loads(workflows.FLOOR_STOCK_NODES.read_text())
    assert stored["comfyui_version"] == FLOOR
    if server.version() == FLOOR:  # the stored copy of its stock nodes is the floor's own
        assert stored["nodes"] == workflows.stock_interfaces(object_info), f"the stored copy is {regenerate}"
    for name, graph in workflows.DEFINITIONS.items():
        ui = json.loads((workflows.UI_DIR / f"{name}.json").read_text())
        api = load_api(name)
        assert ui == workflows.to_ui(graph, floor), f"example_workflows/{name}.json is {regenerate}"
        assert api == workflows.to_api(graph, floor), f"example_workflows/api/{name}.json is {regenerate}"
        # What the floor's frontend queues for the UI file is exactly the API twin; what this host's queues for
        # the file as saved is the definition on this host's nodes (its names for untitled nodes included).
        assert workflows.ui_to_api(ui, floor) == api
        assert workflows.ui_to_api(ui, object_info) == workflows.to_api(graph, object_info)
    templates = server.get("/workflow_templates")
    assert sorted(templates[PACK_DIR_NAME]) == sorted(workflows.DEFINITIONS)
    served = server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{BASIC}.json")
    assert served == json.loads((workflows.UI_DIR / f"{BASIC}.json").read_text())


def test_a_widget_added_since_the_floor_takes_its_default(server):
    # A newer host may give a stock node another widget; the frontend sets a saved node's widgets by position,
    # so the file's values keep their widgets and the new one its default.
    newer = copy.deepcopy(server.object_info())
    newer["KSampler"]["input"]["optional"] = {"added": ["FLOAT", {"default": 0.25}]}
    newer["KSampler"]["input_order"]["optional"] = ["added"]
    [sampler] = node_ids(load_api(BASIC), "KSampler")
    queued = workflows.ui_to_api(json.loads((workflows.UI_DIR / f"{BASIC}.json").read_text()), newer)
    assert queued[sampler]["inputs"] == {**load_api(BASIC)[sampler]["inputs"], "added": 0.25}


def test_basic_workflow_saves_an_image(server, basic_run):
    prompt, entry = basic_run
    [path] = saved_images(server, prompt, entry)
    assert path.parent == server.output_dir
    check_image(path, (WIDTH, HEIGHT))
    if _report_dir():
        shutil.copy(path, _report_dir() / "generated_basic.png")


def test_face_parse_runs_and_saves_its_preview(server, basic_run, images_dir):
    prompt, entry = basic_run
    ran = executed_nodes(entry["events"])
    assert _ids(prompt, "LoadImage", "ConsistentIDFaceParse", "ConsistentIDRegionEmbed") <= set(ran)
    [preview_node] = node_ids(prompt, "Face parts")
    [preview] = entry["outputs"][preview_node]["images"]
    path = server.image_file(preview)
    assert path.parent == server.temp_dir
    with Image.open(images_dir / PHOTO) as photo:
        check_image(path, photo.size)
    if _report_dir():
        shutil.copy(path, _report_dir() / "preview_astronaut.png")


def test_node_times_of_the_basic_workflow(basic_run):
    prompt, entry = basic_run
    seconds = node_seconds(entry["events"])
    # The run started cold, so every node ran and has a time.
    assert not cached_nodes(entry) and set(seconds) == set(prompt)
    stamps = {event: data["timestamp"] for event, data in entry["status"]["messages"]}
    total = (stamps["execution_success"] - stamps["execution_start"]) / 1000
    assert sum(seconds.values()) <= total + 1.0
    if _report_dir():
        times = {node_id: {"class_type": prompt[node_id]["class_type"], "title": prompt[node_id]["_meta"]["title"],
                           "seconds": seconds[node_id]} for node_id in sorted(seconds, key=seconds.get, reverse=True)}
        report = {"workflow": BASIC, "size": [WIDTH, HEIGHT], "steps": STEPS, "merge_step": MERGE_STEP,
                  "device": "cpu", "total_seconds": total, "nodes": times}
        (_report_dir() / "node_times.json").write_text(json.dumps(report, indent=2) + "\n")


def test_new_seed_or_prompt_reuses_the_face_analysis(server, basic_run):
    prompt = copy.deepcopy(basic_run[0])
    server.queue(prompt)  # whatever ran before, the cache now holds this graph
    face = _ids(prompt, *FACE_ANALYSIS)

    new_seed = server.queue(set_inputs(prompt, "KSampler", seed=1))
    new_prompt = server.queue(set_inputs(prompt, "ConsistentIDFacialEncoder", prompt="A woman, on a beach"))

    assert set(executed_nodes(new_seed["events"])) == _ids(prompt, "KSampler", "VAEDecode", "SaveImage")
    assert set(executed_nodes(new_prompt["events"])) == _ids(
        prompt, "ConsistentIDFacialEncoder", "ConsistentIDMergeStep", "KSampler", "VAEDecode", "SaveImage")
    assert face <= set(cached_nodes(new_seed)) and face <= set(cached_nodes(new_prompt))


def test_latent_batch_of_two(server):
    prompt = set_inputs(tiny(server, BASIC), "EmptyLatentImage", batch_size=2)
    paths = saved_images(server, prompt, server.queue(prompt))
    assert len(paths) == 2
    first, second = (check_image(path, (WIDTH, HEIGHT)) for path in paths)
    # Each latent of the batch gets its own noise: two pictures, not one twice.
    assert np.abs(first - second).mean() > 1.0


def test_inpaint_workflow_changes_only_the_masked_area(server):
    """The inpaint example's mask is the transparent rectangle of its target (pixels 16:64 × 16:48, latent cells
    2:8 × 2:6): two seeds give latents that differ inside it and are the same away from it (to float rounding:
    the host blends sampled and original latent with the resized mask, which is 0 there)."""
    latents = []
    for seed in (1, 2):
        prompt = set_inputs(tiny(server, INPAINT), "KSampler", seed=seed)
        [sampler] = node_ids(prompt, "KSampler")
        prompt["latent"] = {"class_type": "SaveLatent",
                            "inputs": {"samples": [sampler, 0], "filename_prefix": f"latents/inpaint_{seed}"}}
        entry = server.queue(prompt)
        [path] = saved_images(server, prompt, entry)
        check_image(path, (WIDTH, HEIGHT))  # the inpainted picture's own size
        [saved] = entry["outputs"]["latent"]["latents"]
        latents.append(load_file(server.image_file({"type": "output", **saved}))["latent_tensor"])
    first, second = latents
    assert first.shape == (1, 4, HEIGHT // 8, WIDTH // 8)
    assert (first[..., 3:7, 3:5] - second[..., 3:7, 3:5]).abs().mean() > 0.1
    for outside in (np.s_[..., 10:, :], np.s_[..., :, 7:]):
        torch.testing.assert_close(first[outside], second[outside], rtol=0, atol=1e-5)


def test_controlnet_workflow(server):
    prompt = tiny(server, CONTROLNET)
    entry = server.queue(prompt)
    [path] = saved_images(server, prompt, entry)
    check_image(path, (WIDTH, HEIGHT))
    assert _ids(prompt, "ControlNetLoader", "ControlNetApplyAdvanced") <= set(executed_nodes(entry["events"]))
    log = server.log_text()
    assert "missing controlnet keys" not in log and "could not detect control model" not in log


def test_all_in_one_runs_and_keeps_its_face_analysis(server):
    prompt = tiny(server, ALL_IN_ONE)
    [simple] = node_ids(prompt, "ConsistentIDSimple")
    first = server.queue(prompt)
    check_image(saved_images(server, prompt, first)[0], (WIDTH, HEIGHT))

    second = server.queue(set_inputs(prompt, "ConsistentIDSimple", prompt="A woman, on a beach"))

    # The node expands into 9 granular nodes (ids "<its id>.…"), which all run: the classic cache holds only the
    # previous prompt's nodes, and these are new. With a new prompt it expands again and only FacialEncoder and
    # Merge Step, the two that read the prompt, run again.
    expanded = [[node for node in executed_nodes(run["events"]) if node.startswith(f"{simple}.")]
                for run in (first, second)]
    assert len(expanded[0]) == 9 and len(expanded[1]) == 2 and set(expanded[1]) < set(expanded[0])
    assert simple in executed_nodes(second["events"])


def test_a_workflow_saved_with_the_old_merge_node_runs_as_saved_and_as_the_new_one(server):
    """``legacy_sd15_basic.json`` is the basic example as saved before ConsistentID Merge Step: its predecessor,
    Merge Step Scheduler, takes Apply's MODEL and feeds the KSampler's. It still runs, and makes the same image."""
    old = tiny(server, "legacy_sd15_basic", Path(__file__).parent)
    assert node_ids(old, "ConsistentIDMergeStepScheduler") and not node_ids(old, "ConsistentIDMergeStep")
    new = tiny(server, BASIC)
    [old_image], [new_image] = (saved_images(server, prompt, server.queue(prompt)) for prompt in (old, new))
    assert np.array_equal(check_image(old_image, (WIDTH, HEIGHT)), check_image(new_image, (WIDTH, HEIGHT)))


def test_edit_one_region_workflow(server):
    prompt = tiny(server, EDIT_ONE_REGION)
    [encoder] = (prompt[i]["inputs"] for i in node_ids(prompt, "ConsistentIDFacialEncoder"))
    assert (encoder["mouth"], encoder["eyes"], encoder["face"], encoder["ears"], encoder["nose"]) == (
        0.0, 1.3, 1.0, 1.0, 1.0)
    [edited] = saved_images(server, prompt, server.queue(prompt))
    official = set_inputs(copy.deepcopy(prompt), "ConsistentIDFacialEncoder", mouth=1.0, eyes=1.0)
    [plain] = saved_images(server, official, server.queue(official))
    # The region weights reach the picture: the same seed with the official weights gives another one.
    assert np.abs(check_image(edited, (WIDTH, HEIGHT)) - check_image(plain, (WIDTH, HEIGHT))).mean() > 0.1


def test_two_people_workflow(server):
    prompt = tiny(server, TWO_PEOPLE)
    entry = server.queue(prompt)
    [path] = saved_images(server, prompt, entry)
    check_image(path, (WIDTH, HEIGHT))
    # Two identities, two masked Applies, four masked conditionings; person A's identity may come from the cache.
    used = _ids(prompt, "ConsistentIDApply", "ConsistentIDFaceEncode", "ConditioningSetMask")
    assert len(used) == 8 and used <= set(executed_nodes(entry["events"])) | set(cached_nodes(entry))
    assert _ids(prompt, "ConsistentIDApply", "ConditioningSetMask") <= set(executed_nodes(entry["events"]))


# Last: its other InsightFace pack would make the examples above re-run ConsistentIDFaceEncode.
def test_no_face_names_the_node_and_the_image(server):
    prompt = set_inputs(tiny(server, BASIC), "ConsistentIDInsightFaceLoader", pack="buffalo_l_noface")
    with pytest.raises(HostError) as err:
        server.queue(prompt)
    assert (err.value.node_id, err.value.node_type) == (node_ids(prompt, "ConsistentIDFaceEncode")[0],
                                                        "ConsistentIDFaceEncode")
    assert "[ConsistentID · ConsistentID Face Encode]" in err.value.message
    assert "found no face in image 1 of 1" in err.value.message and "on_no_face" in err.value.message

    set_inputs(prompt, "ConsistentIDFaceEncode", on_no_face="zero")
    [path] = saved_images(server, prompt, server.queue(prompt))
    check_image(path, (WIDTH, HEIGHT))
    assert "No face found in image 1 of 1; using the zero ID vector" in server.log_text()


def test_missing_insightface_pack_names_the_folder_and_files(server):
    # antelopev2 is always offered in the list; the loader refuses the missing pack when the prompt is queued.
    prompt = set_inputs(tiny(server, BASIC), "ConsistentIDInsightFaceLoader", pack="antelopev2")
    # Without the Face Parse preview, which needs no InsightFace and would run on its own.
    del prompt[node_ids(prompt, "Face parts")[0]]
    with pytest.raises(HostError) as err:
        server.queue(prompt)
    assert err.value.node_type == "ConsistentIDInsightFaceLoader"
    message = err.value.message
    assert "InsightFace pack 'antelopev2' was not found" in message
    assert str(server.models_dir / "insightface" / "models" / "antelopev2") in message
    assert "scrfd_10g_bnkps.onnx and glintr100.onnx" in message

