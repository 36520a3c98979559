"""The UNet patch and the merge-step switch inside a real ComfyUI, imported in-process (see conftest.py).

The UNet is the full-size random SD1.5 of ``weightgen.host_models``; the merge-step runs replace it by a
model function that records the conditioning and returns zeros, so many samplers and schedulers stay fast
on a CPU.
"""
import collections
import copy
import logging
import types
from pathlib import Path

import pytest
import torch
from official_attention import ip_attention

REPO = Path(__file__).resolve().parents[2]
TEXT, FACIAL, NEGATIVE = 1.0, 2.0, -1.0  # fill values of the three conditionings, read back as fingerprints


def _weights(pack, arch="sd15", rank=4, seed=0, with_adapter=True):
    """A ConsistentIDWeights with real hidden sizes and a small LoRA rank (the merge does not depend on it)."""
    g = torch.Generator().manual_seed(seed)
    c = pack.layout.CROSS_ATTENTION_DIM[arch]
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    adapter = {}
    for p in pack.layout.PROCESSORS[arch] if with_adapter else ():
        h, kv_in = p.hidden_size, c if p.kind == "cross" else p.hidden_size
        for lora, fan_in in (("to_q_lora", h), ("to_k_lora", kv_in), ("to_v_lora", kv_in), ("to_out_lora", h)):
            adapter[f"{p.index}.{lora}.down.weight"] = rand(rank, fan_in)
            adapter[f"{p.index}.{lora}.up.weight"] = rand(h, rank)
        if p.kind == "cross":
            adapter[f"{p.index}.to_k_ip.weight"] = rand(h, c)
            adapter[f"{p.index}.to_v_ip.weight"] = rand(h, c)
    return pack.checkpoint.ConsistentIDWeights(
        path=f"/models/consistentid/{pack.checkpoint.RELEASE_FILES[arch]}", arch=arch, facial_encoder={},
        image_proj={}, adapter=adapter, cross_attention_dim=c, lora_rank=rank)


def _tokens(c=768, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, c, generator=g), torch.randn(1, 4, c, generator=g)


def _fingerprints(module: torch.nn.Module) -> dict[str, float]:
    # A float64 sum over every 61st value: deterministic for the same values, moved by any dense LoRA delta,
    # and cheap enough for 860 M parameters on a CPU.
    return {k: torch.sum(v.detach().flatten()[::61], dtype=torch.float64).item()
            for k, v in module.state_dict().items()}


def _cond(value: float, c: int = 768) -> list:
    return [[torch.full((1, 77, c), value), {}]]


