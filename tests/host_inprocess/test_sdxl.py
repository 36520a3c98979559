"""SDXL on the real host: a full-size SDXL UNet (2.6 B parameters, random, stored in fp16 as on a GPU and
computed in fp32 on the CPU) patched with a full-layout SDXL adapter."""
import collections
import copy

import pytest
import torch
from test_unet_patch import FACIAL, NEGATIVE, TEXT, _fingerprints, _prompts, _record_positive, _tokens, _weights

# ComfyUI's SDXL UNet config, as model detection finds it in the released checkpoints.
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}
POOLED = {TEXT: 0.5, FACIAL: 0.25, NEGATIVE: -0.5}  # pooled-output fill of each conditioning


def random_sdxl(storage_dtype: torch.dtype):
    """A full-size random SDXL UNet as ModelPatcher, computed in fp32: weights N(0, 0.02), norms 1, biases 0 (as
    the weight generator fills them, so every block passes its input on), stored in ``storage_dtype``."""
    import comfy.model_detection
    import comfy.model_patcher
    from weightgen.host_models import init_kinds

    config = comfy.model_detection.model_config_from_unet_config(dict(SDXL_UNET))
    assert type(config).__name__ == "SDXL"
    config.set_inference_dtype(storage_dtype, torch.float32)
    model = config.get_model({}, device="cpu")
    kinds = init_kinds(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            kind = kinds[id(param)]
            value = torch.empty(param.shape).normal_(0.0, 0.02, generator=generator) if kind == "normal" else \
                torch.full(param.shape, float(kind == "ones"))
            param.copy_(value)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def sdxl(host):
    """Stored in fp16, as on a GPU."""
    yield random_sdxl(torch.float16)
    host.mm.unload_all_models()


def _cond(value: float) -> list:
    return [[torch.full((1, 77, 2048), value), {"pooled_output": torch.full((1, 1280), POOLED[value])}]]


def _sample(host, model, positive, steps=1, height=8, width=6):
    latent = torch.zeros(1, 4, height, width)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return host.sample.sample(model, noise, steps, 7.5, "euler", "normal", positive, _cond(NEGATIVE), latent,
                              disable_pbar=True, seed=0)


def test_sdxl_patch_fires_70_replacements_merges_560_lora_tensors_and_leaves_the_caller_alone(host, pack, sdxl):
    weights = _weights(pack, "sdxl")
    before = _fingerprints(sdxl.model)
    options_before = copy.deepcopy(sdxl.model_options)
    patched = pack.unet_patch.apply_to_model(sdxl, weights, *_tokens(2048))

    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    cross = {(*p.block, p.transformer_index) for p in pack.layout.PROCESSORS["sdxl"] if p.kind == "cross"}
    # SDXL blocks hold 2 or 10 transformers: only the 3-tuple keys, which SDXL packs use too.
    assert set(attn2) == cross and len(cross) == 70
    fired = collections.Counter()

    def counting(key, patch):
        def replace(q, k, v, extra_options):
            fired[key] += 1
            return patch(q, k, v, extra_options)
        return replace

    for key in list(attn2):
        attn2[key] = counting(key, attn2[key])
    out = _sample(host, patched, _cond(TEXT))
    assert torch.isfinite(out).all()
    assert fired == dict.fromkeys(cross, 1)
    # The face-ID branch reaches the output (a UNet that passes nothing on would hide a patch that does nothing).
    assert not torch.allclose(out, _sample(host, sdxl, _cond(TEXT)))

    host.mm.load_models_gpu([patched])
    loaded = _fingerprints(patched.model)
    deltas = pack.attention.lora_deltas(weights.adapter, "sdxl")
    key = "diffusion_model.output_blocks.2.1.transformer_blocks.9.attn2.to_out.0.weight"
    merged = patched.model.state_dict()[key].float()
    host.mm.unload_all_models()
    changed = {k for k in before if loaded[k] != before[k]}
    assert changed == set(deltas) and len(changed) == 560
    up, down = deltas[key]
    # Stored in fp16 like the UNet: the merge is exact up to fp16 rounding of the sum.
    torch.testing.assert_close(merged - sdxl.model.state_dict()[key].float(), up @ down, atol=1e-3, rtol=0)
    assert _fingerprints(sdxl.model) == before and sdxl.model_options == options_before and sdxl.patches == {}


def test_sdxl_merge_step_switches_context_and_pooled_and_sizes_are_the_official_ones(host, pack, sdxl):
    model = sdxl.clone()
    calls = _record_positive(model)
    ys = []
    wrapper = model.model_options["model_function_wrapper"]

    def recording(apply_model, args):
        c, chunks = args["c"], args["cond_or_uncond"]
        rows = c["y"].shape[0] // len(chunks)
        ys.extend(c["y"][i * rows] for i, chunk in enumerate(chunks) if chunk == 0)
        return wrapper(apply_model, args)

    model.set_model_unet_function_wrapper(recording)
    [positive] = pack.merge_step.ConsistentIDMergeStep.execute(_cond(TEXT), _cond(FACIAL), 1, 4, "normal").result
    _sample(host, model, positive, steps=4, height=144, width=108)
    assert _prompts(calls) == [[TEXT], [TEXT], [FACIAL], [FACIAL]]
    # The official pipeline's pooled text embedding follows the prompt of its phase ...
    assert [float(y[0]) for y in ys] == [POOLED[TEXT]] * 2 + [POOLED[FACIAL]] * 2
    # ... and its size conditioning is (original size, crop (0, 0), target size) of the image it makes.
    embed = sdxl.model.embedder
    expected = torch.cat([embed(torch.Tensor([v])) for v in (1152, 864, 0, 0, 1152, 864)]).flatten()
    for y in ys:
        torch.testing.assert_close(y[1280:].float(), expected.float())
