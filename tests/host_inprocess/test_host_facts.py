"""Each fact ``nodes/host.py`` reads from ComfyUI's objects, on real host objects, and the one base-model detector
(``nodes/base_model.py``) on the CLIPs and MODELs of the base models it must tell apart. Run on every supported
host: a host that moves one of these attributes fails here by name."""
import json
import sys
import types
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def facts(pack):
    return pack.load("nodes.host")


@pytest.fixture(scope="module")
def bases(pack):
    return pack.load("nodes.base_model")


def _clip(tokenizer):
    return types.SimpleNamespace(tokenizer=tokenizer)


@pytest.fixture(scope="module")
def clips(host):
    import comfy.sd1_clip
    import comfy.sdxl_clip
    from comfy.text_encoders import flux, sd3_clip

    return {"sd15": _clip(comfy.sd1_clip.SD1Tokenizer()), "sdxl": _clip(comfy.sdxl_clip.SDXLTokenizer()),
            "sd3": _clip(sd3_clip.SD3Tokenizer()), "flux": _clip(flux.FluxTokenizer())}


def _model(config):
    return types.SimpleNamespace(model=types.SimpleNamespace(model_config=config))


@pytest.fixture(scope="module")
def models(host):
    import comfy.supported_models as supported

    return {"sd15": _model(supported.SD15({"context_dim": 768, "model_channels": 320})),
            "sdxl": _model(supported.SDXL({"context_dim": 2048, "model_channels": 320, "adm_in_channels": 2816,
                                           "use_linear_in_transformer": True})),
            "sd3": _model(supported.SD3({"in_channels": 16})), "flux": _model(supported.Flux({"image_model": "flux"}))}


def test_text_tokenizers_name_each_text_encoder(facts, clips):
    assert {name: sorted(facts.text_tokenizers(clip)) for name, clip in clips.items()} == {
        "sd15": ["clip_l"], "sdxl": ["clip_g", "clip_l"], "sd3": ["clip_g", "clip_l", "t5xxl"],
        "flux": ["clip_l", "t5xxl"]}


def test_vocabulary_is_the_clip_bpe(facts, clips):
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    for name in ("clip_l", "clip_g"):
        vocabulary = facts.vocabulary(facts.text_tokenizers(clips["sdxl"])[name])
        assert isinstance(vocabulary, (CLIPTokenizer, CLIPTokenizerFast))
        assert vocabulary("a photo")["input_ids"][0] == 49406  # <|startoftext|>


def test_model_facts(facts, models):
    assert facts.unet_context_dim(models["sd15"]) == 768 and facts.unet_context_dim(models["sdxl"]) == 2048
    assert facts.unet_context_dim(models["flux"]) is None and facts.unet_context_dim(models["sd3"]) is None
    assert [facts.model_name(models[n]) for n in ("sd15", "sdxl", "flux")] == ["SD15", "SDXL", "Flux"]
    assert facts.beta_schedule(models["sd15"]) == "linear"


def test_one_detector_for_clip_and_model(bases, clips, models):
    assert {name: bases.clip_base(clip) for name, clip in clips.items()} == {
        "sd15": "sd15", "sdxl": "sdxl", "sd3": None, "flux": None}
    assert {name: bases.model_base(model) for name, model in models.items()} == {
        "sd15": "sd15", "sdxl": "sdxl", "sd3": None, "flux": None}


@pytest.mark.parametrize("base", ["sd3", "flux"])
def test_an_unsupported_clip_gets_the_packs_message(pack, bases, clips, base):
    weights = types.SimpleNamespace(arch="sd15", arch_name="SD1.5", name="ConsistentID-v1.bin")
    with pytest.raises(pack.errors.ModelMismatchError) as refused:
        bases.check_clip(clips[base], weights)
    encoders = {"sd3": "clip_g, clip_l, t5xxl", "flux": "clip_l, t5xxl"}[base]
    assert str(refused.value).startswith(
        f"[ConsistentID] The CLIP holds the text encoders {encoders}, which belong to no SD1.5 or SDXL model; "
        f"ConsistentID exists for SD1.5 and SDXL only. Fix: Connect the CLIP of an SD1.5 checkpoint")


