"""FaceSim and FGIS on a real ComfyUI with the generated models, and the headless client against it.

The second portrait is written as PNG into the server's input folder, so the server and the independent FGIS
computation here decode the same pixels (two JPEG decoders may differ by a level).
"""
import csv
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from comfy_host import REPO
from dino_reference import fgis as reference_fgis
from PIL import Image
from workflows import load_api

from consistentid_core.parsing import load_face_parser, parse_labels
from consistentid_core.regions import face_regions
from consistentid_core.score_chart import BAR_COLOUR, MISSING_COLOUR

pytestmark = pytest.mark.host

ASTRONAUT, GRACE = "astronaut.png", "grace_hopper.png"
CLIENT = REPO / "client" / "consistentid_client.py"
BASIC = "consistentid_sd15_basic"


@pytest.fixture(scope="module")
def server(comfy_server, images_dir):
    shutil.copy(images_dir / ASTRONAUT, comfy_server.input_dir / ASTRONAUT)
    Image.open(images_dir / "grace_hopper.jpg").convert("RGB").save(comfy_server.input_dir / GRACE)
    return comfy_server


def _photo(server, name: str) -> np.ndarray:
    return np.array(Image.open(server.input_dir / name).convert("RGB"))


def _node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _chart(server, output: dict) -> np.ndarray:
    [image] = output["images"]
    with Image.open(server.image_file(image)) as chart:
        return np.asarray(chart.convert("RGB"))


def _has(chart: np.ndarray, colour) -> bool:
    return bool((chart == np.array(colour, np.uint8)).all(axis=2).any())


def _facesim_prompt(pack: str) -> dict:
    return {
        "1": _node("ConsistentIDInsightFaceLoader", pack=pack, provider="CPU", det_size=640),
        "2": _node("LoadImage", image=ASTRONAUT),
        "3": _node("LoadImage", image=GRACE),
        "4": _node("ConsistentIDFaceSim", insightface=["1", 0], reference=["2", 0], images=["2", 0]),
        "5": _node("ConsistentIDFaceSim", insightface=["1", 0], reference=["2", 0], images=["3", 0]),
    }


def test_facesim_of_a_photo_against_itself_and_another_portrait(server):
    outputs = server.queue(_facesim_prompt("buffalo_l"))["outputs"]

    [itself], [other] = outputs["4"]["facesim"], outputs["5"]["facesim"]
    print(f"FaceSim astronaut/astronaut {itself['facesim']!r}, astronaut/grace_hopper {other['facesim']!r}")
    assert itself["face"] and other["face"]
    assert itself["facesim"] == pytest.approx(1.0, abs=1e-4)
    assert -1.0 <= other["facesim"] < itself["facesim"] - 1e-3
    assert f"image 1: {other['facesim']:.4f}" in outputs["5"]["text"][0]
    chart = _chart(server, outputs["5"])
    assert _has(chart, BAR_COLOUR) and not _has(chart, MISSING_COLOUR)


def test_image_without_a_face_is_flagged_not_an_error(server):
    entry = server.queue(_facesim_prompt("buffalo_l_noface"))

    assert entry["status"]["status_str"] == "success"
    for node in ("4", "5"):
        assert entry["outputs"][node]["facesim"] == [{"image": 1, "facesim": None, "face": False}]
        assert "image 1: no face" in entry["outputs"][node]["text"][0]
        assert _has(_chart(server, entry["outputs"][node]), MISSING_COLOUR)


def test_fgis_of_two_portraits_equals_an_independent_computation(server):
    prompt = {
        "1": _node("ConsistentIDDinoLoader", dino_name="dino_deitsmall16_pretrain.pth"),
        "2": _node("ConsistentIDFaceParserLoader", parser_name="face_parsing.pth"),
        "3": _node("LoadImage", image=ASTRONAUT),
        "4": _node("LoadImage", image=GRACE),
        "5": _node("ConsistentIDFaceParse", face_parser=["2", 0], image=["3", 0], parse_size="512"),
        "6": _node("ConsistentIDFaceParse", face_parser=["2", 0], image=["4", 0], parse_size="512"),
        "7": _node("ConsistentIDFGIS", dino=["1", 0], reference=["3", 0], reference_regions=["5", 0],
                   images=["4", 0], image_regions=["6", 0]),
    }
    output = server.queue(prompt)["outputs"]["7"]
    [record] = output["fgis"]

    parser = load_face_parser(str(server.model_files["face_parsing_official"]))
    astronaut, grace = _photo(server, ASTRONAUT), _photo(server, GRACE)
    ref, gen = (face_regions(parse_labels(parser, rgb, 512)).masks for rgb in (astronaut, grace))
    state = torch.load(server.model_files["dino_vits16"], weights_only=True)
    scores, mean = reference_fgis(state, astronaut, ref, grace, gen)
    print(f"FGIS astronaut/grace_hopper {record['fgis']!r}, regions {record['regions']}")

    assert len(scores) >= 3
    assert {k: v for k, v in record["regions"].items() if v is not None} == pytest.approx(scores, abs=1e-4)
    assert record["fgis"] == pytest.approx(mean, abs=1e-4)
    assert set(record["missing"]) == set(record["regions"]) - set(scores)
    assert f"FGIS {record['fgis']:.4f}" in output["text"][0]
    assert _has(_chart(server, output), BAR_COLOUR)


