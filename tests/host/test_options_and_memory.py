"""On a real ComfyUI: every option the pack takes is checked by the pack when the prompt is queued, with its own
message (the node's display name, the allowed values, the fix), and the server keeps running; the loaders offer
the release files and name the folder and download page of a missing one; inside the all-in-one a message names
it and the step; a recognition model other than buffalo_l's is loaded with a warning; and after ``/free`` the
loaders read their files again, since the pack keeps no model of its own."""
import shutil

import pytest
from comfy_host import HostError
from test_workflows import ALL_IN_ONE, BASIC, HEIGHT, PHOTO, WIDTH, check_image, saved_images, tiny
from workflows import node_ids, set_inputs

pytestmark = pytest.mark.host

HUGGING_FACE = "https://huggingface.co/JackAILab/ConsistentID"

# node class, display name, input, bad value, the allowed values as the message lists them
BAD_OPTIONS = {
    "provider TPU": ("ConsistentIDInsightFaceLoader", "ConsistentID InsightFace Loader", "provider", "TPU",
                     "which is not one of its values: 'CPU', 'CUDA', 'ROCM', 'CoreML', 'DirectML', 'OpenVINO'."),
    "det_size 100": ("ConsistentIDInsightFaceLoader", "ConsistentID InsightFace Loader", "det_size", 100,
                     "it must be a whole number from 128 to 2048, a multiple of 32."),
    "on_no_face ignore": ("ConsistentIDFaceEncode", "ConsistentID Face Encode", "on_no_face", "ignore",
                          "which is not one of its values: 'error', 'zero', 'skip'."),
    "face smallest": ("ConsistentIDFaceEncode", "ConsistentID Face Encode", "face", "smallest",
                      "which is not one of its values: 'highest score', 'largest', 'index'."),
    "weight 5": ("ConsistentIDApply", "ConsistentID Apply", "weight", 5.0,
                 "it must be a number from -1.0 to 3.0."),
    "scheduler bogus": ("ConsistentIDMergeStep", "ConsistentID Merge Step", "scheduler", "bogus",
                        "which is not one of its values: 'simple', 'sgm_uniform', 'karras', 'exponential', "
                        "'ddim_uniform', 'beta', 'normal', 'linear_quadratic', 'kl_optimal'."),
    "parse_size 999": ("ConsistentIDFaceParse", "ConsistentID Face Parse", "parse_size", "999",
                       "which is not one of its values: '512', '1280'."),
    "base_model SD3": ("ConsistentIDSimple", "ConsistentID (all in one)", "base_model", "SD3",
                       "which is not one of its values: 'SD1.5', 'SDXL'."),
}


@pytest.fixture(scope="module")
def server(comfy_server, images_dir):
    shutil.copy(images_dir / PHOTO, comfy_server.input_dir / PHOTO)
    return comfy_server


def _refused(server, prompt: dict, node_type: str) -> str:
    """The message of a prompt the server refuses at ``node_type``; the server is still up afterwards."""
    # Only the image output: the host would run the Face Parse preview, which needs no other node, on its own.
    for node_id in node_ids(prompt, "PreviewImage"):
        del prompt[node_id]
    with pytest.raises(HostError) as refused:
        server.queue(prompt)
    assert refused.value.node_type == node_type, refused.value
    assert server.get("/system_stats")["system"]
    return refused.value.message


def _options(server, node_type: str, name: str) -> list:
    return server.object_info()[node_type]["input"]["required"][name][1]["options"]


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option_is_refused_when_queued(server, case):
    node_type, display_name, name, value, allowed = BAD_OPTIONS[case]
    prompt = tiny(server, ALL_IN_ONE if node_type == "ConsistentIDSimple" else BASIC)
    set_inputs(prompt, node_type, **{name: value})

    message = _refused(server, prompt, node_type)

    assert f"[ConsistentID · {display_name}] {name} is {value!r}" in message
    assert allowed in message and f"Fix: Set {name} to " in message
    assert message.count("[ConsistentID") == 1  # reported once, not once per input