def test_an_unsupported_model_and_a_mismatch_get_the_packs_message(pack, bases, clips, models):
    weights = types.SimpleNamespace(arch="sd15", arch_name="SD1.5", name="ConsistentID-v1.bin")
    with pytest.raises(pack.errors.ModelMismatchError, match=r"adapter, but the MODEL is Flux; ConsistentID exists "
                                                             r"for SD1.5 and SDXL only"):
        bases.check_model(models["flux"], weights)
    with pytest.raises(pack.errors.ModelMismatchError, match=r"but the CLIP is SDXL\. Fix: Load the SDXL "
                                                             r"ConsistentID file \(ConsistentID_SDXL-v1.bin\)"):
        bases.check_clip(clips["sdxl"], weights)
    assert bases.check_clip(clips["sd15"], weights) == "sd15" and bases.check_model(models["sd15"], weights) == "sd15"


def test_run_conds_and_model_sampling_in_a_sampler_run(host, facts, base):
    from comfy.patcher_extension import WrappersMP

    seen = {}

    def watch(executor, guider, sigmas, *args, **kwargs):
        conds, sampling = facts.run_conds(guider), facts.run_model_sampling(guider)
        seen.update(names=sorted(conds), tag=[c.get("tag") for c in conds["positive"]],
                    sigma=float(sampling.sigma_max), first=float(sigmas[0]))
        return executor(guider, sigmas, *args, **kwargs)

    model = base.clone()
    model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, "test", watch)
    cond = [[torch.zeros(1, 77, 768), {"tag": "mine"}]]
    uncond = [[torch.zeros(1, 77, 768), {}]]
    latent = torch.zeros(1, 4, 8, 8)
    host.sample.sample(model, host.sample.prepare_noise(latent, 0), 1, 5.0, "euler", "normal", cond, uncond, latent)
    assert seen["names"] == ["negative", "positive"] and seen["tag"] == ["mine"]
    assert seen["sigma"] == pytest.approx(14.6146, rel=1e-4) and seen["first"] == pytest.approx(14.6146, rel=1e-4)


def test_run_sampler_name_in_a_sampler_run(host, facts, base):
    from comfy.patcher_extension import WrappersMP

    names = []

    def watch(executor, *args, **kwargs):
        names.append(facts.run_sampler_name(executor))
        return executor(*args, **kwargs)

    model = base.clone()
    model.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, "test", watch)
    cond, latent = [[torch.zeros(1, 77, 768), {}]], torch.zeros(1, 4, 8, 8)
    for sampler in ("euler", "heun", "dpmpp_2m"):
        host.sample.sample(model, host.sample.prepare_noise(latent, 0), 1, 1.0, sampler, "normal", cond, cond, latent)
    assert names == ["euler", "heun", "dpmpp_2m"]


def test_show_on_node_sends_progress_text(host, facts, monkeypatch):
    # server.py cannot be imported beside the test tools (its "utils" package clashes), so the host's method is
    # checked in its source and the call through a stand-in server.
    source = (Path(host.path) / "server.py").read_text()
    assert "def send_progress_text(" in source and "PromptServer.instance = self" in source
    sent = []
    instance = types.SimpleNamespace(send_progress_text=lambda text, node: sent.append((text, node)))
    monkeypatch.setitem(sys.modules, "server",
                        types.SimpleNamespace(PromptServer=types.SimpleNamespace(instance=instance)))
    facts.show_on_node("12", "hello")
    facts.show_on_node(None, "nobody")
    assert sent == [("hello", "12")]


def test_vision_tower_and_penultimate_states(host, facts, tmp_path):
    import comfy.clip_vision

    config = {"hidden_act": "gelu", "hidden_size": 32, "image_size": 28, "intermediate_size": 64,
              "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
              "num_channels": 3, "num_hidden_layers": 3, "patch_size": 14, "projection_dim": 16}
    (tmp_path / "vision.json").write_text(json.dumps(config))
    vision = comfy.clip_vision.ClipVisionModel(str(tmp_path / "vision.json"))
    for param in vision.model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    assert facts.vision_tower(vision) == (32, 3)
    assert facts.vision_tower(types.SimpleNamespace(model=torch.nn.Linear(2, 2))) is None
    pixels = torch.randn(2, 3, 28, 28, dtype=vision.dtype)
    states = facts.penultimate_states(vision, pixels)
    assert states.shape == (2, 5, 32)
    _, all_layers, _, _ = vision.model(pixel_values=pixels, intermediate_output=-1)
    assert not torch.equal(states, all_layers)