@pytest.mark.parametrize("name", [BASIC, "consistentid_sdxl_basic"])
def test_client_workflows_are_the_basic_examples(name):
    assert json.loads((CLIENT.parent / f"{name}.json").read_text()) == load_api(name)


def _job_workflow():
    sys.path.insert(0, str(CLIENT.parent))
    import job_workflow

    return job_workflow


def test_client_sets_the_options_and_adds_facesim():
    settings = {"prompt": "A woman", "seed": 7, "steps": 10, "width": 64, "weight": 0.8, "negative": None}
    prompt, save, facesim = _job_workflow().build_prompt(load_api(BASIC), {"photo": "me.png"}, settings)

    by_type = {node["class_type"]: node["inputs"] for node in prompt.values()}
    assert by_type["LoadImage"]["image"] == "me.png" and by_type["KSampler"]["seed"] == 7
    assert (by_type["KSampler"]["steps"], by_type["KSampler"]["cfg"]) == (10, 5.0)
    # The official 30 of 50 steps, scaled to the 10 asked for.
    merge = by_type["ConsistentIDMergeStep"]
    assert (merge["steps"], merge["merge_step"]) == (10, 6)
    assert (by_type["EmptyLatentImage"]["width"], by_type["EmptyLatentImage"]["height"]) == (64, 768)
    assert by_type["ConsistentIDApply"]["weight"] == 0.8 and by_type["ConsistentIDFacialEncoder"]["prompt"] == "A woman"
    assert prompt[save]["class_type"] == "SaveImage"
    assert prompt[facesim]["inputs"] == {"insightface": ["5", 0], "reference": ["6", 0], "images": ["16", 0]}
    assert "PreviewImage" not in by_type  # only what the image and its score need is queued


def test_client_reads_an_identity_file_instead_of_encoding_the_photo():
    prompt, _, facesim = _job_workflow().build_prompt(load_api(BASIC), {"file": "anna_1.safetensors"}, {})

    by_type = {node["class_type"]: (node_id, node["inputs"]) for node_id, node in prompt.items()}
    load, inputs = by_type["ConsistentIDLoadIdentity"]
    assert inputs == {"consistentid": ["2", 0], "identity_name": "anna_1.safetensors"}
    assert by_type["ConsistentIDApply"][1]["identity"] == [load, 0]
    assert by_type["ConsistentIDFacialEncoder"][1]["identity"] == [load, 0]
    assert facesim is None and not {"ConsistentIDFaceEncode", "LoadImage", "ConsistentIDFaceParse"} & set(by_type)


def test_client_saves_an_image_and_a_facesim_per_seed(server, tmp_path):
    seeds = [11, 12, 13]
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(server.input_dir / ASTRONAUT), "--prompt", "A man, in a forest",
         "--seeds", *map(str, seeds), "--url", f"http://127.0.0.1:{server.port}", "--out", str(out),
         "--steps", "2", "--merge-step", "0", "--width", "64", "--height", "96",
         "--checkpoint", server.model_files["sd15_checkpoint"].name],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]

    # Progress: every node that ran is named, and the sampler's steps are counted.
    assert "seed 11 (1/3): KSampler 2/2" in done.stderr and "seed 13 (3/3): FaceSim" in done.stderr
    images = sorted(out.glob("seed_*.png"))
    assert [path.name for path in images] == [f"seed_{seed}.png" for seed in seeds]
    pixels = []
    for path in images:
        with Image.open(path) as image:
            assert image.size == (64, 96)
            pixels.append(np.asarray(image.convert("RGB"), np.float32))
    assert not np.array_equal(pixels[0], pixels[1])  # different seeds, different images
    with open(out / "facesim.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["seed"]) for row in rows] == seeds
    scores = [float(row["facesim"]) for row in rows]
    assert all(math.isfinite(s) and -1.0 <= s <= 1.0 for s in scores) and len(set(scores)) == len(seeds)
    table = json.loads((out / "facesim.json").read_text())
    assert [(row["seed"], row["image"], row["face"]) for row in table] == [
        (seed, f"seed_{seed}.png", True) for seed in seeds]
    assert [row["facesim"] for row in table] == pytest.approx(scores, abs=1e-12)
    for seed, score in zip(seeds, scores):
        assert f"seed {seed}: FaceSim {score:.4f}" in done.stdout
