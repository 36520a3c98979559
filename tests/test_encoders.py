"""FacialEncoder and ProjPlus: parity with the official code (G4, G5), module layout, batching, dtypes."""
import json

import pytest
import torch
from safetensors.torch import load_file

from consistentid_core.checkpoint import build_facial_encoder, build_projection, load_checkpoint
from consistentid_core.facial_encoder import FacialEncoder
from consistentid_core.projection import ProjPlus, id_tokens

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _cases(golden_dir, group):
    suffix = "_state_dict.safetensors"
    names = sorted(p.name[: -len(suffix)] for p in golden_dir.glob(f"{group}_*{suffix}"))
    assert names, f"no {group} files in {golden_dir}"
    return [(golden_dir, n) for n in names]


@torch.no_grad()
def test_facial_encoder_golden(golden_dir):
    for folder, case in _cases(golden_dir, "g4"):
        sd = load_file(folder / f"{case}_state_dict.safetensors")
        io = load_file(folder / f"{case}_io.safetensors")
        kw = json.loads((folder / f"{case}.json").read_text())["attention_mlp_kwargs"]
        enc = FacialEncoder(kw["embedding_dim"], kw["output_dim"], kw["dim"], kw["depth"], kw["heads"], kw["dim_head"])
        enc.load_state_dict(sd)
        inputs = {k: v.clone() for k, v in io.items()}
        for prefix, out_key in (("", "output"), ("neg_", "output_neg")):
            prompt, feats = inputs[f"{prefix}prompt_embeds"], inputs[f"{prefix}multi_image_embeds"]
            regions = enc.region_embeds(feats)
            hooked = io[f"{prefix}visual_projection_out"]  # [slots, 1, D]
            torch.testing.assert_close(regions.view(hooked.shape), hooked, **TOL)
            out = enc(prompt, feats, inputs["class_tokens_mask"], inputs["valid_id_mask"])
            torch.testing.assert_close(out, io[out_key], **TOL)
            assert out.data_ptr() != prompt.data_ptr()
        for key, value in inputs.items():  # the official forward overwrites its prompt input; ours must not
            assert torch.equal(value, io[key]), key


@torch.no_grad()
def test_projection_golden(golden_dir):
    for folder, case in _cases(golden_dir, "g5"):
        sd = load_file(folder / f"{case}_state_dict.safetensors")
        io = load_file(folder / f"{case}_io.safetensors")
        proj = ProjPlus.from_state_dict(sd)
        proj.load_state_dict(sd)
        cond, uncond = id_tokens(proj, io["faceid_embeds"], io["clip_embeds"], io["uncond_clip_embeds"], shortcut=False)
        torch.testing.assert_close(cond, io["output_shortcut_false"], **TOL)
        torch.testing.assert_close(uncond, io["output_uncond_zero_faceid"], **TOL)
        scaled = [k for k in io if k.startswith("output_shortcut_true_scale")]
        assert scaled
        for key in scaled:
            scale = float(key.removeprefix("output_shortcut_true_scale"))
            out = proj(io["faceid_embeds"], io["clip_embeds"], shortcut=True, scale=scale)
            torch.testing.assert_close(out, io[key], **TOL)


@pytest.fixture(scope="module")
def unit_sd15(consistentid_unit_files):
    return load_checkpoint(consistentid_unit_files["consistentid_sd15_unit"])


def _inputs(enc, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = enc.output_dim
    prompt = torch.randn(batch, 77, d, generator=g)
    feats = torch.randn(batch, 5, 9, enc.visual_projection.proj_in.in_features, generator=g)
    return prompt, feats


@torch.no_grad()
def test_facial_encoder_batches_row_by_row(unit_sd15):
    enc = build_facial_encoder(unit_sd15)
    prompt, feats = _inputs(enc, 3)
    tokens = torch.zeros(3, 77, dtype=torch.bool)
    tokens[0, [4, 9]] = True
    tokens[2, [3, 5, 7, 30]] = True  # row 1 has no marks
    slots = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    out = enc(prompt, feats, tokens, slots)
    for b in range(3):
        alone = enc(prompt[b:b + 1], feats[b:b + 1], tokens[b:b + 1], slots[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], alone, **TOL)
    changed = (out != prompt).any(-1)
    assert torch.equal(changed, tokens)
    # one face serves a batch of prompts
    shared = enc(prompt[:2], feats[:1], tokens[:1].expand(2, -1), slots[:1])
    torch.testing.assert_close(shared[1], enc(prompt[1:2], feats[:1], tokens[:1], slots[:1])[0])


@torch.no_grad()
def test_facial_encoder_without_marks_is_a_copy(unit_sd15):
    enc = build_facial_encoder(unit_sd15)
    prompt, feats = _inputs(enc, 1)
    out = enc(prompt, feats, torch.zeros(1, 77, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool))
    assert torch.equal(out, prompt) and out.data_ptr() != prompt.data_ptr()


@torch.no_grad()
def test_facial_encoder_more_slots_than_marks(unit_sd15):
    """The official assert fails here (e.g. a caption over 330 characters); we fuse the pairs we have."""
    enc = build_facial_encoder(unit_sd15)
    prompt, feats = _inputs(enc, 1)
    tokens = torch.zeros(1, 77, dtype=torch.bool)
    tokens[0, 6] = True
    out = enc(prompt, feats, tokens, torch.ones(1, 5, dtype=torch.bool))
    assert torch.equal((out != prompt).any(-1), tokens)


@torch.no_grad()
def test_fp16_close_to_fp32(unit_sd15):
    enc32, enc16 = build_facial_encoder(unit_sd15), build_facial_encoder(unit_sd15, dtype=torch.float16)
    prompt, feats = _inputs(enc32, 1)
    tokens = torch.zeros(1, 77, dtype=torch.bool)
    tokens[0, [5, 8, 12]] = True
    slots = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    out32 = enc32(prompt, feats, tokens, slots)
    out16 = enc16(prompt.half(), feats, tokens, slots)
    assert out16.dtype == torch.float16
    torch.testing.assert_close(out16.float(), out32, atol=3e-2, rtol=3e-2)

    proj32, proj16 = build_projection(unit_sd15), build_projection(unit_sd15, dtype=torch.float16)
    face = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    clip = torch.randn(1, 257, 1280)
    for shortcut in (False, True):
        ref = proj32(face, clip, shortcut)
        assert ref.shape == (1, 4, 768)
        torch.testing.assert_close(proj16(face, clip, shortcut).float(), ref, atol=3e-2, rtol=3e-2)
