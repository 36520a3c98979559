"""Options the host never checks before ``execute`` (values that arrive through a link, or that the all-in-one
passes to the nodes it expands into) get the pack's message there, and a step inside the all-in-one is named
after it. The same messages at queue time are in ``tests/host/test_options_and_memory.py``."""
import pytest
from host_facts import node_class_for
from model_files import models  # noqa: F401  (fixture)

CHECKED_AT_EXECUTE = {
    "provider TPU": ("nodes.insightface_nodes", "ConsistentIDInsightFaceLoader",
                     dict(pack="buffalo_l", provider="TPU", det_size=640),
                     "[ConsistentID · ConsistentID InsightFace Loader] provider is 'TPU', which is not one of its "
                     "values: 'CPU', 'CUDA', 'ROCM', 'CoreML', 'DirectML', 'OpenVINO'. Fix: Set provider to one of "
                     "these values. provider: onnxruntime device."),
    "base_model SD3": ("nodes.simple_node", "ConsistentIDSimple",
                       dict(model=None, clip=None, clip_vision=None, image=None, prompt="", negative_prompt="",
                            consistentid_name="ConsistentID-v1-unit.bin", parser_name="face_parsing.pth",
                            insightface_pack="buffalo_l", provider="CPU", base_model="SD3", weight=1.0,
                            merge_step=30, steps=50, scheduler="normal"),
                       "[ConsistentID · ConsistentID (all in one)] base_model is 'SD3', which is not one of its "
                       "values: 'SD1.5', 'SDXL'. Fix: Set base_model to one of these values."),
    "on_no_face ignore": ("nodes.identity_nodes", "ConsistentIDFaceEncode",
                          dict(consistentid=None, clip_vision=None, insightface=None, image=None, region_embeds=None,
                               face="highest score", face_index=0, combine="average", on_no_face="ignore"),
                          "[ConsistentID · ConsistentID Face Encode] on_no_face is 'ignore', which is not one of its "
                          "values: 'error', 'zero', 'skip'. Fix: Set on_no_face to one of these values."),
    "combine median": ("nodes.identity_nodes", "ConsistentIDFaceEncode",
                       dict(consistentid=None, clip_vision=None, insightface=None, image=None, region_embeds=None,
                            face="highest score", face_index=0, combine="median", on_no_face="error"),
                       "[ConsistentID · ConsistentID Face Encode] combine is 'median', which is not one of its "
                       "values: 'average', 'concatenate'. Fix: Set combine to one of these values."),
    "identity file missing": ("nodes.identity_nodes", "ConsistentIDLoadIdentity",
                              dict(consistentid=None, identity_name="nobody.safetensors"),
                              "[ConsistentID · ConsistentID Load Identity] Model file 'nobody.safetensors' was "
                              "not found in "),
    "blend weight 1.5": ("nodes.identity_nodes", "ConsistentIDBlendIdentities",
                         dict(identity_a=None, identity_b=None, weight=1.5),
                         "[ConsistentID · ConsistentID Blend Identities] weight is 1.5; it must be a number from "
                         "0.0 to 1.0."),
    "scheduler bogus": ("nodes.merge_step", "ConsistentIDMergeStep",
                        dict(text_only=[], facial=[], merge_step=12, steps=20, scheduler="bogus"),
                        "[ConsistentID · ConsistentID Merge Step] scheduler is 'bogus', which is not one "
                        "of its values: 'simple', "),
    "merge_step -1": ("nodes.merge_step", "MergeStepScheduler",
                      dict(model=None, text_only=[], facial=[], merge_step=-1, steps=20, scheduler="normal"),
                      "[ConsistentID · ConsistentID Merge Step Scheduler (old)] merge_step is -1; it must be a whole "
                      "number from 0 to 10000. Fix: Set merge_step to"),
    "parse_size 999": ("nodes.face_nodes", "ConsistentIDFaceParse",
                       dict(face_parser=None, image=None, parse_size="999"),
                       "[ConsistentID · ConsistentID Face Parse] parse_size is '999', which is not one of its "
                       "values: '512', '1280'. Fix: Set parse_size to one of these values."),
    "det_size off the grid": ("nodes.insightface_nodes", "ConsistentIDInsightFaceLoader",
                              dict(pack="buffalo_l", provider="CPU", det_size=650),
                              "[ConsistentID · ConsistentID InsightFace Loader] det_size is 650; it must be a whole "
                              "number from 128 to 2048, a multiple of 32. Fix: Set det_size to"),
}


@pytest.mark.parametrize("case", CHECKED_AT_EXECUTE)
def test_a_bad_option_is_refused_by_execute(pack, models, case):
    module, node, inputs, expected = CHECKED_AT_EXECUTE[case]
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        getattr(pack.load(module), node).execute(**inputs)
    assert str(refused.value).startswith(expected)


def test_a_step_of_the_all_in_one_is_named_after_it(host, pack):
    from comfy_api.latest import io
    from comfy_execution.graph import DynamicPrompt

    simple = pack.load("nodes.simple_node").ConsistentIDSimple
    simple.GET_SCHEMA()  # what registering the node does
    parse = pack.load("nodes.face_nodes").ConsistentIDFaceParse
    prompt = DynamicPrompt({"7": {"class_type": "ConsistentIDSimple", "inputs": {}}})
    prompt.add_ephemeral_node("7.0.0.4", {"class_type": "ConsistentIDFaceParse", "inputs": {}}, "7", "7")
    inner = node_class_for(parse, {io.Hidden.unique_id: "7.0.0.4", io.Hidden.dynprompt: prompt})
    alone = node_class_for(parse, {io.Hidden.unique_id: "7", io.Hidden.dynprompt: prompt})

    for node, name in ((inner, "ConsistentID (all in one) › Face Parse"), (alone, "ConsistentID Face Parse")):
        with pytest.raises(pack.errors.ConsistentIDError) as refused:
            node.execute(None, None, "999")
        assert str(refused.value).startswith(f"[ConsistentID · {name}] parse_size is '999'")
