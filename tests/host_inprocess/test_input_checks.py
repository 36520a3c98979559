"""Every input of every pack node, sent wrong the way an API client can (a wrong type, a literal where a link
belongs, null, NaN), gets the pack's message naming the node and the input, at queue time where the value is known
then and else when the node runs; none reaches the node's code."""
import math

import pytest
import torch
from model_files import models  # noqa: F401  (fixture)

# apply_nodes lists the merge-step and official-sampling nodes too.
MODULES = ("loader_nodes", "insightface_nodes", "face_nodes", "identity_nodes", "encoder_nodes", "apply_nodes",
           "simple_node", "metrics_nodes")


def _nodes(pack):
    return [node for module in MODULES for node in pack.load(f"nodes.{module}").NODES]


def _cases(pack):
    from comfy_api.latest import io

    for node in _nodes(pack):
        schema = node.define_schema()
        for spec in schema.inputs:
            if spec.extra_dict.get("rawLink"):
                continue  # the all-in-one takes these links as links
            if isinstance(spec, (io.Int.Input, io.Float.Input)):
                bad, expected = "many", f"{spec.id} is 'many'; it must be a "
            elif isinstance(spec, io.Combo.Input):
                bad, expected = 7, f"{spec.id} is 7, which is not one of its values"
            elif isinstance(spec, io.String.Input):
                bad, expected = 7, f"{spec.id} is the number 7, not text."
            else:
                bad, expected = 5, f"{spec.id} is the number 5, not "
            yield node, schema.display_name, spec.id, bad, expected


def test_every_input_refuses_a_wrong_value_at_queue_time(pack, models):
    cases = list(_cases(pack))
    assert len(cases) >= 60
    for node, label, name, bad, expected in cases:
        with pytest.raises(pack.errors.ConsistentIDError) as refused:
            node.validate_inputs(**{name: bad})
        assert str(refused.value).startswith(f"[ConsistentID · {label}] {expected}"), (label, name, str(refused.value))
        assert " Fix: " in str(refused.value)


def test_every_required_input_refuses_null_when_the_node_runs(pack, models):
    checked = 0
    for node in _nodes(pack):
        schema = node.define_schema()
        required = [spec.id for spec in schema.inputs if not spec.optional]
        with pytest.raises(pack.errors.ConsistentIDError) as refused:
            node.execute(**dict.fromkeys(required))
        assert str(refused.value).startswith(
            f"[ConsistentID · {schema.display_name}] {required[0]} has no value (null). Fix: Connect {required[0]}")
        checked += 1
    assert checked == len(_nodes(pack))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_masks_and_images_are_refused(pack, models, bad):
    apply = pack.load("nodes.apply_nodes").ConsistentIDApply
    mask = torch.ones(8, 8)
    mask[3, 3] = bad
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        apply.validate_inputs(mask=mask, weight=1.0)
    assert str(refused.value).startswith("[ConsistentID · ConsistentID Apply] mask holds NaN or infinite values")

    parse = pack.load("nodes.face_nodes").ConsistentIDFaceParse
    image = torch.zeros(1, 8, 8, 3)
    image[0, 1, 1, 1] = bad
    with pytest.raises(pack.errors.ConsistentIDError, match=r"Face Parse\] image holds NaN or infinite values"):
        parse.validate_inputs(image=image)


def test_a_mask_given_as_an_image_or_a_number_names_the_socket(pack, models):
    apply = pack.load("nodes.apply_nodes").ConsistentIDApply
    for value, shown in ((torch.zeros(1, 8, 8, 3), "a tensor of shape [1, 8, 8, 3] (float32)"), (0.5, "the number 0.5")):
        with pytest.raises(pack.errors.ConsistentIDError) as refused:
            apply.validate_inputs(mask=value)
        assert str(refused.value).startswith(
            f"[ConsistentID · ConsistentID Apply] mask is {shown}, not a mask [height, width] or [batch, height, "
            f"width]. Fix: Link mask to an output of type MASK.")


def test_nan_weights_are_refused(pack, models):
    apply = pack.load("nodes.apply_nodes").ConsistentIDApply
    with pytest.raises(pack.errors.ConsistentIDError, match=r"weight is nan; it must be a number from -1.0 to 3.0"):
        apply.validate_inputs(weight=math.nan)


def test_official_sampling_used_outside_what_it_reproduces_warns(host, pack, base, caplog):
    import logging

    official = pack.load("nodes.official_sampling").ConsistentIDOfficialSampling
    model, sigmas = official.execute(base, 3).result
    cond, latent = [[torch.zeros(1, 77, 768), {}]], torch.zeros(1, 4, 8, 8)
    noise = host.sample.prepare_noise(latent, 0)
    runs = {"official": ("euler", sigmas), "heun": ("heun", sigmas), "karras": ("euler", None)}
    warned = {}
    for name, (sampler, run_sigmas) in runs.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            host.sample.sample(model, noise, 3, 1.0, sampler, "karras", cond, cond, latent, sigmas=run_sigmas)
        warned[name] = [r.getMessage() for r in caplog.records if "official trajectory" in r.getMessage()]
    assert warned["official"] == []
    assert warned["heun"] == [
        "[ConsistentID · ConsistentID Official Sampling] This run does not follow the official trajectory: it samples "
        "with heun, not euler (the demo's diffusers Euler). It still samples, with the demo's timesteps, but not the "
        "demo's picture. Fix: Sample with SamplerCustom: sampler euler (KSamplerSelect), sigmas from this node."]
    assert len(warned["karras"]) == 1 and "its 3 steps are not this node's 3-step official sigmas" in warned["karras"][0]
