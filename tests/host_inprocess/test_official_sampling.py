"""ConsistentID Official Sampling inside a real ComfyUI (in-process, see conftest.py) against golden G8: the
official SD1.5 demo's 20-step Euler loop (CFG 5, merge step 12) on the whole SD1.5 UNet with the official
ConsistentID processors, regenerated bit-exactly by the golden ``hashfill.py``.

The port runs the path a user wires: ConsistentID's UNet patch, Merge Step Scheduler, this node's MODEL and
SIGMAS, and the host's SamplerCustom sampling (``comfy.sample.sample_custom`` with euler).
"""
import hashlib
import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

STEPS, CFG, MERGE_STEP = 20, 5.0, 12
LATENT_SCALE = 0.18215  # SD1.5's latent scale: the host returns latents divided by it
TOLERANCE = 1.5e-6  # the bound README.md states; measured 1.42e-6 on both hosts
TEXT, FACIAL, NEGATIVE = 1.0, 2.0, -1.0  # fill values of the recording test's conditionings


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def g8_dir(golden_dir):
    return golden_dir / "g7_unet"


@pytest.fixture(scope="module")
def hashfill(g8_dir):
    spec = importlib.util.spec_from_file_location("g7_hashfill", g8_dir / "hashfill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def meta(g8_dir):
    return json.loads((g8_dir / "g7_unet.json").read_text())


@pytest.fixture(scope="module")
def g8(g8_dir):
    return load_file(g8_dir / "g7_unet_io.safetensors")


def _checked(tensors, sha256: dict) -> dict:
    """The regenerated tensors, each checked against the golden sha256 of its float32 bytes."""
    out = {}
    for key, tensor in tensors:
        assert hashlib.sha256(tensor.numpy().tobytes()).hexdigest() == sha256[key], key
        out[key] = tensor
    return out


@pytest.fixture(scope="module")
def g8_unet(host, hashfill, meta, g8_dir):
    """The golden's SD1.5 UNet in the host, from the diffusers-format state dict (every tensor checked)."""
    shapes = json.loads((g8_dir / "sd15_unet_diffusers_shapes.json").read_text())
    state = _checked(hashfill.iter_unet_state_dict(shapes, meta["seed"]), meta["unet_tensor_sha256"])
    assert len(state) == len(meta["unet_tensor_sha256"]) == 686
    model = host.sd.load_diffusion_model_state_dict(state)
    del state
    assert type(model.model.model_config).__name__ == "SD15"
    yield model
    host.mm.unload_all_models()


@pytest.fixture(scope="module")
def g8_weights(pack, hashfill, meta):
    adapter = _checked(hashfill.adapter_state_dict(meta["seed"]).items(), meta["adapter_tensor_sha256"])
    return pack.checkpoint.ConsistentIDWeights(
        path=f"/models/consistentid/{pack.checkpoint.RELEASE_FILES['sd15']}", arch="sd15", facial_encoder={},
        image_proj={}, adapter=adapter, cross_attention_dim=768, lora_rank=128)


def _merge_step_node(pack, text_only, facial, merge_step, steps):
    node = pack.merge_step.ConsistentIDMergeStep
    return node.execute(text_only=text_only, facial=facial, merge_step=merge_step, steps=steps,
                        scheduler="normal").result[0]


def _official_node(pack, model, steps):
    return pack.load("nodes.official_sampling").ConsistentIDOfficialSampling.execute(model=model, steps=steps).result


def test_official_sampling_follows_the_official_loop_step_by_step(host, pack, g8_unet, g8_weights, g8, meta):
    import comfy.samplers

    assert meta["g8"]["steps"] == STEPS and meta["g8"]["cfg"] == CFG and meta["g8"]["merge_step"] == MERGE_STEP
    patched = pack.unet_patch.apply_to_model(g8_unet, g8_weights, g8["g8.id_tokens"], g8["g8.id_tokens_uncond"])
    positive = _merge_step_node(pack, [[g8["g8.text_only"], {}]], [[g8["g8.text_facial"], {}]], MERGE_STEP, STEPS)
    model, sigmas = _official_node(pack, patched, STEPS)
    torch.testing.assert_close(sigmas, g8["g8.sigmas"], rtol=0, atol=0)
    sampling = model.get_model_object("model_sampling")
    torch.testing.assert_close(sampling.timestep(sigmas[:-1]), g8["g8.timesteps"], rtol=0, atol=2e-4)

    before_step = []  # the host's callback sees each step's latent before the step
    callback = lambda step, x0, x, total: before_step.append(x.detach().clone())  # noqa: E731
    out = host.sample.sample_custom(model, g8["g8.noise"].clone(), CFG, comfy.samplers.sampler_object("euler"),
                                    sigmas, positive, [[g8["g8.text_negative"], {}]], torch.zeros(1, 4, 32, 24),
                                    callback=callback, disable_pbar=True, seed=0)

    assert len(before_step) == STEPS
    torch.testing.assert_close(before_step[0], g8["g8.x_T"], rtol=1e-6, atol=1e-5)
    after_step = [*before_step[1:], out * LATENT_SCALE]
    errors = [_relative(x, g8[f"g8.latent.step{i:02d}"]) for i, x in enumerate(after_step)]
    final = _relative(out * LATENT_SCALE, g8["g8.final"])
    print(f"G8 relative error: final {final:.2e}, worst step {max(errors):.2e} (step {errors.index(max(errors))})")
    assert final < TOLERANCE
    assert max(errors) < TOLERANCE, errors


def test_the_official_model_sampling_is_only_on_the_nodes_output(host, pack, g8_unet, g8):
    import comfy.samplers

    stock_sigmas = comfy.samplers.calculate_sigmas(g8_unet.get_model_object("model_sampling"), "normal", STEPS)
    model, sigmas = _official_node(pack, g8_unet, STEPS)
    assert "model_sampling" not in g8_unet.object_patches and "model_sampling" in model.object_patches

    stock = g8_unet.get_model_object("model_sampling")
    assert type(stock).__name__ == "ModelSampling"
    # KSampler's defaults: integer timesteps, first noise scaled by √(1 + σ_max²), its own "normal" schedule.
    assert stock.timestep(g8["g8.sigmas"][1:2]).tolist() == [946]
    noise = torch.ones(1, 4, 2, 2)
    assert float(stock.noise_scaling(stock.sigma_max, noise, torch.zeros_like(noise), True)[0, 0, 0, 0]) == \
        pytest.approx((1 + float(stock.sigma_max) ** 2) ** 0.5, rel=1e-6)
    torch.testing.assert_close(comfy.samplers.calculate_sigmas(stock, "normal", STEPS), stock_sigmas, rtol=0, atol=0)
    assert not torch.allclose(stock_sigmas, g8["g8.sigmas"], rtol=1e-6, atol=0)

    official = model.get_model_object("model_sampling")
    assert float(official.noise_scaling(sigmas[0], noise, torch.zeros_like(noise), True)[0, 0, 0, 0]) == \
        pytest.approx(float(g8["g8.sigmas"][0]), rel=1e-7)
    # On the node's MODEL, the host's own "normal" schedule is the official one too: Merge Step Scheduler and
    # KSampler place the node's SIGMAS in it.
    torch.testing.assert_close(comfy.samplers.calculate_sigmas(official, "normal", STEPS), g8["g8.sigmas"],
                               rtol=1e-6, atol=0)
    assert official.percent_to_sigma(0.5) == pytest.approx(
        float(official.sigma(torch.tensor(499.5))), rel=1e-7)
    # Applied twice, the node keeps one official model sampling.
    again, _ = _official_node(pack, model, STEPS)
    assert again.get_model_object("model_sampling") is official


def _record_positive(model):
    """Per model call, the fill values of the positive rows it received; the UNet is not run."""
    calls = []

    def wrapper(apply_model, args):
        c, chunks = args["c"]["c_crossattn"], args["cond_or_uncond"]
        rows = c.shape[0] // len(chunks)
        calls.append([float(c[i * rows, 0, 0]) for i, chunk in enumerate(chunks) if chunk == 0])
        return torch.zeros_like(args["input"])

    model.set_model_unet_function_wrapper(wrapper)
    return calls


@pytest.mark.parametrize("split", [0, 10])
def test_merge_step_lands_at_the_official_index_also_after_split_sigmas(host, pack, g8_unet, split):
    """A run of the node's SIGMAS from step ``split`` on (SplitSigmas' second half) switches to the facial
    prompt after the official step ``MERGE_STEP`` of the whole schedule."""
    import comfy.samplers

    cond = lambda value: [[torch.full((1, 77, 768), value), {}]]  # noqa: E731
    positive = _merge_step_node(pack, cond(TEXT), cond(FACIAL), MERGE_STEP, STEPS)
    model, sigmas = _official_node(pack, g8_unet, STEPS)
    calls = _record_positive(model)
    latent = torch.zeros(1, 4, 8, 8)
    host.sample.sample_custom(model, torch.randn(latent.shape, generator=torch.Generator().manual_seed(0)), CFG,
                              comfy.samplers.sampler_object("euler"), sigmas[split:], positive, cond(NEGATIVE),
                              latent, disable_pbar=True, seed=0)
    assert calls == [[TEXT if step <= MERGE_STEP else FACIAL] for step in range(split, STEPS)]


def test_a_model_with_another_noise_schedule_is_refused(host, pack, g8_unet):
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    zsnr = ModelSamplingDiscrete().patch(g8_unet, "eps", True)[0]
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        _official_node(pack, zsnr, STEPS)
    message = str(refused.value)
    assert message.startswith("[ConsistentID · ConsistentID Official Sampling] The MODEL samples with ")
    assert "zsnr True" in message and "Fix: " in message
