"""What an API client can send that the browser never would, on a real ComfyUI: each bad input gets the pack's
message naming the node, a schedule the merge step was not placed for still uses the facial prompt and warns, and a
run of mixed good and bad prompts leaves the server working. (Every input of every node sent wrong, and changed
identity files, are in ``tests/host_inprocess/test_input_checks.py`` and ``tests/test_identity.py``.)"""
import copy
import shutil

import numpy as np
import pytest
from comfy_host import HostError
from test_workflows import BASIC, HEIGHT, PHOTO, WIDTH, check_image, saved_images, tiny
from workflows import node_ids, set_inputs

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def server(comfy_server, images_dir):
    shutil.copy(images_dir / PHOTO, comfy_server.input_dir / PHOTO)
    return comfy_server


def _basic(server, **changes) -> dict:
    prompt = tiny(server, BASIC)
    for node_id in node_ids(prompt, "PreviewImage"):
        del prompt[node_id]
    for selector, values in changes.items():
        [node_id] = node_ids(prompt, selector)
        prompt[node_id]["inputs"].update(values)
    return prompt


def _with_save_identity(prompt: dict, prefix: str) -> dict:
    [encode] = node_ids(prompt, "ConsistentIDFaceEncode")
    prompt["save"] = {"class_type": "ConsistentIDSaveIdentity",
                      "inputs": {"identity": [encode, 0], "filename_prefix": prefix}}
    return prompt


# What an API client sends, the node that refuses it, and the start of the pack's message there.
API_INPUTS = {
    "a number as Apply's mask": ({"ConsistentIDApply": {"mask": 5}}, "ConsistentIDApply",
                                 "[ConsistentID · ConsistentID Apply] mask is the number 5, not a mask"),
    "NaN weight": ({"ConsistentIDApply": {"weight": float("nan")}}, "ConsistentIDApply",
                   "[ConsistentID · ConsistentID Apply] weight is nan; it must be a number from -1.0 to 3.0"),
    "a text as face_index": ({"ConsistentIDFaceEncode": {"face_index": "first"}}, "ConsistentIDFaceEncode",
                             "[ConsistentID · ConsistentID Face Encode] face_index is 'first'; it must be a whole"),
    "a text where a link belongs": ({"ConsistentIDMergeStep": {"facial": "a facial prompt"}}, "ConsistentIDMergeStep",
                                    "[ConsistentID · ConsistentID Merge Step] facial is the text 'a facial prompt', "
                                    "not a conditioning"),
    "merge_step = steps - 1": ({"ConsistentIDMergeStep": {"merge_step": 1, "steps": 2}}, "ConsistentIDMergeStep",
                               "[ConsistentID · ConsistentID Merge Step] merge_step 1 leaves no step of a 2-step run "
                               "for the facial prompt"),
}


@pytest.mark.parametrize("case", API_INPUTS)
def test_an_api_only_input_gets_the_packs_message(server, case):
    changes, node_type, expected = API_INPUTS[case]
    with pytest.raises(HostError) as refused:
        server.queue(_basic(server, **changes))
    assert refused.value.node_type == node_type and expected in refused.value.message, refused.value
    assert refused.value.message.count("[ConsistentID") == 1


@pytest.mark.parametrize("prefix", ["..", "", "anna\nbob", "x" * 300])
def test_a_save_prefix_comfyui_would_take_is_refused_by_the_pack(server, prefix):
    folder = server.models_dir / "consistentid_identities"
    before = sorted(folder.rglob("*"))
    with pytest.raises(HostError) as refused:
        server.queue(_with_save_identity(_basic(server), prefix))
    assert refused.value.node_type == "ConsistentIDSaveIdentity"
    assert "[ConsistentID · ConsistentID Save Identity] filename_prefix " in refused.value.message
    assert sorted(folder.rglob("*")) == before


def test_a_run_of_other_steps_than_the_merge_step_was_placed_for_uses_the_facial_prompt_and_warns(server):
    # Merge Step placed for 2 steps (text-only step 0, facial step 1); KSampler runs 4.
    mismatched = _basic(server, KSampler={"steps": 4})
    text_only = copy.deepcopy(mismatched)
    [sampler], [encoder] = node_ids(text_only, "KSampler"), node_ids(text_only, "ConsistentIDFacialEncoder")
    text_only[sampler]["inputs"]["positive"] = [encoder, 0]
    before = len(server.log_text())
    [warned], [plain] = (saved_images(server, p, server.queue(p)) for p in (mismatched, text_only))
    log = server.log_text()[before:]
    assert ("[ConsistentID · ConsistentID Merge Step] This positive was placed for 2 steps of 'normal' (the facial "
            "prompt from step 1), but the sampler runs 4 steps that are not that schedule: it uses the facial prompt "
            "from its step ") in log
    # The facial prompt still takes part (from the same noise level): late steps of a random-weight UNet move
    # few pixels, so any difference from the text-only run shows it.
    assert not np.array_equal(check_image(warned, (WIDTH, HEIGHT)), check_image(plain, (WIDTH, HEIGHT)))


def test_mixed_good_and_bad_prompts_leave_the_server_working(server):
    outcomes = []
    for round_ in range(3):
        for case in ("a number as Apply's mask", "NaN weight", "a text where a link belongs"):
            with pytest.raises(HostError):
                server.queue(_basic(server, **API_INPUTS[case][0]))
        with pytest.raises(HostError):
            server.queue(_with_save_identity(_basic(server), ".."))
        prompt = set_inputs(_basic(server), "KSampler", seed=round_)
        outcomes.append(check_image(saved_images(server, prompt, server.queue(prompt))[0], (WIDTH, HEIGHT)))
    assert server.get("/system_stats")["system"]
    assert np.abs(outcomes[0] - outcomes[1]).mean() > 1.0  # each good prompt ran, with its own seed