def test_missing_release_file_names_its_folder_and_download_page(server):
    # Only present files are listed (the frontends take a listed file for present); the SDXL file is not generated.
    assert "ConsistentID-v1.bin" in _options(server, "ConsistentIDLoader", "consistentid_name")
    assert "ConsistentID_SDXL-v1.bin" not in _options(server, "ConsistentIDLoader", "consistentid_name")
    prompt = set_inputs(tiny(server, BASIC), "ConsistentIDLoader", consistentid_name="ConsistentID_SDXL-v1.bin")

    message = _refused(server, prompt, "ConsistentIDLoader")

    folder = server.models_dir / "consistentid"
    assert (f"[ConsistentID · ConsistentID Loader] Model file 'ConsistentID_SDXL-v1.bin' was not found in {folder}."
            in message)
    assert f"Fix: Download ConsistentID_SDXL-v1.bin from {HUGGING_FACE} and put it into {folder}" in message


def test_missing_face_parser_names_its_folder_and_download_page(server):
    folder = server.models_dir / "face_parsing"
    parked = server.base_dir / "face_parsing.pth.parked"
    shutil.move(folder / "face_parsing.pth", parked)
    try:
        assert "face_parsing.pth" not in _options(server, "ConsistentIDFaceParserLoader", "parser_name")
        message = _refused(server, tiny(server, BASIC), "ConsistentIDFaceParserLoader")
    finally:
        shutil.move(parked, folder / "face_parsing.pth")

    assert (f"[ConsistentID · ConsistentID Face Parser Loader] Model file 'face_parsing.pth' was not found in "
            f"{folder}. Files there: parsing_bisenet.pth." in message)
    assert f"Fix: Download face_parsing.pth from {HUGGING_FACE} and put it into {folder}" in message


def test_all_in_one_names_itself_and_the_step(server):
    prompt = set_inputs(tiny(server, ALL_IN_ONE), "ConsistentIDSimple", insightface_pack="buffalo_l_noface")

    message = _refused(server, prompt, "ConsistentIDSimple")

    assert "NoFaceError: [ConsistentID · ConsistentID (all in one) › Face Encode] InsightFace found no face in " \
           "image 1 of 1" in message


def test_other_recognition_model_is_loaded_with_a_warning(server):
    buffalo = server.models_dir / "insightface" / "models" / "buffalo_l"
    antelope = buffalo.parent / "antelopev2"
    antelope.mkdir()
    try:
        # antelopev2's file names around buffalo_l's graphs: insightface routes models by signature, not name.
        shutil.copy(buffalo / "det_10g.onnx", antelope / "scrfd_10g_bnkps.onnx")
        shutil.copy(buffalo / "w600k_r50.onnx", antelope / "glintr100.onnx")
        prompt = set_inputs(tiny(server, BASIC), "ConsistentIDInsightFaceLoader", pack="antelopev2", det_size=320)
        [path] = saved_images(server, prompt, server.queue(prompt))
    finally:
        shutil.rmtree(antelope)

    check_image(path, (WIDTH, HEIGHT))
    assert ("[ConsistentID · ConsistentID InsightFace Loader] The InsightFace pack 'antelopev2' recognises faces with "
            "glintr100.onnx, not buffalo_l's w600k_r50.onnx: ConsistentID was trained on buffalo_l's ArcFace "
            "embeddings" in server.log_text())


def test_free_releases_the_loaded_models(server):
    """Two loader nodes share one read of the file; after ``/free`` nothing of the pack holds it, so the next run
    reads it again (a pack cache that outlived ``/free`` would hand out the old copy without a read)."""
    prompt = tiny(server, BASIC)
    [loader] = node_ids(prompt, "ConsistentIDLoader")
    [apply] = node_ids(prompt, "ConsistentIDApply")
    prompt["95"] = {"class_type": "ConsistentIDLoader", "inputs": dict(prompt[loader]["inputs"])}
    prompt[apply]["inputs"]["consistentid"] = ["95", 0]
    reads = {name: f"[ConsistentID] Loaded {name} from " for name in ("ConsistentID-v1.bin", "face_parsing.pth")}

    def count() -> dict:
        log = server.log_text()
        return {name: log.count(line) for name, line in reads.items()}

    server.free()
    before = count()
    server.queue(prompt)
    first = count()
    server.queue(set_inputs(prompt, "KSampler", seed=7))
    cached = count()
    server.free()
    server.queue(prompt)
    after_free = count()

    assert {name: first[name] - before[name] for name in reads} == {name: 1 for name in reads}
    assert cached == first  # the host's node cache still held them
    assert {name: after_free[name] - cached[name] for name in reads} == {name: 1 for name in reads}
