"""ConsistentID stacked with the real ComfyUI_InstantID (the snapshot beside the host, see dev_env.py) on a
full-size SDXL UNet, in both orders: InstantID's loaders read the files of ``weightgen.instantid``, Apply InstantID
patches the attention and puts its ControlNet on the conditioning, and each pack's branch runs in every
cross-attention where it runs alone, with the same result in either order.

Memory (CI allows 10 GB a process): the UNet is stored in fp8 (2.6 GB), InstantID's adapter in the fp32 that
it moves itself to on a CPU (1.7 GB; hosts that deep-copy model_options on clone, 0.3.64 among them, hold a second copy
once ConsistentID clones an InstantID MODEL), the ControlNet is the reduced "mid" SDXL layout in fp16 (0.5 GB),
ConsistentID's adapter holds its real shapes in a few kB (``weightgen.consistentid``'s unit layout), and its
LoRA, which only adds weight patches, is off: merged, it would back up 1.9 GB of weights.
"""
import importlib
import logging
import sys

import pytest
import torch
from branch_counts import count_branches
from dev_env import neighbour_path
from test_sdxl import POOLED, random_sdxl
from test_unet_patch import NEGATIVE, TEXT, _tokens

CROSS_ATTENTION_KEYS = 70  # SDXL's cross-attentions, each at its 3-tuple key


@pytest.fixture(scope="module")
def sdxl(host):
    """Stored in fp8 (as ComfyUI's ``--fp8_e4m3fn-unet`` stores it)."""
    yield random_sdxl(torch.float8_e4m3fn)
    host.mm.unload_all_models()


@pytest.fixture(scope="module")
def consistentid_weights(pack):
    from weightgen.consistentid import UNIT_RANK, random_checkpoint

    return pack.checkpoint.ConsistentIDWeights(
        path="/models/consistentid/ConsistentID_SDXL-v1.bin", arch="sdxl", facial_encoder={}, image_proj={},
        adapter=random_checkpoint("sdxl", unit=True, seed=0)["adapter_modules"], cross_attention_dim=2048,
        lora_rank=UNIT_RANK)


@pytest.fixture(scope="module")
def instantid(host):
    path = neighbour_path("ComfyUI_InstantID")
    sys.path.insert(0, str(path.parent))
    return importlib.import_module(f"{path.name}.InstantID")


@pytest.fixture(scope="module")
def instantid_inputs(host, instantid):
    """InstantID's adapter and face analysis, each through its own node, its ControlNet file, and a photo."""
    import folder_paths
    from weightgen.instantid import cached_instantid

    files = cached_instantid(size="unit")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(instantid, "INSIGHTFACE_DIR", str(files["insightface_antelopev2"].parents[1]))
        face_analysis = instantid.InstantIDFaceAnalysis().load_insight_face("CPU")[0]
    folder = str(files["instantid_adapter"].parent)
    folder_paths.add_model_folder_path("instantid", folder)
    try:
        adapter = instantid.InstantIDModelLoader().load_model(files["instantid_adapter"].name)[0]
    finally:
        folder_paths.folder_names_and_paths["instantid"][0].remove(folder)
    image = torch.rand(1, 96, 96, 3, generator=torch.Generator().manual_seed(0))
    return adapter, face_analysis, files["instantid_controlnet"], image


def _load_controlnet(path, caplog):
    """The host's ControlNet loader on the generated file, which must map every tensor (it logs any it
    cannot), stored in fp16 as on a GPU (the host would pick fp32 on a CPU)."""
    import comfy.controlnet

    with caplog.at_level(logging.WARNING):
        control_net = comfy.controlnet.load_controlnet(str(path), model_options={"dtype": torch.float16})
    assert "leftover keys" not in caplog.text and "missing controlnet keys" not in caplog.text
    return control_net


def _key(extra_options) -> tuple:
    return (*extra_options["block"], extra_options["block_index"])


@pytest.fixture
def counted(pack, instantid, monkeypatch):
    """Calls per cross-attention key of each pack's attention branch."""
    return count_branches(monkeypatch, pack, instantid, "instantid_attention", "instantid", _key)


def _cond(value: float) -> list:
    return [[torch.full((1, 77, 2048), value), {"pooled_output": torch.full((1, 1280), POOLED[value])}]]


def _consistentid(pack, weights, model):
    return pack.unet_patch.apply_to_model(model, weights, *_tokens(2048), lora_strength=0.0)


def _instantid(instantid, inputs, control_net, model) -> tuple:
    """Apply InstantID's (MODEL, positive, negative)."""
    adapter, face_analysis, _, image = inputs
    return instantid.ApplyInstantID().apply_instantid(adapter, face_analysis, control_net, image, model,
                                                      _cond(TEXT), _cond(NEGATIVE), 0.0, 1.0, weight=0.8)


def _run(host, model, positive, negative, calls) -> tuple[torch.Tensor, dict]:
    for counter in calls.values():
        counter.clear()
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    out = host.sample.sample(model, noise, 1, 7.5, "euler", "normal", positive, negative, latent,
                             disable_pbar=True, seed=0)
    return out, {name: dict(counter) for name, counter in calls.items()}


def test_consistentid_and_instantid_both_run_in_either_order(host, pack, sdxl, consistentid_weights, instantid,
                                                             instantid_inputs, counted, caplog):
    control_net = _load_controlnet(instantid_inputs[2], caplog)
    theirs_model, positive, negative = _instantid(instantid, instantid_inputs, control_net, sdxl)
    # Every run samples with InstantID's conditioning, ControlNet included: results differ by attention alone.
    ours, ours_calls = _run(host, _consistentid(pack, consistentid_weights, sdxl), positive, negative, counted)
    assert len(ours_calls["consistentid"]) == CROSS_ATTENTION_KEYS and ours_calls["instantid"] == {}
    assert set(ours_calls["consistentid"].values()) == {1}
    # Alone, InstantID fires at the 60 keys of the input and output blocks: Apply InstantID puts its middle
    # block's patches at ("middle", 1, i), which the host never calls (the middle transformer is ("middle", 0)).
    theirs, theirs_calls = _run(host, theirs_model, positive, negative, counted)
    assert len(theirs_calls["instantid"]) == 60 and set(theirs_calls["instantid"].values()) == {1}
    assert {key[0] for key in theirs_calls["instantid"]} == {"input", "output"}

    # ConsistentID first: Apply InstantID stacks onto our replacement with its add(); InstantID first: ours
    # chains InstantID's replacement.
    ours_model = _consistentid(pack, consistentid_weights, sdxl)
    ours_first = _instantid(instantid, instantid_inputs, control_net, ours_model)[0]
    theirs_first = _consistentid(pack, consistentid_weights, theirs_model)
    results = []
    for stacked in (ours_first, theirs_first):
        both, both_calls = _run(host, stacked, positive, negative, counted)
        assert both_calls == {"consistentid": ours_calls["consistentid"], "instantid": theirs_calls["instantid"]}
        assert not torch.allclose(both, ours) and not torch.allclose(both, theirs)
        results.append(both)
    # Both orders add the same two branches to the same text attention.
    torch.testing.assert_close(results[0], results[1])
    # Stacking onto clones never reaches the caller's MODEL.
    assert "patches_replace" not in sdxl.model_options["transformer_options"]