def _sample(host, model, positive, steps=1, sampler="euler", scheduler="normal", batch=1, **kwargs):
    latent = torch.zeros(batch, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    return host.sample.sample(model, noise, steps, 5.0, sampler, scheduler, positive, _cond(NEGATIVE), latent,
                              disable_pbar=True, seed=0, **kwargs)


# ---------------------------------------------------------------------------------------------- UNet patch

def _flat(kv: torch.Tensor) -> torch.Tensor:
    """``[rows, heads, T, d]`` keys or values as ``[rows, T, heads·d]``."""
    return kv.transpose(1, 2).flatten(2)


def test_patch_picks_cond_or_uncond_tokens_per_batch_chunk(host, pack):
    from comfy.ldm.modules.attention import optimized_attention

    g = torch.Generator().manual_seed(0)
    k_ip, v_ip = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    q, k, v = torch.randn(4, 6, 8, generator=g), torch.randn(4, 3, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    options = {"n_heads": 2, "attn_precision": None, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([5.0, 5.0])}
    patch = pack.unet_patch.FaceIDAttention((k_ip, v_ip), 0.7, None)
    # Chunk 0 is the negative (rows 0-1), chunk 1 the positive (rows 2-3).
    rows = torch.tensor([1, 1, 0, 0])
    ip = ip_attention(q, _flat(k_ip)[rows], _flat(v_ip)[rows], 2)
    expected = optimized_attention(q, k, v, 2) + 0.7 * ip
    torch.testing.assert_close(patch(q, k, v, options), expected)

    outside = pack.unet_patch.FaceIDAttention((k_ip, v_ip), 0.7, (4.0, 1.0))
    torch.testing.assert_close(outside(q, k, v, options), optimized_attention(q, k, v, 2))
    inside = pack.unet_patch.FaceIDAttention((k_ip, v_ip), 0.7, (6.0, 1.0))
    torch.testing.assert_close(inside(q, k, v, options), expected)
    # The wrapper's host-side sigma decides when present: no device read inside the UNet.
    torch.testing.assert_close(outside(q, k, v, {**options, pack.unet_patch.SIGMA_KEY: 3.0}), expected)


def test_patch_stacks_other_packs_with_add_and_clones_keep_their_own_stack(host, pack):
    """The ``.add(callback, **kwargs)`` protocol of IPAdapter_plus's Attn2Replace (also InstantID, PuLID)."""
    from comfy.ldm.modules.attention import optimized_attention

    g = torch.Generator().manual_seed(0)
    k_ip, v_ip = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    q, k, v = torch.randn(2, 6, 8, generator=g), torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    options = {"n_heads": 2, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([5.0, 5.0])}
    patch = pack.unet_patch.FaceIDAttention((k_ip, v_ip), 1.0, None)
    alone = patch(q, k, v, options)
    extra = lambda out, q, k, v, extra_options, scale, **kw: scale * torch.ones_like(out)  # noqa: E731
    clone = copy.deepcopy(patch)
    clone.add(extra, scale=2.0, sigma_start=10.0, sigma_end=0.0)
    clone.add(extra, scale=100.0, sigma_start=4.0, sigma_end=0.0)  # outside its range at sigma 5
    torch.testing.assert_close(clone(q, k, v, options), alone + 2.0)
    torch.testing.assert_close(patch(q, k, v, options), alone)
    assert clone.kv is patch.kv and patch.added == []

    chained = pack.unet_patch.FaceIDAttention((k_ip, v_ip), 1.0, None, previous=lambda q, k, v, o: optimized_attention(
        q, k, v, o["n_heads"]) + 1.0)
    torch.testing.assert_close(chained(q, k, v, options), alone + 1.0)


def test_sd15_adapter_on_sdxl_model_is_refused(host, pack):
    import comfy.supported_models

    sdxl_model = types.SimpleNamespace(model=types.SimpleNamespace(model_config=comfy.supported_models.SDXL(
        {"context_dim": 2048, "model_channels": 320, "adm_in_channels": 2816, "use_linear_in_transformer": True})))
    tokens, uncond = _tokens()
    with pytest.raises(pack.errors.ModelMismatchError) as err:
        pack.unet_patch.apply_to_model(sdxl_model, _weights(pack, "sd15", with_adapter=False), tokens, uncond)
    assert "'ConsistentID-v1.bin' is an SD1.5 ConsistentID adapter, but the MODEL is SDXL." in str(err.value)
    assert "ConsistentID_SDXL-v1.bin" in str(err.value)


def test_sdxl_adapter_on_sd15_model_is_refused(host, pack, base):
    tokens, uncond = _tokens(2048)
    with pytest.raises(pack.errors.ModelMismatchError) as err:
        pack.unet_patch.apply_to_model(base, _weights(pack, "sdxl", with_adapter=False), tokens, uncond)
    assert "is an SDXL ConsistentID adapter, but the MODEL is SD1.5." in str(err.value)
    assert "ConsistentID-v1.bin" in str(err.value)


def test_unet_pass_lora_and_caller_untouched(host, pack, base):
    weights = _weights(pack)
    before = _fingerprints(base.model)
    options_before = copy.deepcopy(base.model_options)
    tokens, uncond = _tokens()
    patched = pack.unet_patch.apply_to_model(base, weights, tokens, uncond)
    assert patched is not base and base.patches == {}

    attn2 = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    cloned = patched.clone().model_options["transformer_options"]["patches_replace"]["attn2"]
    assert cloned[("middle", 0, 0)] is not attn2[("middle", 0, 0)]
    assert cloned[("middle", 0, 0)].kv is attn2[("middle", 0, 0)].kv
    # SD1.5 blocks hold one transformer each: the patch also sits at the 2-tuple key other SD1.5 packs use.
    assert attn2[("middle", 0)] is attn2[("middle", 0, 0)] and len(attn2) == 32
    fired, shapes = collections.Counter(), set()

    def counting(key, patch):
        def replace(q, k, v, extra_options):
            fired[key] += 1
            shapes.add((q.shape[0], tuple(sorted(extra_options["cond_or_uncond"]))))
            return patch(q, k, v, extra_options)
        return replace

    for key in list(attn2):
        attn2[key] = counting(key, attn2[key])

    # One euler step with CFG on a latent batch of 2: one UNet pass over 2 chunks × 2 rows.
    out = _sample(host, patched, _cond(TEXT), steps=1, batch=2)
    assert torch.isfinite(out).all() and out.shape == (2, 4, 8, 8)
    expected_keys = {(*p.block, p.transformer_index) for p in pack.layout.PROCESSORS["sd15"] if p.kind == "cross"}
    assert len(expected_keys) == 16 and ("middle", 0, 0) in expected_keys
    assert fired == {key: 1 for key in expected_keys}
    assert shapes == {(4, (0, 1))}

    # Loaded, the patched model differs from the caller's in exactly the 128 LoRA'd weights, by up @ down.
    host.mm.load_models_gpu([patched])
    loaded = _fingerprints(patched.model)
    deltas = pack.attention.lora_deltas(weights.adapter, "sd15")
    changed = {k for k in before if loaded[k] != before[k]}
    assert changed == set(deltas) and len(changed) == 128
    key = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    up, down = deltas[key]
    merged = patched.model.state_dict()[key].float()
    host.mm.unload_all_models()
    torch.testing.assert_close(merged - base.model.state_dict()[key].float(), up @ down, atol=2e-6, rtol=0)

    assert _fingerprints(base.model) == before
    assert base.model_options == options_before and base.patches == {}


def test_reference_tokens_are_attended_together_and_lora_strength_zero_skips_lora(host, pack, base):
    weights = _weights(pack)
    tokens = torch.cat(_tokens(seed=2))  # two reference images: [2, 4, 768]
    _, uncond = _tokens(seed=3)
    patched = pack.unet_patch.apply_to_model(base, weights, tokens, uncond, weight=0.5, lora_strength=0.0)
    assert patched.patches == {}
    patch = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    k_ip, v_ip = (_flat(t) for t in patch.kv)
    w_k, w_v = pack.attention.ip_weights(weights.adapter, "sd15")[("input", 1, 0)]
    torch.testing.assert_close(k_ip[0], tokens.reshape(8, 768) @ w_k.T)
    torch.testing.assert_close(v_ip[1], uncond[0].repeat(2, 1) @ w_v.T)
    assert patch.weight == 0.5 and patch.sigma_range is None


# ---------------------------------------------------------------------------------------------- merge step

ONE_EVALUATION = ["euler", "euler_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde", "ddim"]
# Several evaluations per step, or (uni_pc) a schedule without its penultimate sigma.
BY_SIGMA = ["heun", "dpm_2", "dpmpp_2s_ancestral", "dpmpp_sde", "heunpp2", "uni_pc"]


def _record_positive(model):
    """Per model call, its sigma and the fingerprints of the positive rows it received."""
    calls = []

    def wrapper(apply_model, args):
        c, chunks = args["c"]["c_crossattn"], args["cond_or_uncond"]
        rows = c.shape[0] // len(chunks)
        calls.append((float(args["timestep"].max()),
                      sorted(float(c[i * rows, 0, 0]) for i, chunk in enumerate(chunks) if chunk == 0)))
        return torch.zeros_like(args["input"])

    model.set_model_unet_function_wrapper(wrapper)
    return calls


def _prompts(calls) -> list:
    return [prompt for _, prompt in calls]


def _positive(pack, merge_step, steps, scheduler, text=None, facial=None):
    node = pack.merge_step.ConsistentIDMergeStep
    return node.execute(text or _cond(TEXT), facial or _cond(FACIAL), merge_step, steps, scheduler).result[0]


@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("sampler", ONE_EVALUATION)
def test_merge_switches_after_merge_step_with_any_model(host, pack, base, sampler, scheduler, caplog):
    """The official rule, step i > merge_step uses the facial prompt, for every sampler that evaluates once per
    step, with a plain MODEL: the switch is the host's own timestep range."""
    steps, merge_step = 6, 2
    model = base.clone()
    calls = _record_positive(model)
    with caplog.at_level(logging.WARNING):
        _sample(host, model, _positive(pack, merge_step, steps, scheduler), steps=steps, sampler=sampler,
                scheduler=scheduler)
    assert _prompts(calls) == [[TEXT]] * (merge_step + 1) + [[FACIAL]] * (steps - merge_step - 1)
    assert "ConsistentID" not in caplog.text


@pytest.mark.parametrize("sampler", BY_SIGMA)
def test_a_sampler_off_the_step_grid_switches_at_the_boundary_sigma(host, pack, base, sampler):
    """heun, dpm_2, …, uni_pc: the official code has no such sampler; each evaluation gets the prompt of its
    sigma's side of the boundary, as ComfyUI's timestep ranges decide, and the facial prompt is used."""
    import comfy.model_sampling

    steps, merge_step = 6, 2
    model = base.clone()
    calls = _record_positive(model)
    positive = _positive(pack, merge_step, steps, "karras")
    _sample(host, model, positive, steps=steps, sampler=sampler, scheduler="karras")
    boundary = model.get_model_object("model_sampling").percent_to_sigma(positive[0][1]["end_percent"])
    assert _prompts(calls) == [[TEXT] if sigma >= boundary else [FACIAL] for sigma, _ in calls]
    assert [FACIAL] in _prompts(calls) and [TEXT] in _prompts(calls)
    assert isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.ModelSamplingDiscrete)


def test_merge_step_counts_over_the_full_schedule_in_ksampler_advanced(host, pack, base):
    steps, merge_step, first, last = 8, 4, 3, 6
    model = base.clone()
    calls = _record_positive(model)
    _sample(host, model, _positive(pack, merge_step, steps, "karras"), steps=steps, scheduler="karras",
            start_step=first, last_step=last)
    assert _prompts(calls) == [[TEXT], [TEXT], [FACIAL]]


def _apply(pack, model):
    return pack.unet_patch.apply_to_model(model, _weights(pack), *_tokens(), lora_strength=0.0)


def test_a_run_with_other_steps_still_switches_and_is_flagged(host, pack, base, caplog):
    """Placed for 50 steps (merge at 30) but sampled with 20 through Apply's MODEL: the facial prompt is used
    from the step at the same noise level, and a warning names the node and the fix. Placed for the run's own
    schedule: no warning."""
    model = _apply(pack, base)
    calls = _record_positive(model)
    with caplog.at_level(logging.WARNING):
        _sample(host, model, _positive(pack, 30, 50, "normal"), steps=20)
    assert _prompts(calls) == [[TEXT]] * 12 + [[FACIAL]] * 8
    assert ("[ConsistentID · ConsistentID Merge Step] This positive was placed for 50 steps of 'normal' (the facial "
            "prompt from step 31), but the sampler runs 20 steps that are not that schedule: it uses the facial "
            "prompt from its step 12, at the same noise level. Fix: Set steps and scheduler here to the "
            "sampler's") in caplog.text
    caplog.clear()
    calls.clear()
    with caplog.at_level(logging.WARNING):
        _sample(host, model, _positive(pack, 12, 20, "normal"), steps=20)
    assert _prompts(calls) == [[TEXT]] * 13 + [[FACIAL]] * 7
    assert "ConsistentID" not in caplog.text


def test_the_old_node_passes_the_model_through_and_gives_the_same_positive(host, pack, base):
    old = pack.merge_step.MergeStepScheduler
    model, positive = old.execute(base, _cond(TEXT), _cond(FACIAL), 1, 4, "normal").result
    assert model is base
    new = _positive(pack, 1, 4, "normal")
    assert [opts["start_percent"] for _, opts in positive] == [opts["start_percent"] for _, opts in new]
    model = base.clone()
    calls = _record_positive(model)
    _sample(host, model, positive, steps=4)
    assert _prompts(calls) == [[TEXT], [TEXT], [FACIAL], [FACIAL]]


# A negative merge_step is outside the input's own range: tests/host_inprocess/test_options.py.
@pytest.mark.parametrize("merge_step, steps", [(30, 20), (20, 20), (19, 20)])
def test_merge_step_that_leaves_no_facial_step_is_refused(host, pack, merge_step, steps):
    node = pack.merge_step.ConsistentIDMergeStep
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        node.validate_inputs(merge_step=merge_step, steps=steps)
    message = str(refused.value)
    assert message.startswith(f"[ConsistentID · ConsistentID Merge Step] merge_step {merge_step} leaves no step of a "
                              f"{steps}-step run for the facial prompt")
    assert "Fix: Set merge_step from 0 to 18" in message
    assert node.validate_inputs(merge_step=18, steps=20) is True and node.validate_inputs(merge_step=None) is True
    with pytest.raises(pack.errors.ConsistentIDError, match="leaves no step"):
        node.execute(_cond(TEXT), _cond(FACIAL), merge_step, steps, "normal")


def test_a_facial_entry_whose_own_range_misses_its_phase_is_refused(host, pack):
    early = [[torch.full((1, 77, 768), FACIAL), {"start_percent": 0.0, "end_percent": 0.3}]]
    with pytest.raises(pack.errors.ConsistentIDError) as refused:
        _positive(pack, 30, 50, "normal", facial=early)
    start = pack.merge_step.boundary_percent(30, 50, "normal")
    assert 0.6 < start < 0.65
    assert str(refused.value).startswith(
        "[ConsistentID · ConsistentID Merge Step] A facial conditioning's own timestep range (0% to 30%) lies "
        f"outside the part of the schedule the merge step gives it ({start:.0%} to 100%), so it would never be used.")


def test_start_and_end_switch_the_face_id_branch_by_a_sigma_read_once_per_evaluation(host, pack, base, monkeypatch):
    import comfy.samplers

    model = pack.unet_patch.apply_to_model(base, _weights(pack), *_tokens(), start_at=0.5, lora_strength=0.0)
    seen = []
    in_range = pack.unet_patch.FaceIDAttention._in_range

    def recording(self, extra_options):
        active = in_range(self, extra_options)
        # Published by the PREDICT_NOISE wrapper as a number: a KeyError here means a device read per layer.
        seen.append((extra_options[pack.unet_patch.SIGMA_KEY], active))
        return active

    monkeypatch.setattr(pack.unet_patch.FaceIDAttention, "_in_range", recording)
    _sample(host, model, _cond(TEXT), steps=4)
    sigmas = comfy.samplers.KSampler(model, 4, "cpu", "euler", "normal").sigmas[:-1].tolist()
    boundary = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    # 16 cross-attentions per evaluation, all with the evaluation's one sigma.
    assert len(seen) == 16 * 4 and all(seen[i] == seen[i - i % 16] for i in range(len(seen)))
    assert [sigma for sigma, _ in seen[::16]] == pytest.approx(sigmas)
    assert [active for _, active in seen[::16]] == [s <= boundary for s in sigmas] == [False, False, True, True]


def test_start_after_end_is_refused(host, pack, base):
    tokens, uncond = _tokens()
    with pytest.raises(pack.errors.ConsistentIDError, match="start_at 0.8 is after end_at 0.2"):
        pack.unet_patch.apply_to_model(base, _weights(pack), tokens, uncond, start_at=0.8, end_at=0.2)


def test_no_frame_inspection_in_the_pack():
    offenders = [str(path) for folder in ("nodes", "consistentid_core") for path in (REPO / folder).rglob("*.py")
                 if "_getframe" in path.read_text() or "f_locals" in path.read_text()]
    assert offenders == []


def test_merge_keeps_every_entrys_mask_strengths_and_timestep_range(host, pack, base):
    """Two people: each one's text-only and facial entries masked to its half, with a mask strength and a
    conditioning strength; the host gets every entry of the step's phase with those intact, and a facial entry's
    own timestep range still applies."""
    from comfy.patcher_extension import WrappersMP

    steps, merge_step = 6, 1
    left = torch.zeros(1, 8, 8)
    left[..., :4] = 1.0
    halves = {1.0: left, 1.5: 1 - left, 2.0: left, 2.5: 1 - left}
    strengths = {1.0: (0.8, 0.9), 1.5: (0.7, 1.1), 2.0: (0.6, 1.2), 2.5: (0.5, 1.3)}

    def entry(value, **opts):
        mask_strength, strength = strengths[value]
        return [torch.full((1, 77, 768), value), {"mask": halves[value], "mask_strength": mask_strength,
                                                   "strength": strength, **opts}]

    positive = _positive(pack, merge_step, steps, "normal", text=[entry(1.0), entry(1.5)],
                         facial=[entry(2.0), entry(2.5, start_percent=0.0, end_percent=0.8)])
    model = base.clone()
    calls = _record_positive(model)
    seen = []

    def record(executor, inner, conds, x_in, timestep, model_options):
        seen.append({float(c["model_conds"]["c_crossattn"].cond[0, 0, 0]): c for c in conds[0]})
        return executor(inner, conds, x_in, timestep, model_options)

    model.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test_record", record)
    _sample(host, model, positive, steps=steps)

    sampling = model.get_model_object("model_sampling")
    end = sampling.percent_to_sigma(0.8)
    # Each call gets every entry; the host's own ranges pick the active ones per step.
    assert _prompts(calls) == [[1.0, 1.5]] * (merge_step + 1) + [[2.0, 2.5] if sigma >= end else [2.0]
                                                                 for sigma, _ in calls[merge_step + 1:]]
    assert [2.0] in _prompts(calls)
    for call in seen:
        for value, cond in call.items():
            assert torch.equal(cond["mask"].reshape(8, 8), halves[value].reshape(8, 8))
            assert (cond["mask_strength"], cond["strength"]) == strengths[value]
