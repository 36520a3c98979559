"""On a real ComfyUI: the pack loads cleanly, documents its nodes, lists its models, and the
generated host models load through the host's own loaders."""
import shutil

import pytest
from comfy_host import PACK_DIR_NAME, HostError
from PIL import Image

pytestmark = pytest.mark.host

PACK_FOLDERS = ["consistentid", "face_parsing", "insightface", "dino"]
LOADER_OF = {"consistentid": "ConsistentIDLoader", "face_parsing": "ConsistentIDFaceParserLoader",
             "insightface": "ConsistentIDInsightFaceLoader", "dino": "ConsistentIDDinoLoader"}
IMPORT_FAILURES = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint", "Skip ")


def _written(server, folder: str) -> list:
    """Paths the pack's generators wrote directly under ``models/<folder>`` (files or pack folders)."""
    root = server.models_dir / folder
    return [path for path in server.model_files.values() if root in path.parents]


def _combo_options(spec: list) -> list:
    # V1 combos are a bare list; V3 ones are ("COMBO", {"options": [...]}).
    if isinstance(spec[0], list):
        return spec[0]
    return spec[1].get("options", []) if spec[0] == "COMBO" and len(spec) > 1 else []


def test_pack_imports_without_error(comfy_server):
    log = comfy_server.log_text()
    ours = [line for line in log.splitlines() if PACK_DIR_NAME in line]
    assert not [line for line in ours if any(failure in line for failure in IMPORT_FAILURES)], comfy_server.log_tail()
    assert any("seconds:" in line for line in ours), "the pack is missing from the custom node import summary"
    # Saved identities live in a model folder of their own, so extra_model_paths.yaml can move them too.
    assert {*PACK_FOLDERS, "consistentid_identities"} <= set(comfy_server.get("/models"))


def test_pack_nodes_have_description_and_input_tooltips(comfy_server):
    missing = []
    for name, info in comfy_server.pack_nodes().items():
        if not info.get("description", "").strip():
            missing.append(f"{name}: description")
        for section in ("required", "optional"):
            for input_name, spec in info["input"].get(section, {}).items():
                if len(spec) < 2 or not str(spec[1].get("tooltip", "")).strip():
                    missing.append(f"{name}.{input_name}: tooltip")
    assert not missing


@pytest.mark.parametrize("folder", PACK_FOLDERS)
def test_model_folder_lists_generated_files_only(comfy_server, folder):
    root = comfy_server.models_dir / folder
    expected = set()
    for path in _written(comfy_server, folder):
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        expected |= {p.relative_to(root).as_posix() for p in files}
    (root / "put_models_here.txt").write_text("not a model")

    listed = set(comfy_server.get(f"/models/{folder}"))

    assert expected and expected <= listed
    assert "put_models_here.txt" not in listed


@pytest.mark.parametrize("folder", PACK_FOLDERS)
def test_loader_combo_offers_generated_files(comfy_server, folder):
    node = comfy_server.pack_nodes()[LOADER_OF[folder]]
    names = {path.name for path in _written(comfy_server, folder)}
    offered = [set(_combo_options(spec)) for spec in node["input"].get("required", {}).values()]
    assert any(names <= options for options in offered), (names, offered)


def test_prompt_errors_name_the_node(comfy_server):
    # A node that no installed pack provides is refused before anything runs. The wording is the host's (0.3.64:
    # "node NoSuchNode does not exist", 0.28.0: "Node 'NoSuchNode' not found", its title, here its class); what
    # every host tells is which node, and its id.
    with pytest.raises(HostError) as err:
        comfy_server.queue({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert "NoSuchNode" in err.value.message and "'#1'" in err.value.message
    with pytest.raises(HostError) as err:
        comfy_server.queue({
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "absent.safetensors"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
            "3": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        })
    assert (err.value.node_id, err.value.node_type) == ("1", "CheckpointLoaderSimple")
    assert "ckpt_name" in err.value.message and "absent.safetensors" in err.value.message


def test_host_models_run_through_stock_nodes(comfy_server, images_dir):
    shutil.copy(images_dir / "astronaut.png", comfy_server.input_dir / "astronaut.png")
    checkpoint = comfy_server.model_files["sd15_checkpoint"].name
    vision = comfy_server.model_files["clip_vision_h"].name
    # unCLIPConditioning is ignored by a plain SD1.5 model but makes the vision encode part of the run.
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of an astronaut", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": vision}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "astronaut.png"}},
        "7": {"class_type": "CLIPVisionEncode",
              "inputs": {"clip_vision": ["5", 0], "image": ["6", 0], "crop": "center"}},
        "8": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["2", 0], "clip_vision_output": ["7", 0],
                                                             "strength": 1.0, "noise_augmentation": 0.0}},
        "9": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["8", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 0, "steps": 1, "cfg": 7.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    }

    result = comfy_server.queue(prompt)

    [preview] = result["outputs"]["11"]["images"]
    with Image.open(comfy_server.temp_dir / preview["subfolder"] / preview["filename"]) as image:
        assert image.size == (64, 64)
    log = comfy_server.log_text()
    # What the host logs when it detects an SD1.5 checkpoint: an EPS BaseModel with the SD1 CLIP-L.
    for detected in ("model_type EPS", "Requested to load BaseModel", "Requested to load SD1ClipModel",
                     "Requested to load CLIPVisionModelProjection"):
        assert detected in log
    for complaint in ("unet missing", "unet unexpected", "clip missing", "missing clip vision",
                      "left over keys in diffusion model"):
        assert complaint not in log
